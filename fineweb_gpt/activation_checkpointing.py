"""Activation checkpointing, applied to a GPT's blocks from outside the model (as torchtitan's apply_ac).

Each block then keeps only its input during the forward pass and recomputes its activations during
backward: far less memory for about one more forward pass of compute, the same loss and gradients
(dropout masks replay from the saved RNG state). The block's own forward is wrapped in place, with no
wrapper module, so parameter names, and with them checkpoints and exports, stay as they are.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint

from model import GPT


def recomputed(forward: Callable) -> Callable:
    """A block's forward that recomputes its activations in backward. Without gradients (evaluation) or
    with a KV cache (generation, which writes the cache as it runs) it is the plain forward. The block's
    keyword arguments (a layer's value embedding, the attention masks) pass through to it, and get their gradients."""
    def run(x: torch.Tensor, cache=None, **kwargs) -> torch.Tensor:
        if cache is not None or not torch.is_grad_enabled():
            return forward(x, cache, **kwargs)
        return checkpoint(forward, x, use_reentrant=False, **kwargs)
    run.recomputes = True
    return run


def apply_activation_checkpointing(model: GPT) -> None:
    """Checkpoint every block of model (once: a second call changes nothing)."""
    for block in model.transformer.h:
        if not is_checkpointed(block):
            block.forward = recomputed(block.forward)


def is_checkpointed(block: torch.nn.Module) -> bool:
    return getattr(block.forward, "recomputes", False)
