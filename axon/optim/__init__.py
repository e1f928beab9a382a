"""``axon.optim``: SGD, Adam, AdamW, ``clip_grad_norm_`` and learning-rate schedules."""

from . import lr_scheduler
from .lr_scheduler import LambdaLR, LRScheduler, StepLR, WarmupCosineLR, get_cosine_schedule_with_warmup
from .optimizer import SGD, Adam, AdamW, Optimizer, clip_grad_norm_

__all__ = [
    "Optimizer", "SGD", "Adam", "AdamW", "clip_grad_norm_", "lr_scheduler", "LRScheduler", "LambdaLR",
    "StepLR", "WarmupCosineLR", "get_cosine_schedule_with_warmup",
]
