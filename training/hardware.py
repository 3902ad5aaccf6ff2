"""What the hardware gives a run: the peak FLOP/s its MFU is measured against, the FLOPs a token costs, peak memory,
and the name the model card records."""

from __future__ import annotations

import os
import resource
import time

import torch

PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "A10G": 125e12, "L4": 121e12, "V100": 125e12,
              "T4": 65e12, "4090": 165e12, "3090": 71e12}  # dense fp16/bf16 tensor-core peaks


def flops_per_token(model_config, block_size: int) -> float:
    """Training FLOPs per token (forward + backward): 6N + the attention matmuls (PaLM appendix B, as nanoGPT)."""
    n_layer, n_embd = model_config.num_hidden_layers, model_config.hidden_size
    n = n_layer * 12 * n_embd**2 + model_config.vocab_size * n_embd
    return 6 * n + 12 * n_layer * n_embd * block_size


def peak_flops(device, mixed_precision: str = "no") -> tuple[float, str]:
    """The accelerator's peak for the MFU estimate. On CPU it is measured (the fastest of five 2048x2048 matmuls with
    this process's threads, in bf16 when training under bf16 autocast, else fp32), so CPU MFU is relative to what this
    machine gave a matmul of the training's precision at start-up."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in PEAK_FLOPS.items():
            if key in name:
                return flops, name
        return 312e12, name
    a = torch.randn(2048, 2048, generator=torch.Generator().manual_seed(0))  # not the global RNG (exact resume)
    if mixed_precision == "bf16":
        a = a.bfloat16()
    best = float("inf")
    for _ in range(5):  # the fastest of a few: other load on the machine only ever slows a matmul down
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return 2 * 2048**3 / best, "CPU"


def memory_used(device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f}G"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f}G"  # peak RSS (KiB on Linux)


def hardware_name(accelerator) -> str:
    if accelerator.device.type == "cuda":
        return f"{accelerator.num_processes}x {torch.cuda.get_device_name(accelerator.device)}"
    return f"CPU ({os.cpu_count()} cores)"
