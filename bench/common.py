"""Shared pieces of the side-by-side benchmarks: build ours and the reference with one shape, time alternately."""

from __future__ import annotations

import json
import os
import statistics
import time

import torch


def build_pair(n_layer, n_embd, n_head, n_positions, vocab_size, seed=0):
    """Our VictorianGPTForCausalLM and Hugging Face's GPT2LMHeadModel (SDPA), same shape, dropout off, fp32."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from victorian_gpt import VictorianGPTConfig, VictorianGPTForCausalLM

    shape = dict(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=n_positions, vocab_size=vocab_size)
    torch.manual_seed(seed)
    ours = VictorianGPTForCausalLM(VictorianGPTConfig(**shape, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    torch.manual_seed(seed)
    ref_config = GPT2Config(
        **shape, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0
    )
    ref_config._attn_implementation = "sdpa"
    reference = GPT2LMHeadModel(ref_config)
    reference.loss_type = "ForCausalLM"  # what transformers would pick anyway, without its warning
    assert reference.config._attn_implementation == "sdpa"
    return ours, reference


def alternate(runs: dict, repeats: int):
    """Call each zero-arg function in `runs` once per round, `repeats` rounds, alternating; return timings."""
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            _synchronize()
            start = time.perf_counter()
            fn()
            _synchronize()
            times[name].append(time.perf_counter() - start)
    return times


def _synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def environment(device="cpu"):
    name = torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
    return {"torch": torch.__version__, "cpu_count": os.cpu_count(), "device": name}


def emit(record: dict):
    print(json.dumps(record), flush=True)


median = statistics.median


def require_dataset(parser, path):
    """`path` as a Path, or the parser's error saying how to get a PG19-format dataset (victorian_gpt.sources)."""
    import sys
    from pathlib import Path

    path = Path(path)
    if not path.exists():
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from victorian_gpt.sources import MISSING_DATASET_HINT

        parser.error(f"no dataset at {path}. {MISSING_DATASET_HINT}")
    return path
