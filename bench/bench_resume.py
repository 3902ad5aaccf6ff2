"""Seconds from launch to the first resumed step, at an early and a late checkpoint: before and after constant-time
resume of the streamed data, side by side in one run.

    flock /tmp/victorian-bench.lock python bench/bench_resume.py [--early 20] [--late 800] [--before 3bb4e82]

"before" is the training code at git revision `--before` (the last one that found its place in the stream by
re-reading and re-tokenizing every block already trained on), extracted with `git archive` into a temporary folder;
"after" is this checkout. Each trains the same run once (1 process, the local PG19 sample streamed, a 4,096-token BPE,
8,192 tokens per step, one DataLoader worker, checkpoints every `--early` steps), then is resumed from its step-`early`
and step-`late` checkpoints; the time is from `Popen` to the `time` stamp of the first resumed step in metrics.jsonl
(process start, imports, model, `load_state`, finding the data position, the step itself). The resumed step's loss is
compared with the uninterrupted run's (bit for bit). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "pg19-sample"


def train_args(out: Path, tokenizer: Path, max_steps: int, save_steps: int) -> list[str]:
    return ["--model_preset", "tiny", "--model_overrides", "{n_positions: 256, vocab_size: 4096}",
            "--dataset", str(SAMPLE), "--tokenizer", str(tokenizer), "--output_dir", str(out), "--report_to", "none",
            "--tokens_per_step", "8192", "--micro_batch_size", "32", "--max_steps", str(max_steps),
            "--learning_rate", "1e-3", "--warmup_steps", "10", "--shuffle_buffer", "1000",
            "--dataloader_num_workers", "1", "--eval_steps", "0", "--eval_on_start", "false", "--num_samples", "0",
            "--max_eval_samples", "4", "--test_split", "none", "--save_steps", str(save_steps),
            "--save_total_limit", "100000", "--overwrite_output_dir"]


def steps_of(metrics: Path) -> dict[int, dict]:
    if not metrics.is_file():
        return {}
    return {m["step"]: m for m in map(json.loads, metrics.read_text().splitlines()) if "loss" in m}


def first_resumed_step(code: Path, checkpoint: Path, tokenizer: Path, late: int, work: Path) -> tuple[float, float]:
    """Launch a run resumed from `checkpoint`; return (seconds to its first step, that step's loss)."""
    out = work / f"resume-{checkpoint.name}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    step = int(checkpoint.name.split("_")[1]) + 1
    args = [a for a in train_args(out, tokenizer, late, 0) if a != "--overwrite_output_dir"]
    start = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "training.train", *args, "--resume_from_checkpoint", str(checkpoint)],
                            cwd=code, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(code)})
    try:
        while step not in (seen := steps_of(out / "metrics.jsonl")):
            if proc.poll() is not None:
                raise RuntimeError(f"resumed run exited with {proc.returncode}: {proc.stderr.read()[-3000:]}")
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)  # no interrupt checkpoint: only the first step is measured
        proc.communicate()
    return seen[step]["time"] - start, seen[step]["loss"]


def measure(name: str, code: Path, tokenizer: Path, early: int, late: int, work: Path, repeats: int) -> dict:
    run_dir = work / f"{name}-run"
    subprocess.run([sys.executable, "-m", "training.train", *train_args(run_dir, tokenizer, late, early)],
                   cwd=code, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": str(code)})
    reference = steps_of(run_dir / "metrics.jsonl")
    result, identical = {}, True
    for label, step in (("early", early), ("late", late - early)):
        checkpoint = run_dir / "checkpoints" / f"step_{step}"
        times = []
        for _ in range(repeats):
            seconds, loss = first_resumed_step(code, checkpoint, tokenizer, late, work)
            times.append(seconds)
            identical &= loss == reference[step + 1]["loss"]
        result[f"{label}_step"] = step
        result[f"{label}_s"] = round(min(times), 2)
        state = checkpoint / "data_state_rank0.npz"
        if state.is_file():
            result[f"{label}_data_state_bytes"] = state.stat().st_size
    result["losses_identical"] = identical
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--early", type=int, default=20, help="the early checkpoint's step (and the save interval)")
    parser.add_argument("--late", type=int, default=820, help="steps of the run; the late checkpoint is late - early")
    parser.add_argument("--before", default="3bb4e82", help="git revision of the code to compare with")
    parser.add_argument("--repeats", type=int, default=1, help="resumes per checkpoint (the fastest is reported)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from victorian_gpt.tokenization import train_tokenizer_from_source

    with tempfile.TemporaryDirectory(prefix="bench-resume-") as tmp:
        work = Path(tmp)
        tokenizer = work / "tokenizer"
        train_tokenizer_from_source(str(SAMPLE), 4096, str(tokenizer), max_books=20, model_max_length=256)
        before = work / "before"
        before.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.before, "training", "victorian_gpt"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
        results = {name: measure(name, code, tokenizer, args.early, args.late, work, args.repeats)
                   for name, code in (("before", before), ("after", REPO))}
    b, a = results["before"], results["after"]
    print(json.dumps({
        "bench": "resume", "tokens_per_step": 8192, "early_step": b["early_step"], "late_step": b["late_step"],
        "late_tokens_skipped_before": b["late_step"] * 8192, "before_revision": args.before,
        "before": b, "after": a,
        "before_late_minus_early_s": round(b["late_s"] - b["early_s"], 2),
        "after_late_minus_early_s": round(a["late_s"] - a["early_s"], 2),
        "late_speedup": round(b["late_s"] / a["late_s"], 2),
        "losses_identical": b["losses_identical"] and a["losses_identical"],
    }))


if __name__ == "__main__":
    main()
