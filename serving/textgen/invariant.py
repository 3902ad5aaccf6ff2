"""Batch invariance: a sequence gets the same bits, and so the same tokens for the same seed, whether it decodes alone
or beside others in the engine's batch.

PyTorch's own kernels do not promise that. A GEMM picks its blocking (and so its order of summation) by the number of
rows: oneDNN's bf16 product gives a row other bits beyond 32 rows than within, MKL's float32 one at 1, 2-15 and 16+
rows; and scaled-dot-product attention over a left-padded batch sums a row's keys in another order than over that
row alone. So in a decode step (one new token per sequence), where a request's rows meet the others':
- linear layers compute every row with the project's decode kernels (`kernels.py`), whose sums run in an order fixed
  by the inner dimension alone, for any number of rows (`PackedLinear` in bf16, `Float32Linear` here in float32,
  `Int8Linear`, exact, in int8);
- attention takes each row by itself, over its own keys (`batch_invariant_attention`, the model's attention
  implementation, registered with transformers as `BATCH_INVARIANT`, on the `decode_attention` kernel).
Everything else in a step (norms, rotary, activations, embeddings) is computed row by row anyway. Prefill runs one
request at a time; the engine cuts every prompt at the same places whatever else is running and keeps in its prefix
cache only whole pieces cut that way (engine.py), so a prompt's KV has the same bits whether it was computed or
reused.

What it costs, and the option that gives it up (`batch_invariant=False`, `--no-batch-invariant`: PyTorch's kernels
beyond a few rows, padded batched attention): docs/generation-engine.md and docs/benchmarks/.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from victorian_gpt.utils.modeling import linear_weight

from .int8 import Int8Linear
from .kernels import decode_kernels_available
from .layers import is_decode_step, replace_linear_layers
from .packed import PackedLinear

logger = logging.getLogger("victorian_gpt.serving")

BATCH_INVARIANT = "batch_invariant_sdpa"  # the attention implementation's name in transformers' registries


def batch_invariant_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' SDPA attention, except for a step of one query per sequence (decode): there each sequence attends
    alone, over its own keys (the valid ones of its row of the mask: the engine pads on the left), in an order that
    does not depend on the others (the decode kernel `decode_attention`, one call for the batch; `make_batch_invariant`
    sets this implementation only where the kernels are built). Returns (output (B, T, H, D), None) as every
    implementation does."""
    if query.shape[2] != 1 or (module.training and dropout):  # a prompt's prefill: one sequence at a time
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if attention_mask is None:
        starts = torch.zeros(query.shape[0], dtype=torch.long)
    else:  # the first key each row attends to (left padding before it)
        valid = attention_mask[:, 0, -1]
        valid = valid if valid.dtype == torch.bool else valid > torch.finfo(valid.dtype).min / 2
        starts = valid.int().argmax(dim=-1)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return torch.ops.victorian_gpt.decode_attention(query, key, value, starts, scale), None


AttentionInterface.register(BATCH_INVARIANT, batch_invariant_attention)
AttentionMaskInterface.register(BATCH_INVARIANT, sdpa_mask)


class Float32Linear(nn.Module):
    """A float32 linear layer on the CPU for serving: a decode step's rows through the float32 decode kernel (the same
    bits for a row whatever the number of rows), a prompt's through PyTorch's GEMM. Made by `make_batch_invariant`."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        """`weight` is (out_features, in_features), as `nn.Linear` stores it."""
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("plain_weight", weight.detach().float().contiguous(), persistent=False)
        self.bias = nn.Parameter(bias.detach().float().clone(), requires_grad=False) if bias is not None else None

    @classmethod
    def from_module(cls, module: nn.Module) -> "Float32Linear":
        return cls(*linear_weight(module))

    @property
    def weight(self) -> torch.Tensor:
        """The weight's shape and dtype without its values (on the meta device), as `PackedLinear` shows its own."""
        return torch.empty(self.out_features, self.in_features, dtype=torch.float32, device="meta")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not is_decode_step(x):
            return F.linear(x, self.plain_weight, self.bias)
        out = torch.ops.victorian_gpt.f32_gemm_nt(x.reshape(-1, self.in_features), self.plain_weight, self.bias)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def make_batch_invariant(model: nn.Module) -> str | None:
    """Make `model` (loaded for serving: float32, `PackedLinear` bf16 or `Int8Linear` int8, on the CPU) decode batch
    invariantly, in place: its attention (`BATCH_INVARIANT`) and, in float32, its linear layers (`Float32Linear`).
    Returns None when done, else why it cannot be (a short reason; the model is left as it was)."""
    if model.device.type != "cpu":
        return f"batch invariance is a CPU path (the model is on {model.device.type})"
    if not decode_kernels_available():
        return "the decode kernels cannot be built here"
    layers = [m for m in model.modules() if type(m) in (nn.Linear, PackedLinear, Int8Linear)
              or type(m).__name__ == "Conv1D"]
    if any(isinstance(m, PackedLinear) and not m.kernel for m in layers):
        return "bf16 linear layers run on oneDNN here (no AVX-512 BF16 decode kernel)"
    if any(type(m) is not PackedLinear and type(m) is not Int8Linear and m.weight.dtype != torch.float32
           for m in layers):
        return f"{model.dtype} linear layers have no decode kernel (float32, bf16 and int8 do)"
    try:
        model.set_attn_implementation(BATCH_INVARIANT)
    except (ValueError, AttributeError) as error:
        return f"the model cannot switch its attention implementation ({error})"
    replace_linear_layers(model, Float32Linear.from_module, keep=lambda layer: layer.weight.dtype == torch.float32)
    for module in model.modules():
        if isinstance(module, PackedLinear):
            module.invariant = True
    model.batch_invariant = True
    return None
