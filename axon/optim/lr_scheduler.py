"""Learning-rate schedules: multiply each group's base lr by a factor of the step count.

``sched.step()`` once per optimizer step (after ``opt.step()``), as in torch.
"""

from __future__ import annotations

import math

__all__ = ["LRScheduler", "LambdaLR", "StepLR", "WarmupCosineLR", "get_cosine_schedule_with_warmup"]


class LRScheduler:
    """Base: ``lr = base_lr * factor(last_epoch)``; subclasses define :meth:`factor`."""

    def __init__(self, optimizer, last_epoch: int = -1):
        self.optimizer = optimizer
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
        self.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        self.last_epoch = last_epoch
        self.step()

    def factor(self, step: int) -> float:  # pragma: no cover - interface
        """The multiplier of the base learning rate at ``step``."""
        raise NotImplementedError

    def step(self) -> None:
        """Advance one step and set each group's lr to ``base_lr * factor(last_epoch)``."""
        self.last_epoch += 1
        f = self.factor(self.last_epoch)
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = base * f

    def get_last_lr(self) -> list:
        """The current learning rate of each group."""
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        """{"last_epoch", "base_lrs"}."""
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict) -> None:
        """Restore the position saved by :meth:`state_dict` and set the lrs."""
        self.base_lrs = list(state["base_lrs"])
        self.last_epoch = state["last_epoch"] - 1
        self.step()


class LambdaLR(LRScheduler):
    """lr = base_lr * lr_lambda(step)."""

    def __init__(self, optimizer, lr_lambda, last_epoch: int = -1):
        self.lr_lambda = lr_lambda
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        """The multiplier of the base learning rate at ``step``."""
        return float(self.lr_lambda(step))


class StepLR(LRScheduler):
    """lr = base_lr * gamma ** (step // step_size)."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1):
        if step_size <= 0:
            raise ValueError(f"StepLR: step_size must be positive, got {step_size}")
        self.step_size, self.gamma = step_size, gamma
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        """The multiplier of the base learning rate at ``step``."""
        return self.gamma ** (step // self.step_size)


class WarmupCosineLR(LRScheduler):
    """Linear warmup from 0 to base_lr over ``warmup_steps``, then cosine decay to
    ``min_lr_ratio * base_lr`` at ``total_steps`` (held there afterwards)."""

    def __init__(self, optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0,
                 last_epoch: int = -1):
        if warmup_steps < 0 or total_steps <= 0 or warmup_steps > total_steps:
            raise ValueError(f"WarmupCosineLR: need 0 <= warmup_steps <= total_steps, got {warmup_steps}, {total_steps}")
        self.warmup_steps, self.total_steps, self.min_lr_ratio = warmup_steps, total_steps, min_lr_ratio
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        """The multiplier of the base learning rate at ``step``."""
        if step < self.warmup_steps:
            return step / max(1, self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine


def get_cosine_schedule_with_warmup(optimizer, num_warmup_steps: int, num_training_steps: int) -> WarmupCosineLR:
    """HF transformers' name for :class:`WarmupCosineLR` (decaying to zero)."""
    return WarmupCosineLR(optimizer, num_warmup_steps, num_training_steps)
