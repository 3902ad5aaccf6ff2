"""Seconds from launch to the first resumed step, at an early and a late checkpoint: before and after constant-time
resume of the streamed data, side by side in one run.

    flock /tmp/victorian-bench.lock python bench/bench_resume.py [--early 10] [--late 800] [--before 3bb4e82]

"before" is the training code at git revision `--before` (the last one that found its place in the stream by
re-reading and re-tokenizing every block already trained on), extracted with `git archive` into a temporary folder;
"after" is this checkout. The run: 1 process, the local PG19 sample streamed, a 4,096-token BPE, 8,192 tokens per
step (32 blocks of 256), one DataLoader worker.

- early: a real checkpoint at step `--early` (from a run of `early + 1` steps, whose step `early + 1` loss is the
  reference).
- late: the same weights, optimizer and RNG, placed at step `--late` of the stream: trainer_state.json says step
  `late`, and the data state is what this checkout's stream holds after `late` steps' blocks (computed here by
  reading the stream). Training 800 steps on a busy 2-core machine would take an hour; the time to resume depends
  only on the position, not on the weights.

Both versions resume from both checkpoints; the time is from `Popen` to the `time` stamp of the first resumed step in
metrics.jsonl (process start, imports, model, `load_state`, finding the data position, the step itself). Exactness:
at the early checkpoint each version's first resumed loss equals the uninterrupted run's; at the late one both
versions must give the same loss (the old one finds its place by re-reading, which is exact by construction).
Prints one JSON line.
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
from itertools import islice
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "pg19-sample"
BLOCK, MICRO_BATCH = 256, 32


def train_args(out: Path, tokenizer: Path, max_steps: int, save_steps: int) -> list[str]:
    return ["--model_preset", "tiny", "--model_overrides", f"{{n_positions: {BLOCK}, vocab_size: 4096}}",
            "--dataset", str(SAMPLE), "--tokenizer", str(tokenizer), "--output_dir", str(out), "--report_to", "none",
            "--tokens_per_step", str(BLOCK * MICRO_BATCH), "--micro_batch_size", str(MICRO_BATCH),
            "--max_steps", str(max_steps), "--learning_rate", "1e-3", "--warmup_steps", "5", "--seed", "7",
            "--shuffle_buffer", "1000", "--dataloader_num_workers", "1", "--eval_steps", "0", "--eval_on_start",
            "false", "--num_samples", "0", "--max_eval_samples", "4", "--test_split", "none",
            "--save_steps", str(save_steps)]


def steps_of(metrics: Path) -> dict[int, dict]:
    if not metrics.is_file():
        return {}
    return {m["step"]: m for m in map(json.loads, metrics.read_text().splitlines()) if "loss" in m}


def first_resumed_step(code: Path, checkpoint: Path, tokenizer: Path, work: Path) -> tuple[float, float]:
    """Launch `code`'s training resumed from `checkpoint`; return (seconds to its first step, that step's loss)."""
    out = work / "resumed"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    step = json.loads((checkpoint / "trainer_state.json").read_text())["step"] + 1
    start = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "training.train", *train_args(out, tokenizer, step + 5, 0),
                             "--resume_from_checkpoint", str(checkpoint)],
                            cwd=code, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(code)})
    try:
        while step not in (seen := steps_of(out / "metrics.jsonl")):
            if proc.poll() is not None:
                raise RuntimeError(f"{code}: resumed run exited with {proc.returncode}: {proc.stderr.read()[-3000:]}")
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # only the first step is measured (it saves a checkpoint and exits)
        proc.communicate()
    return seen[step]["time"] - start, seen[step]["loss"]


def late_checkpoint(early: Path, late_step: int, tokenizer_dir: Path, work: Path) -> Path:
    """The early checkpoint's weights, optimizer and RNG at the stream position of step `late_step`."""
    from transformers import AutoTokenizer

    from training.blocks import PackedBlocks, save_data_state

    late = work / f"step_{late_step}"
    shutil.copytree(early, late)
    state = json.loads((late / "trainer_state.json").read_text())
    state.update(step=late_step, tokens_seen=late_step * BLOCK * MICRO_BATCH)
    (late / "trainer_state.json").write_text(json.dumps(state))
    stream = PackedBlocks(str(SAMPLE), "train", AutoTokenizer.from_pretrained(tokenizer_dir), BLOCK,
                          shuffle_buffer=1000, seed=7)
    for _ in islice(stream, late_step * MICRO_BATCH):
        pass
    save_data_state(late, 0, stream.state_dict())
    return late


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--early", type=int, default=10, help="the early checkpoint's step")
    parser.add_argument("--late", type=int, default=800, help="the late checkpoint's step (about 6.5M tokens in)")
    parser.add_argument("--before", default="3bb4e82", help="git revision of the code to compare with")
    parser.add_argument("--repeats", type=int, default=1, help="resumes per checkpoint and version (fastest kept)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from victorian_gpt.tokenization import train_tokenizer_from_source

    with tempfile.TemporaryDirectory(prefix="bench-resume-") as tmp:
        work = Path(tmp)
        tokenizer = work / "tokenizer"
        train_tokenizer_from_source(str(SAMPLE), 4096, str(tokenizer), max_books=20, model_max_length=BLOCK)
        before = work / "before"
        before.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.before, "training", "victorian_gpt"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)

        run_dir = work / "run"  # the uninterrupted reference, checkpoint at `early`
        subprocess.run([sys.executable, "-m", "training.train", *train_args(run_dir, tokenizer, args.early + 1,
                                                                              args.early)],
                       cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        reference_loss = steps_of(run_dir / "metrics.jsonl")[args.early + 1]["loss"]
        early = run_dir / "checkpoints" / f"step_{args.early}"
        start = time.time()
        late = late_checkpoint(early, args.late, tokenizer, work)
        build_s = time.time() - start

        results: dict = {}
        for name, code in (("before", before), ("after", REPO)):
            for label, checkpoint in (("early", early), ("late", late)):
                runs = [first_resumed_step(code, checkpoint, tokenizer, work) for _ in range(args.repeats)]
                results[f"{name}_{label}_s"] = round(min(s for s, _ in runs), 2)
                results[f"{name}_{label}_loss"] = runs[0][1]
        data_state_bytes = (late / "data_state_rank0.npz").stat().st_size
    r = results
    print(json.dumps({
        "bench": "resume", "tokens_per_step": BLOCK * MICRO_BATCH, "early_step": args.early, "late_step": args.late,
        "late_tokens_into_stream": args.late * BLOCK * MICRO_BATCH, "before_revision": args.before,
        "before_early_s": r["before_early_s"], "before_late_s": r["before_late_s"],
        "after_early_s": r["after_early_s"], "after_late_s": r["after_late_s"],
        "late_speedup": round(r["before_late_s"] / r["after_late_s"], 2),
        "early_losses_identical": r["before_early_loss"] == r["after_early_loss"] == reference_loss,
        "late_losses_identical": r["before_late_loss"] == r["after_late_loss"],
        "data_state_bytes_per_rank": data_state_bytes, "late_state_build_s": round(build_s, 1),
    }))


if __name__ == "__main__":
    main()
