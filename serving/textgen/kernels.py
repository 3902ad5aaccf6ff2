"""The decode kernels (`decode_kernels.cpp`): matrix products for a few rows, what a decode step multiplies, faster
than PyTorch's general ones on a CPU where one row reads every weight once (docs/generation-engine.md; their
measured crossovers against PyTorch's kernels are in docs/benchmarks/).

Built at first use with `torch.utils.cpp_extension` (a C++ compiler and ninja; torch caches the build on disk, so
each machine compiles once), registered as `torch.ops.victorian_gpt.int8_linear`, `bf16_gemm_nt`, `f32_gemm_nt`,
`decode_attention` and `lora_add_` (LoRA deltas, each row its own adapter's: `lora.py`), with shape functions so
torch.compile traces them. `Int8Linear` and `PackedLinear` call them for up to `INT8_KERNEL_MAX_ROWS` /
`BF16_KERNEL_MAX_ROWS` rows and keep PyTorch's kernels beyond, and wherever they cannot be built, or `VICTORIAN_GPT_DECODE_KERNELS=0`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

# Up to this many rows per call the kernels, beyond PyTorch's: where the measured crossover lies (docs/benchmarks/).
# Each block of weight rows is read from memory once for all the rows, so a few rows cost little more than one; a bf16
# row costs more arithmetic than an int8 one (dpbf16 multiplies 32 pairs per instruction, dpbusd 64), hence fewer rows.
INT8_KERNEL_MAX_ROWS = 8
BF16_KERNEL_MAX_ROWS = 8
_state: dict = {}


def decode_kernels_available() -> bool:
    """Build and register the kernels, once per process. False, after one warning, where they cannot be built."""
    if "ok" not in _state:
        _state["ok"] = False
        if os.environ.get("VICTORIAN_GPT_DECODE_KERNELS", "1") != "0":
            try:
                _build()
                _state["ok"] = True
            except Exception as error:  # noqa: BLE001 -- any build failure means: PyTorch's kernels
                message = str(error).strip()
                logger.warning("the decode kernels could not be built (%s); using PyTorch's",
                               message.splitlines()[-1] if message else type(error).__name__)
    return _state["ok"]


def bf16_kernel_native() -> bool:
    """The kernels build, and their bf16 product runs on AVX-512 BF16 (elsewhere PackedLinear keeps oneDNN)."""
    return decode_kernels_available() and bool(torch.ops.victorian_gpt.bf16_native())


def _build():
    from torch.utils import cpp_extension  # only when building: it takes a second to import

    try:  # the pip package's ninja, also when its virtualenv's bin/ is not on PATH (a Space may lack it)
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    except (ImportError, AttributeError):
        pass
    source = Path(__file__).with_name("decode_kernels.cpp").resolve()
    # one build folder per copy of the source (ninja rebuilds in place when the source's path changes, which would
    # overwrite a library that another process, e.g. a server started from another checkout, has loaded)
    digest = hashlib.sha1(str(source).encode() + source.read_bytes()).hexdigest()[:12]
    cpp_extension.load(name=f"victorian_gpt_decode_kernels_{digest}", sources=[str(source)],
                       # -fopenmp: at::parallel_for is OpenMP inlined from torch's headers (and the same libgomp)
                       extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"],
                       is_python_module=False, verbose=False)
    # shapes, for torch.compile
    torch.library.register_fake("victorian_gpt::int8_linear")(
        lambda x, qweight, weight_scale, bias=None: x.new_empty((x.shape[0], qweight.shape[0])))
    torch.library.register_fake("victorian_gpt::bf16_gemm_nt")(
        lambda a, b, bias=None: a.new_empty((a.shape[0], b.shape[0])))
    torch.library.register_fake("victorian_gpt::f32_gemm_nt")(
        lambda a, b, bias=None: a.new_empty((a.shape[0], b.shape[0])))
    torch.library.register_fake("victorian_gpt::decode_attention")(
        lambda q, k, v, starts, scale: q.new_empty((q.shape[0], 1, q.shape[1], q.shape[3])))
    torch.library.register_fake("victorian_gpt::lora_add_")(lambda y, x, a, b, slots, ranks: None)
