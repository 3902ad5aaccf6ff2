"""A compiled decode step for `generate()`: transformers' own static KV cache and `torch.compile`, on the CPU too.

At one token per step a 124M model's decode is a few hundred small operators (norms, rotary, quantizing the int8
activations, the cache update, Python and dispatch between them) around the matmuls, and on a small CPU those cost
about as much as the matmuls themselves. torch.compile fuses them into a handful of kernels, which needs shapes it can trace:
transformers' `StaticCache` (`cache_implementation="static"`) with its `CompileConfig`, whose decode steps
`generate()` then runs through the compiled forward while the prefill stays eager. transformers does this by itself
on GPUs; `CompileConfig._compile_all_devices` is its own switch for other devices. `dynamic=True` compiles once for
every prompt length and `max_new_tokens` (a static cache is as long as both), instead of once per length.

The first `generate()` pays the compilation (torch keeps the compiled kernels on disk, so the next process starts
sooner), so it pays where one process runs many continuations: `victorian-gpt generate --torch-compile
--interactive`. The batching engine keeps its own growing cache and eager steps. What it buys: docs/benchmarks/
(`bench/bench_decode.py --which int8,int8-compile`); the design: docs/generation-engine.md.

Compiled kernels round differently from eager ones in the last bits (fused norms, another summation order), so greedy
tokens can part from the eager path's at a near-tie, as they do between precisions; `bench_decode.py` counts them.
"""

from __future__ import annotations

from torch import nn
from transformers import CompileConfig


def compile_decode(model: nn.Module) -> nn.Module:
    """Make `model.generate()` decode through a static KV cache and a torch.compile'd forward, in place; the caller's
    `cache_implementation` or `compile_config` still win, per call. Returns `model`, with `model.compiled_decode`."""
    config = CompileConfig(fullgraph=False, dynamic=True, mode="default")  # "reduce-overhead" means CUDA graphs
    config._compile_all_devices = True  # transformers' switch for compiling on a CPU (read by generate())
    model.generation_config.cache_implementation = "static"
    model.generation_config.compile_config = config
    model.compiled_decode = True
    return model
