"""bf16 on the CPU, the decode path: `PackedLinear` multiplies a few rows with the bf16 decode kernel where it runs
natively (`kernels.py`), and otherwise computes a linear layer with its weight reordered once, at load time, into
oneDNN's blocked layout (`torch.ops.mkldnn._reorder_linear_weight`, what torch.compile's CPU freezing does), instead
of leaving oneDNN to read a plain row-major matrix at every call.

The packed product gives the plain path's bits for a few rows; a long prefill differs from it in bf16 rounding only.
Why and how fast: docs/generation-engine.md and docs/benchmarks/.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from victorian_gpt.utils.modeling import linear_weight

from .kernels import BF16_KERNEL_MAX_ROWS, bf16_kernel_native
from .layers import is_decode_step, replace_linear_layers


def packing_available() -> bool:
    """oneDNN with bf16 kernels on this CPU, and the two operators this module calls."""
    mkldnn = getattr(torch.ops, "mkldnn", None)
    return (torch.backends.mkldnn.is_available() and hasattr(mkldnn, "_reorder_linear_weight")
            and hasattr(mkldnn, "_linear_pointwise") and bool(getattr(mkldnn, "_is_mkldnn_bf16_supported",
                                                                      lambda: False)()))


class PackedLinear(nn.Module):
    """A bf16 linear layer on the CPU for serving. Where the decode kernels build (`kernels.py`), its plain weight is
    multiplied by the bf16 decode kernel for up to `BF16_KERNEL_MAX_ROWS` rows and by oneDNN beyond; elsewhere (or with
    `kernel=False`) the weight is packed for oneDNN once and every call uses it. Inference only (no gradient, not
    saved): made by `pack_bf16` from a loaded model, as `quantize_int8` makes `Int8Linear`s."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, kernel: bool = True):
        """`weight` is (out_features, in_features), as `nn.Linear` stores it, in bf16."""
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.kernel = kernel and bf16_kernel_native()
        self.invariant = False  # make_batch_invariant: a decode step's rows all go through the kernel
        if self.kernel:
            self.register_buffer("plain_weight", weight.detach().contiguous(), persistent=False)
        else:  # an opaque oneDNN tensor: not a parameter or buffer, so state_dict, .to() and dtype checks never see it
            self._packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), 1)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None

    @classmethod
    def from_module(cls, module: nn.Module, kernel: bool = True) -> "PackedLinear":
        return cls(*linear_weight(module), kernel=kernel)

    @property
    def weight(self) -> torch.Tensor:
        """The weight's shape and dtype without its values (on the meta device): code that special-cases plain
        weights (the model's fast CPU output head) sees a device other than the CPU and calls the module instead."""
        return torch.empty(self.out_features, self.in_features, dtype=torch.bfloat16, device="meta")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.kernel:
            return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] > BF16_KERNEL_MAX_ROWS and not (self.invariant and is_decode_step(x)):
            return F.linear(x, self.plain_weight, self.bias)
        out = torch.ops.victorian_gpt.bf16_gemm_nt(rows, self.plain_weight, self.bias)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def pack_bf16(model: nn.Module, kernel: bool = True) -> nn.Module:
    """Replace every bf16 `nn.Linear` and GPT-2 `Conv1D` of a CPU model (the output head too: a head tied to the
    input embedding gets its own packed copy) with `PackedLinear`, in place, when `packing_available()`. Returns
    `model`, with `model.packed_linear_layers` set to how many were replaced (0 where packing is unavailable)."""
    replaced = 0
    if packing_available():
        replaced = replace_linear_layers(model, lambda module: PackedLinear.from_module(module, kernel), keep=lambda layer: (
            layer.weight.dtype == torch.bfloat16 and layer.weight.device.type == "cpu"))
    model.packed_linear_layers = replaced
    return model
