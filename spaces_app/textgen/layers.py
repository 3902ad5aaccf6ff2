"""Swapping a loaded model's linear layers for serving variants (`Int8Linear`, `PackedLinear`): both read a layer's
weight the same way, whatever its layout, and replace layers in place the same way."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def linear_weight(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight as (out_features, in_features), bias) of an `nn.Linear` or a GPT-2 `Conv1D` (which stores (in, out))."""
    from transformers.pytorch_utils import Conv1D

    return (module.weight.t() if isinstance(module, Conv1D) else module.weight), module.bias


def replace_linear_layers(model: nn.Module, make: Callable[[nn.Module], nn.Module],
                          keep: Callable[[nn.Module], bool] = lambda module: True) -> int:
    """Replace every `nn.Linear` and GPT-2 `Conv1D` of `model` for which `keep(layer)` holds (the output head too) by
    `make(layer)`, in place; return how many were replaced."""
    from transformers.pytorch_utils import Conv1D

    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in (nn.Linear, Conv1D) and keep(child):
                setattr(parent, name, make(child))
                replaced += 1
    return replaced
