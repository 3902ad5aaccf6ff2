"""Training loop throughput against the bare model step at the same shape; or one run of the README's main command.

    python bench/bench_training_loop.py                 # loop vs bare step, alternating, one JSON line
    python bench/bench_training_loop.py --main-command  # the README main command on ../shared/data/pg19-sample

The bare step is forward + cross-entropy + backward + clip + AdamW on a fixed in-memory batch: what the loop would do
with free data and no bookkeeping. The loop is `training.train.train` itself (streaming tokenization in its
DataLoader worker, packing, shuffle buffer, accelerate, metrics, tqdm), timed between consecutive optimizer steps
from its own metrics.jsonl. Overhead = 1 - loop / bare, the median over adjacent (bare, loop) pairs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import require_dataset

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "pg19-sample"
MAIN_COMMAND = ["accelerate", "launch", "--config_file", "accelerate_config.yaml", "-m", "training.train",
                "--config", "training/configs/pg19-sample-cpu.yaml"]


def bare_tokens_per_s(model_config, micro_batch, block_size, steps, warmup=3):
    import torch

    from training.evaluate import lm_loss
    from training.config import load_config
    from training.optim import build_optimizer
    from victorian_gpt import VictorianGPTForCausalLM

    torch.manual_seed(0)
    model = VictorianGPTForCausalLM(model_config).train()
    optimizer = build_optimizer(model, load_config(None, {}), fused=False)
    block = torch.randint(0, model_config.vocab_size, (micro_batch, block_size + 1))
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        loss = lm_loss(model, block)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps * micro_batch * block_size / (time.perf_counter() - start)


def loop_tokens_per_s(config_overrides, steps, warmup=3):
    from training.config import load_config
    from training.train import train

    out = Path(tempfile.mkdtemp(prefix="bench-loop-"))
    try:
        config = load_config(None, {**config_overrides, "output_dir": str(out / "run"), "max_steps": warmup + steps})
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON line
            train(config)
        entries = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
        times = [e["time"] for e in entries if "loss" in e]
        tokens_per_step = config.tokens_per_step
        return steps * tokens_per_step / (times[-1] - times[warmup - 1])
    finally:
        shutil.rmtree(out, ignore_errors=True)


def compare(args):
    import torch

    from victorian_gpt import VictorianGPTConfig
    from victorian_gpt.tokenization import train_tokenizer_from_source

    torch.set_num_threads(args.threads)
    shape = dict(n_layer=4, n_embd=256, n_head=4, n_positions=256, vocab_size=4096,
                 resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # the README CPU run's model
    model_config = VictorianGPTConfig.from_preset("small", **shape)
    tokenizer_dir = tempfile.mkdtemp(prefix="bench-tok-")
    train_tokenizer_from_source(str(SAMPLE), 4096, tokenizer_dir, max_books=5, model_max_length=256)
    overrides = dict(model_preset="small", model_overrides=shape, tokenizer=tokenizer_dir, dataset=str(SAMPLE),
                     tokens_per_step=args.micro_batch * 256, micro_batch_size=args.micro_batch, eval_steps=0,
                     eval_on_start=False, test_split=None, max_eval_samples=4, num_samples=0, report_to="none",
                     save_steps=0, logging_steps=1)  # log every step: the worst case for bookkeeping
    bare, loop = [], []
    for _ in range(args.repeats):  # alternate, so drifting machine load hits both alike
        bare.append(bare_tokens_per_s(model_config, args.micro_batch, 256, args.steps))
        loop.append(loop_tokens_per_s(overrides, args.steps))
    shutil.rmtree(tokenizer_dir, ignore_errors=True)
    bare_tps, loop_tps = statistics.median(bare), statistics.median(loop)
    ratio = statistics.median(l / b for l, b in zip(loop, bare))  # per adjacent pair: robust to load drifting
    print(json.dumps({
        "bench": "training_loop", "shape": "4x256, ctx 256, vocab 4096", "micro_batch": args.micro_batch,
        "threads": args.threads, "steps": args.steps, "repeats": args.repeats,
        "bare_step_tokens_per_s": round(bare_tps), "loop_tokens_per_s": round(loop_tps),
        "loop_over_bare": round(ratio, 3), "overhead": round(1 - ratio, 3),
        "bare_runs": [round(x) for x in bare], "loop_runs": [round(x) for x in loop],
    }))


def main_command(args):
    out = Path(args.output_dir)
    command = [*MAIN_COMMAND, "--dataset", str(SAMPLE), "--output_dir", str(out), "--overwrite_output_dir"]
    start = time.time()
    subprocess.run(command, cwd=REPO, check=True, stdout=sys.stderr)
    wall = time.time() - start
    summary = json.loads((out / "model" / "training_summary.json").read_text())
    print(json.dumps({
        "bench": "readme_main_command", "command": " ".join(command), "wall_s": round(wall, 1),
        "train_wall_s": summary["wall_time_s"], "tokens_seen": summary["tokens_seen"],
        "tokens_per_s": round(summary["tokens_seen"] / summary["wall_time_s"]),
        "validation_bits_per_byte": round(summary["eval"]["validation"]["bits_per_byte"], 4),
        "validation_loss": round(summary["eval"]["validation"]["loss"], 4),
        "test_bits_per_byte": round(summary["eval"].get("test", {}).get("bits_per_byte", float("nan")), 4),
        "hardware": summary["hardware"], "num_processes": summary["num_processes"],
    }))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--main-command", action="store_true", help="run the README main command instead")
    parser.add_argument("--dataset", default=str(SAMPLE), help="a local PG19-format folder (default: ../shared/data/pg19-sample)")
    parser.add_argument("--output_dir", default=str(REPO / "runs" / "bench-main-command"))
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    SAMPLE = require_dataset(parser, args.dataset)
    sys.path.insert(0, str(REPO))
    main_command(args) if args.main_command else compare(args)
