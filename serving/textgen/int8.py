"""int8, the CPU path: `Int8Linear` computes a linear layer with int8 weights (per output channel) and int8
activations (per token, computed at each call), multiplied with int32 accumulation: for a few rows by the int8
decode kernel (`kernels.py`: the whole forward in one call), otherwise, or wherever it cannot be built, by PyTorch's
operators and integer GEMM (`torch._int_mm`). Both give the same bits."""

from __future__ import annotations

import torch
from torch import nn

from victorian_gpt.utils.modeling import linear_weight

from .kernels import INT8_KERNEL_MAX_ROWS, decode_kernels_available
from .layers import replace_linear_layers


class Int8Linear(nn.Module):
    """A linear layer with int8 weights, computed with int8 activations and int32 accumulation: the int8 decode kernel
    (`kernels.py`) up to `INT8_KERNEL_MAX_ROWS` rows, PyTorch's operators and `torch._int_mm` beyond; the same bits.

    Weights are quantized once, symmetrically per output channel; activations at each call, symmetrically per token
    (per row), so a sequence's result does not depend on what else is in the batch: the integer product is exact.
    Weight-only int8 is no faster than fp32 in eager PyTorch (torchao dequantizes the whole matrix per call;
    `torch._weight_int8pack_mm` is slow with fp32 activations), while this reads a quarter of fp32's bytes: see
    bench/bench_int8.py and bench/bench_decode.py, and their figures in docs/benchmarks/.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, kernel: bool = True):
        """`weight` is (out_features, in_features), as `nn.Linear` stores it; `kernel=False` keeps every call on
        `torch._int_mm` (the kernel, where it builds, gives the same bits faster: bench/bench_decode.py)."""
        super().__init__()
        self.kernel = kernel and decode_kernels_available()
        weight = weight.detach().float()
        self.out_features, self.in_features = weight.shape
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
        qweight = torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        self.register_buffer("qweight", qweight.contiguous())  # (out, in): its .t() is the column-major B of _int_mm
        self.register_buffer("weight_scale", scale)
        self.bias = nn.Parameter(bias.detach().float().clone(), requires_grad=False) if bias is not None else None

    @classmethod
    def from_module(cls, module: nn.Module, kernel: bool = True) -> "Int8Linear":
        return cls(*linear_weight(module), kernel=kernel)

    @property
    def weight(self) -> torch.Tensor:
        """The weight's shape without its values (on the meta device, as `PackedLinear` shows its own): code that
        special-cases plain weights (the model's fast CPU output head) sees a device other than the CPU and calls the
        module instead. Not a view of `qweight`, so torch.compile traces a model holding it (`textgen.compiled`)."""
        return torch.empty(self.out_features, self.in_features, dtype=self.qweight.dtype, device="meta")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Few, simple ops: at one token per step each op's fixed cost counts as much as its arithmetic.
        shape = x.shape
        rows = x.reshape(-1, self.in_features).float()
        if self.kernel and rows.shape[0] <= INT8_KERNEL_MAX_ROWS and rows.device.type == "cpu":  # all of it in one call
            out = torch.ops.victorian_gpt.int8_linear(rows, self.qweight, self.weight_scale, self.bias)
            return out.reshape(*shape[:-1], self.out_features).to(x.dtype)
        if rows.device.type == "cpu":
            row_scale = torch.linalg.vector_norm(rows, ord=float("inf"), dim=1, keepdim=True).div_(127).clamp_(min=1e-12)
            qrows = torch.round(rows / row_scale).to(torch.int8)  # |rows / row_scale| <= 127 by construction
            out = torch._int_mm(qrows, self.qweight.t()).float().mul_(row_scale)
        else:  # no fast integer GEMM for small batches elsewhere: dequantize (int8 is meant for the CPU)
            out = rows @ (self.qweight.float() * self.weight_scale[:, None]).t()
            out = out if self.bias is None else out + self.bias.float()
            return out.reshape(*shape[:-1], self.out_features).to(x.dtype)
        out = out.mul_(self.weight_scale) if self.bias is None else torch.addcmul(self.bias, out, self.weight_scale)
        return out.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def quantize_int8(model: nn.Module, kernel: bool = True) -> nn.Module:
    """Replace every `nn.Linear` and GPT-2 `Conv1D` of `model` (the output head too) with `Int8Linear`, in place.

    Embeddings stay in floating point; a head tied to the input embedding gets its own int8 copy. `kernel=False`:
    `torch._int_mm` for every call (the same bits). Returns `model`.
    """
    if not replace_linear_layers(model, lambda module: Int8Linear.from_module(module, kernel=kernel)):
        raise ValueError("quantize int8: the model has no nn.Linear or Conv1D layer to quantize")
    model.quantization = "int8"
    return model
