"""Where a decode step's time goes: our model at the 124M shapes, batch 1, one new token per step, per precision.

    python bench/bench_decode.py [--presets modern-124m,gpt2-124m] [--which fp32,bf16,int8] [--steps 64]

For each precision (fp32, bf16, int8 as `serving.textgen.load_model` makes them) it measures, on random weights
after a 20-token prompt:
- `generate()`'s ms per new token (greedy, KV cache; what bench_llamacpp.py sets against llama.cpp),
- the bare forward pass's ms per step (the same KV cache and one token, argmax in between): the difference is
  `generate()`'s own per-step cost (logits processors, stopping criteria, bookkeeping),
- a per-operator profile of `--profile-steps` bare steps (torch.profiler, self CPU time), grouped into matmuls (the
  weights' bytes: the part llama.cpp also pays), int8 activation quantization, attention, norms, rotary, KV cache,
  other tensor operations, and what no operator accounts for (Python, dispatch, allocation).

With `--baseline REV` the same random weights also run with the model code of git revision REV (its
modeling_victorian_gpt.py in a copy of the export: remote code, as every user loads it), alternating with today's in
each repeat: ms per token side by side, their ratio, and whether the greedy tokens are the same.

One JSON line per precision, then a table; `--top N` prints the N most expensive operators too.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

GROUPS = {  # operator name (aten::..., after the prefix) -> group; anything else is "other ops"
    "matmul": ("mm", "addmm", "bmm", "linear", "matmul", "_int_mm", "mkldnn_linear", "_weight_int8pack_mm", "mv",
               "addmv", "dot", "_linear_pointwise", "int8_linear",
               "bf16_gemm_nt"),
    "int8 quantize": ("round", "linalg_vector_norm", "clamp_", "clamp", "div_", "addcmul"),
    "attention": ("scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu", "softmax",
                  "_softmax", "_scaled_dot_product_attention_math", "baddbmm", "masked_fill"),
    "norms": ("rms_norm", "layer_norm", "native_layer_norm", "_fused_rms_norm", "rsqrt", "pow", "mean"),
    "rotary": ("cos", "sin", "neg", "cat", "chunk"),
    "kv cache": ("copy_", "slice", "empty", "index_copy_"),
}


def group_of(name: str) -> str:
    short = name.split("::", 1)[-1]
    for group, names in GROUPS.items():
        if short in names:
            return group
    return "other ops"


def bare_steps(model, prompt: list[int], steps: int):
    """(ms per bare decode step, profiler of `steps` more) with a DynamicCache, greedy, one token at a time."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import DynamicCache

    def prefill():
        cache = DynamicCache(config=model.config)
        out = model(input_ids=torch.tensor([prompt]), cache=cache, use_cache=True, logits_to_keep=1)
        return cache, out.logits[:, -1:].argmax(-1)

    with torch.inference_mode():
        cache, token = prefill()
        start = time.perf_counter()
        for _ in range(steps):
            token = model(input_ids=token, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1:].argmax(-1)
        ms = 1000 * (time.perf_counter() - start) / steps
        cache, token = prefill()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                token = model(input_ids=token, cache=cache, use_cache=True,
                              logits_to_keep=1).logits[:, -1:].argmax(-1)
    return ms, prof


def breakdown(prof, steps: int, step_ms: float) -> tuple[dict, list]:
    """ms per step by group (self CPU time of aten, mkldnn and decode-kernel operators), the rest as unaccounted."""
    groups: dict[str, float] = {}
    ops = []
    for event in prof.key_averages():
        if not event.key.startswith(("aten::", "mkldnn::", "victorian_gpt::")):
            continue
        ms = event.self_cpu_time_total / 1000 / steps
        groups[group_of(event.key)] = groups.get(group_of(event.key), 0.0) + ms
        ops.append((event.key, round(ms, 3), event.count // steps))
    accounted = sum(groups.values())
    groups = {k: round(v, 3) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])}
    groups["unaccounted (Python, dispatch)"] = round(max(0.0, step_ms - accounted), 3)
    return groups, sorted(ops, key=lambda op: -op[1])


def baseline_export(export: Path, revision: str, folder: Path) -> Path:
    """A copy of `export` whose model code is git revision `revision`'s."""
    code = subprocess.run(["git", "show", f"{revision}:victorian_gpt/modeling_victorian_gpt.py"], cwd=REPO,
                          capture_output=True, text=True)
    if code.returncode != 0:
        raise SystemExit(f"--baseline {revision}: {code.stderr.strip()}")
    shutil.copytree(export, folder)
    (folder / "modeling_victorian_gpt.py").write_text(code.stdout)
    return folder


def greedy_tokens(model, prompt: list[int], n: int) -> list[int]:
    import torch

    with torch.inference_mode():
        out = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             do_sample=False, max_new_tokens=n, min_new_tokens=n, repetition_penalty=1.0)
    return out[0, len(prompt):].tolist()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="modern-124m,gpt2-124m")
    parser.add_argument("--which", default="fp32,bf16,int8",
                        help="also bf16-plain (transformers' own bf16) and KIND-compile (load_model(torch_compile=True): "
                             "generate() ms/token and how many greedy tokens equal the eager path's)")
    parser.add_argument("--steps", type=int, default=64, help="new tokens per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile-steps", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokenizer", default=str(REPO / "runs" / "pg19-sample-cpu" / "model"),
                        help="a folder with a tokenizer (any export; only its files are copied)")
    parser.add_argument("--top", type=int, default=0, help="also print the N most expensive operators")
    parser.add_argument("--baseline", default=None, help="a git revision whose model code runs side by side")
    args = parser.parse_args(argv)

    import torch

    from bench_llamacpp import load_ours, make_export, ours_ms_per_token

    if not (Path(args.tokenizer) / "tokenizer.json").is_file():
        parser.error(f"--tokenizer {args.tokenizer}: no tokenizer.json there (train one with the README's main "
                     "command, or pass any export)")
    torch.set_num_threads(args.threads)
    prompt = torch.randint(2, 4000, (20,), generator=torch.Generator().manual_seed(0)).tolist()
    records = []
    with tempfile.TemporaryDirectory() as work:
        for preset in args.presets.split(","):
            export = make_export(Path(work) / preset, preset, Path(args.tokenizer))
            baseline = baseline_export(export, args.baseline, Path(work) / f"{preset}-baseline") if args.baseline else None
            for kind in args.which.split(","):
                model = load_ours(export, kind)
                old = load_ours(baseline, kind) if baseline else None
                ours_ms_per_token(model, prompt, 8)  # warm-up (and compilation: a second length shows it is once)
                if kind.endswith("-compile"):
                    ours_ms_per_token(model, prompt, 16)
                times, old_times = [], []
                for _ in range(args.repeats):  # alternating, so a busy spell hits both alike
                    times.append(ours_ms_per_token(model, prompt, args.steps))
                    if old is not None:
                        old_times.append(ours_ms_per_token(old, prompt, args.steps))
                generate_ms = statistics.median(times)
                record = {"bench": "decode", "preset": preset, "which": kind, "threads": args.threads,
                          "generate_ms_per_token": round(generate_ms, 2)}
                if kind.endswith("-compile"):  # the bare eager steps below are not its path: greedy agreement instead
                    eager = load_ours(export, kind.removesuffix("-compile"))
                    ours, theirs = greedy_tokens(model, prompt, 64), greedy_tokens(eager, prompt, 64)
                    same = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), len(ours))
                    record.update(profile_ms_per_step={}, operators_per_step=None,
                                  greedy_tokens_equal_to_eager=f"{same}/{len(ours)}")
                    ops = []
                    del eager
                else:
                    step_ms = statistics.median(bare_steps(model, prompt, args.steps)[0] for _ in range(args.repeats))
                    _, prof = bare_steps(model, prompt, args.profile_steps)
                    groups, ops = breakdown(prof, args.profile_steps, step_ms)
                    record.update(forward_ms_per_step=round(step_ms, 2),
                                  generate_overhead_ms=round(generate_ms - step_ms, 2), profile_ms_per_step=groups,
                                  operators_per_step=sum(count for _, _, count in ops))
                if old is not None:
                    old_ms = statistics.median(old_times)
                    record.update(baseline=args.baseline, baseline_generate_ms_per_token=round(old_ms, 2),
                                  speedup=round(old_ms / generate_ms, 3),
                                  same_greedy_tokens=greedy_tokens(model, prompt, 64) == greedy_tokens(old, prompt, 64))
                print(json.dumps(record), flush=True)
                if args.top:
                    for name, ms, count in ops[: args.top]:
                        print(f"    {name:50s} {ms:8.3f} ms/step  x{count}", flush=True)
                records.append(record)
                del model, old
    names = sorted({g for r in records for g in r["profile_ms_per_step"]})
    extra = ["baseline ms/token", "speedup", "same greedy tokens"] if args.baseline else []
    print("\n| preset | precision | generate() ms/token | " + " | ".join(extra + ["forward ms/step", "ops/step"] + names)
          + " |")
    print("|---" * (5 + len(extra) + len(names)) + "|")
    for r in records:
        cells = [r["preset"], r["which"], r["generate_ms_per_token"]]
        if args.baseline:
            cells += [r["baseline_generate_ms_per_token"], f"{r['speedup']}x", "yes" if r["same_greedy_tokens"] else "NO"]
        cells += [r.get("forward_ms_per_step", "-"), r["operators_per_step"] or r["greedy_tokens_equal_to_eager"] + " greedy = eager"]
        cells += [r["profile_ms_per_step"].get(n, "-") for n in names]
        print("| " + " | ".join(map(str, cells)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
