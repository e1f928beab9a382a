"""Activation checkpointing of a model's decoder layers (see axon/checkpoint.py).

:func:`checkpoint_layers` wraps each block of the model's layer list (``layers``, GPT-2's ``h``)
in a :class:`CheckpointedLayer`: while training, the block keeps only its input and recomputes
its activations in backward. The wrapper registers the block's own children and tensors under
their own names, so state-dict keys do not change. ``axon-llm train --gradient-checkpointing``
uses it; with LoRA over a quantised model it is what keeps a step's memory near inference's.
"""

from __future__ import annotations

import axon
import axon.nn as nn
from axon.checkpoint import checkpoint

from axon_llm.errors import UnsupportedError

__all__ = ["CheckpointedLayer", "checkpoint_layers"]

_LAYER_LISTS = ("layers", "h")


class CheckpointedLayer(nn.Module):
    """A block ``layer(x, *args) -> x`` whose activations are recomputed in backward."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        object.__setattr__(self, "layer", layer)           # not a sub-module: its children are ours
        for name, child in layer._modules.items():
            self.add_module(name, child)
        for name, p in layer._parameters.items():
            self.register_parameter(name, p)
        for name, b in layer._buffers.items():
            self.register_buffer(name, b, persistent=name not in layer._non_persistent)

    def forward(self, x, *args, **kwargs):
        """The block's output; under autograd, through :func:`axon.checkpoint.checkpoint`."""
        if not axon.is_grad_enabled():
            return self.layer(x, *args, **kwargs)
        return checkpoint(lambda h: self.layer(h, *args, **kwargs), x, list(self.parameters()))


def checkpoint_layers(model: nn.Module) -> int:
    """Wrap every block of ``model``'s layer list, in place; returns how many. Mixture-of-experts
    models are refused (their router logits, gathered during the forward, would be recorded twice)."""
    from axon_llm.moe import SparseMoE

    if any(isinstance(m, SparseMoE) for m in model.modules()) or hasattr(model, "forward_with_loss"):
        raise UnsupportedError(f"gradient checkpointing does not support {type(model).__name__} "
                               "(mixture-of-experts routing)")
    count = 0
    for _, module in model.named_modules():
        for name in _LAYER_LISTS:
            blocks = module._modules.get(name)
            if isinstance(blocks, nn.ModuleList):
                for i, block in enumerate(list(blocks)):
                    if not isinstance(block, CheckpointedLayer):
                        blocks[i] = CheckpointedLayer(block)
                        count += 1
    if not count:
        raise UnsupportedError(f"gradient checkpointing: {type(model).__name__} has no layer list to wrap")
    return count
