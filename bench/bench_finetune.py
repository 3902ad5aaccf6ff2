"""What fine-tuning buys: the README main command's export, fine-tuned on four Dickens novels (the fifth held out),
full and LoRA, each for the same training-time budget on the same cores; measured before and after on the held-out
novel and on the PG19 sample's test split.

    python bench/bench_finetune.py                        # 10 minutes each, 2 gloo processes (the README's launcher)
    python bench/bench_finetune.py --minutes 3 --types lora

Each fine-tune is the product's own command (`accelerate launch ... -m training.train --model_name_or_path EXPORT
--dataset BOOKS ...`), with `--max_train_minutes` (the schedule follows the clock; evaluation does not count). The
books are a folder of Project Gutenberg `.txt` files; the bench lays them out as `train/` (four novels) and
`validation/` (the held-out one) with symbolic links. Before/after figures are the training run's own (its first
evaluation is the starting model's, `general_dataset` is the sample's test split), on the first `--max-eval-blocks`
blocks of each. Then each model continues three fixed openings with its export's sampling defaults and a fixed seed:
unedited samples.

Prints a Markdown table and the samples to stderr, one JSON line per model to stdout, and a last JSON line with the
target check: held-out bits per byte down by at least 5 %, general test split up by no more than 1 %.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "runs" / "pg19-sample-cpu" / "model"
DEFAULT_BOOKS = REPO.parent / "shared" / "data" / "dickens-txt"
DEFAULT_GENERAL = REPO.parent / "shared" / "data" / "pg19-sample"
OPENINGS = [
    "It was a dark and stormy night; the rain fell in torrents, except at occasional intervals,",
    "Mr. Pecksniff rubbed his hands, and looking round upon the company with a benevolent smile,",
    "The fog lay thick upon the river, and the lamplighter had scarcely begun his round, when",
]
# Per fine-tuning type: the settings chosen for a minutes-long CPU run (AdamW, a short warm-up, cosine over the clock).
RECIPES = {
    "full": ["--finetuning_type", "full", "--learning_rate", "3e-4", "--warmup_steps", "10"],
    "lora": ["--finetuning_type", "lora", "--lora_r", "16", "--lora_alpha", "32", "--lora_dropout", "0.0",
             "--learning_rate", "2e-3", "--warmup_steps", "10"],
}


def layout(books: Path, held_out: str, folder: Path) -> Path:
    """train/ (every book but `held_out`) and validation/ (`held_out`), as symbolic links to the `.txt` files."""
    names = sorted(p.name for p in books.glob("*.txt"))
    if held_out not in names:
        raise SystemExit(f"--held-out {held_out!r} is not one of {names}")
    shutil.rmtree(folder, ignore_errors=True)
    for name in names:
        split = "validation" if name == held_out else "train"
        (folder / split).mkdir(parents=True, exist_ok=True)
        (folder / split / name).symlink_to((books / name).resolve())
    return folder


def finetune(kind: str, args, data: Path, output: Path) -> dict:
    command = [sys.executable]
    if args.num_processes > 1:
        command += ["-m", "accelerate.commands.launch", "--config_file", str(REPO / "accelerate_config.yaml"),
                    "--num_processes", str(args.num_processes)]
        if args.main_process_port:  # two benches side by side need two rendezvous ports
            command += ["--main_process_port", str(args.main_process_port)]
    command += ["-m", "training.train", "--model_name_or_path", str(args.model), "--dataset", str(data),
                "--output_dir", str(output), "--overwrite_output_dir", "--max_train_minutes", str(args.minutes),
                "--max_steps", "1000000", "--test_split", "none", "--general_dataset", str(args.general),
                "--general_split", "test", "--max_eval_samples", str(args.max_eval_blocks), "--eval_steps", "0",
                "--save_steps", "0", "--report_to", "none", "--num_samples", "0", "--tokens_per_step", "8192",
                "--micro_batch_size", "16", "--mixed_precision", args.mixed_precision, "--min_lr_ratio", "0.1",
                "--optimizer", "adamw", "--weight_decay", "0.0", *RECIPES[kind]]
    log = output.with_suffix(".log")
    output.parent.mkdir(parents=True, exist_ok=True)
    print(f"[{kind}] {args.minutes:g} min: {' '.join(command)}\n[{kind}] log: {log}", file=sys.stderr)
    start = time.time()
    with open(log, "w") as out:
        result = subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if result.returncode != 0:
        raise SystemExit(f"[{kind}] fine-tuning failed (exit {result.returncode}); see {log}")
    summary = json.loads((output / "model" / "training_summary.json").read_text())
    ft = summary["finetuning"]
    return {"model": kind, "export": str(output / "model"), "wall_s": round(time.time() - start, 1),
            "train_time_s": summary["train_time_s"], "steps": summary["steps"], "tokens_seen": summary["tokens_seen"],
            "tokens_per_s": round(summary["tokens_seen"] / max(summary["train_time_s"], 1e-9)),
            "trainable_parameters": ft["trainable_parameters"], "total_parameters": ft["total_parameters"],
            "before": {"held_out": ft["before"]["validation"]["bits_per_byte"],
                       "general": ft["before"]["general"]["bits_per_byte"]},
            "after": {"held_out": ft["after"]["validation"]["bits_per_byte"],
                      "general": ft["after"]["general"]["bits_per_byte"]}}


def continuations(model_dir: Path, max_new_tokens: int) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True).eval()
    out = []
    for opening in OPENINGS:
        torch.manual_seed(0)
        inputs = tokenizer(opening, return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
        out.append(tokenizer.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="the starting export")
    parser.add_argument("--books", type=Path, default=DEFAULT_BOOKS, help="a folder of Gutenberg .txt novels")
    parser.add_argument("--held-out", default="The_Old_Curiosity_Shop.txt", help="the novel held out for evaluation")
    parser.add_argument("--general", type=Path, default=DEFAULT_GENERAL, help="PG19-format data; its test split")
    parser.add_argument("--minutes", type=float, default=10.0, help="training-time budget of each fine-tune")
    parser.add_argument("--types", nargs="+", default=["full", "lora"], choices=sorted(RECIPES))
    parser.add_argument("--num-processes", type=int, default=2)
    parser.add_argument("--main-process-port", type=int, default=None, help="accelerate's rendezvous port")
    parser.add_argument("--mixed-precision", default="bf16", choices=["no", "bf16"])
    parser.add_argument("--max-eval-blocks", type=int, default=200, help="blocks of each evaluation (first N)")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--output", type=Path, default=REPO / "runs" / "bench-finetune")
    args = parser.parse_args(argv)
    for path, what in ((args.model, "--model"), (args.books, "--books"), (args.general, "--general")):
        if not path.exists():
            parser.error(f"{what} {path} does not exist")

    data = layout(args.books, args.held_out, args.output / "books")
    rows = [finetune(kind, args, data, args.output / kind) for kind in args.types]
    start = {"model": "start", "export": str(args.model), "trainable_parameters": 0,
             "total_parameters": rows[0]["total_parameters"] if rows[0]["model"] == "full" else None,
             "after": rows[0]["before"]}
    table = ["| model | held-out Dickens bits/byte | PG19 sample test bits/byte | trainable parameters | "
             "steps | tokens/s (busy machine) |", "|---|---:|---:|---:|---:|---:|",
             f"| start ({args.model.name}) | {start['after']['held_out']:.4f} | {start['after']['general']:.4f} | — | — "
             "| — |"]
    results = []
    for row in [start, *rows]:
        row["samples"] = continuations(Path(row["export"]), args.max_new_tokens)
        if row is not start:
            change = {k: row["after"][k] / row["before"][k] - 1 for k in ("held_out", "general")}
            row["change"] = {k: round(v, 4) for k, v in change.items()}
            table.append(f"| {row['model']} ({args.minutes:g} min) | {row['after']['held_out']:.4f} "
                         f"({100 * change['held_out']:+.1f} %) | {row['after']['general']:.4f} "
                         f"({100 * change['general']:+.1f} %) | {row['trainable_parameters']:,} | {row['steps']} | "
                         f"{row['tokens_per_s']:,} |")
        results.append(row)
        print(json.dumps(row), flush=True)
    print("\n".join(table), file=sys.stderr)
    for row in results:
        for opening, sample in zip(OPENINGS, row["samples"]):
            print(f"[{row['model']}] {opening}|{sample}", file=sys.stderr)
    targets = {row["model"]: {"held_out_down_5pct": row["change"]["held_out"] <= -0.05,
                              "general_up_at_most_1pct": row["change"]["general"] <= 0.01} for row in rows}
    print(json.dumps({"minutes": args.minutes, "targets": targets}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
