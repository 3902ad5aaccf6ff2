"""Swapping a loaded model's linear layers for serving variants (`Int8Linear`, `PackedLinear`), in place. Both read a
layer's weight the same way whatever its layout (`victorian_gpt.utils.modeling.linear_weight`)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from victorian_gpt.utils.modeling import is_linear_layer


def is_decode_step(x: torch.Tensor) -> bool:
    """A linear layer's input of one token per sequence, (B, 1, C): a decode step's rows, where a batch's sequences
    meet (a prompt's prefill is (1, T, C))."""
    return x.dim() >= 3 and x.shape[-2] == 1


def replace_linear_layers(model: nn.Module, make: Callable[[nn.Module], nn.Module],
                          keep: Callable[[nn.Module], bool] = lambda module: True) -> int:
    """Replace every `nn.Linear` and GPT-2 `Conv1D` of `model` for which `keep(layer)` holds (the output head too) by
    `make(layer)`, in place; return how many were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if is_linear_layer(child) and keep(child):
                setattr(parent, name, make(child))
                replaced += 1
    return replaced
