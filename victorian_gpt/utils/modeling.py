"""Facts about a model that training, serving and conversion all need, written once: how long a context it attends
to, and how a linear layer stores its weight (GPT-2's `Conv1D` keeps (in, out), `nn.Linear` (out, in))."""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


def context_length(config, default: int | None = None) -> int:
    """Tokens the model can attend to: VictorianGPT's and GPT-2's `n_positions`, Llama's and Qwen3's
    `max_position_embeddings`; `default` for a config that names neither."""
    length = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or default
    if length is None:
        raise ValueError(f"{type(config).__name__} names no context length (n_positions or max_position_embeddings)")
    return int(length)


def is_linear_layer(module: nn.Module) -> bool:
    """An `nn.Linear` or a GPT-2 `Conv1D` (exactly: not a wrapper around one, such as a LoRA layer)."""
    return type(module) in (nn.Linear, Conv1D)


def as_linear(weight: torch.Tensor, conv1d: bool) -> torch.Tensor:
    """A weight as `nn.Linear` stores it, (out_features, in_features), from either layout."""
    return weight.t() if conv1d else weight


def linear_weight(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight as (out_features, in_features), bias) of an `nn.Linear` or a GPT-2 `Conv1D`."""
    return as_linear(module.weight, isinstance(module, Conv1D)), module.bias
