"""Many voices from one model: one LoRA style adapter per author, trained from the README main command's export with
fine-tuning's defaults and the same budget each, then the matrix of bits per byte -- rows: the base and each adapter;
columns: each author's validation book -- and unedited continuations of one opening in each style.

    python bench/bench_styles.py                              # 10 minutes of training time per author
    python bench/bench_styles.py --max-steps 400              # a step budget instead (a busy machine: same tokens)
    python bench/bench_styles.py --skip-training              # the matrix and samples of adapters already trained

Each adapter is the product's own command with only the flags a user would think of (`victorian-gpt train
--model_name_or_path EXPORT --dataset AUTHOR --finetuning_type lora --lora_export adapter --max_train_minutes M`),
plus the bench's housekeeping (bf16, no checkpoints, no samples, the PG19 sample's test split as `general_dataset`):
everything else is fine-tuning's defaults (training/config.py FINETUNING_DEFAULTS: among them 5 epochs, which end
a small author's run before the budget, and half the blocks replayed from the data the base was trained on). The matrix evaluates every model
on the first `--max-eval-blocks` blocks of each author's validation book in fp32 (an adapter merged into the base);
the training runs' own before/after on the PG19 test split is the forgetting column.

Goals: each author's own adapter is the best row on that author's book (the diagonal), and beats the base there by at
least 5 %; the PG19 sample's test split rises by at most 1 %. Prints the table, one JSON line per adapter, a last JSON
line with the goals; `--plot` draws the heatmap, `--report` writes the samples and tables as Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "runs" / "pg19-sample-cpu" / "model"
DEFAULT_AUTHORS = REPO.parent / "shared" / "data" / "authors"
DEFAULT_GENERAL = REPO.parent / "shared" / "data" / "pg19-sample"
OPENING = "It was late in the evening when the stranger came to the door of the inn, and"


def train_adapter(author: str, args, output: Path) -> dict:
    """One author's adapter by the product's command; its training summary."""
    command = [sys.executable, "-m", "training.train", "--model_name_or_path", str(args.model),
               "--dataset", str(args.authors_dir / author), "--output_dir", str(output), "--overwrite_output_dir",
               "--finetuning_type", "lora", "--lora_export", "adapter", "--mixed_precision", args.mixed_precision,
               "--general_dataset", str(args.general), "--general_split", "test",
               "--max_eval_samples", str(args.max_eval_blocks), "--eval_steps", "0", "--save_steps", "0",
               "--num_samples", "0", "--report_to", "none"]
    command += (["--max_steps", str(args.max_steps)] if args.max_steps else
                ["--max_train_minutes", str(args.minutes), "--max_steps", "1000000"])
    log = output.with_suffix(".log")
    output.parent.mkdir(parents=True, exist_ok=True)
    print(f"[{author}] {' '.join(command)}\n[{author}] log: {log}", file=sys.stderr, flush=True)
    start = time.time()
    with open(log, "w") as out:
        result = subprocess.run(command, check=False, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if result.returncode != 0:
        raise SystemExit(f"[{author}] fine-tuning failed (exit {result.returncode}); see {log}")
    summary = read_summary(output)
    summary["wall_s"] = round(time.time() - start, 1)
    return summary


def read_summary(output: Path) -> dict:
    summary = json.loads((output / "model" / "training_summary.json").read_text())
    ft = summary["finetuning"]
    return {"steps": summary["steps"], "tokens_seen": summary["tokens_seen"], "train_time_s": summary["train_time_s"],
            "tokens_per_s": round(summary["tokens_seen"] / max(summary["train_time_s"], 1e-9)),
            "trainable_parameters": ft["trainable_parameters"],
            "own_before": ft["before"]["validation"]["bits_per_byte"],
            "own_after": ft["after"]["validation"]["bits_per_byte"],
            "general_before": ft["before"]["general"]["bits_per_byte"],
            "general_after": ft["after"]["general"]["bits_per_byte"]}


def load_merged(base: Path, adapter: Path | None):
    """The base, or the base with `adapter` merged into its weights (peft), fp32, eval mode."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, trust_remote_code=True, dtype="float32")
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    return model.eval()


def bits_per_byte(model, tokenizer, book_folder: Path, blocks: int, block_size: int) -> float:
    import torch

    from training.evaluate import eval_blocks, evaluate_blocks, text_measures

    data = eval_blocks(str(book_folder), "validation", tokenizer, block_size, blocks)
    return evaluate_blocks(model, data, text_measures(tokenizer), 8, torch.device("cpu"))["bits_per_byte"]


def continuations(model, tokenizer, opening: str, seeds: list[int], max_new_tokens: int) -> list[str]:
    """Unedited continuations at the shipped sampling defaults (what a new export's generation_config.json holds),
    one per seed."""
    import torch

    from victorian_gpt.modeling_victorian_gpt import GENERATION_DEFAULTS

    inputs = tokenizer(opening, return_tensors="pt")
    out = []
    for seed in seeds:
        torch.manual_seed(seed)
        with torch.no_grad():
            ids = model.generate(**inputs, **GENERATION_DEFAULTS, max_new_tokens=max_new_tokens,
                                 pad_token_id=tokenizer.pad_token_id)
        out.append(tokenizer.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


def plot(matrix: dict, authors: list[str], path: Path, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = ["base", *authors]
    base = np.array([matrix["base"][a] for a in authors])
    change = np.array([[100 * (matrix[r][a] / matrix["base"][a] - 1) for a in authors] for r in rows])
    fig, ax = plt.subplots(figsize=(1.4 * len(authors) + 2.5, 0.7 * len(rows) + 1.8))
    limit = max(abs(change).max(), 1.0)
    image = ax.imshow(change, cmap="RdBu_r", vmin=-limit, vmax=limit)
    for i, row in enumerate(rows):
        for j, author in enumerate(authors):
            ax.text(j, i, f"{matrix[row][author]:.3f}\n{change[i, j]:+.1f} %", ha="center", va="center", fontsize=8)
            if row == author:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2.5, ec="black"))
    ax.set_xticks(range(len(authors)), [f"{a}\n(base {b:.3f})" for a, b in zip(authors, base)], fontsize=8)
    ax.set_yticks(range(len(rows)), ["base"] + [f"{a} adapter" for a in authors], fontsize=8)
    ax.set_xlabel("validation book of")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="bits/byte change from the base (%)", shrink=0.8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="the base export")
    parser.add_argument("--authors-dir", type=Path, default=DEFAULT_AUTHORS,
                        help="one folder per author, each with train/ and validation/ .txt books")
    parser.add_argument("--authors", nargs="+", default=None, help="folders of --authors-dir (default: all)")
    parser.add_argument("--general", type=Path, default=DEFAULT_GENERAL, help="PG19-format data; its test split")
    parser.add_argument("--minutes", type=float, default=10.0, help="training-time budget of each adapter")
    parser.add_argument("--max-steps", type=int, default=None, help="a step budget instead of --minutes")
    parser.add_argument("--mixed-precision", default="bf16", choices=["no", "bf16"])
    parser.add_argument("--max-eval-blocks", type=int, default=200, help="blocks of each validation book (first N)")
    parser.add_argument("--opening", default=OPENING)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-new-tokens", type=int, default=80)
    parser.add_argument("--output", type=Path, default=REPO / "runs" / "bench-styles")
    parser.add_argument("--skip-training", action="store_true", help="use the adapters already in --output")
    parser.add_argument("--plot", type=Path, default=None, help="write the heatmap here (.png)")
    parser.add_argument("--report", type=Path, default=None, help="write tables and samples here (Markdown)")
    args = parser.parse_args(argv)
    for path, what in ((args.model, "--model"), (args.authors_dir, "--authors-dir"), (args.general, "--general")):
        if not path.exists():
            parser.error(f"{what} {path} does not exist (the authors' books: ../shared/data/authors; the model: "
                         "the README's main command)")
    authors = args.authors or sorted(p.name for p in args.authors_dir.iterdir() if (p / "validation").is_dir())
    missing = [a for a in authors if not (args.authors_dir / a / "train").is_dir()]
    if missing or not authors:
        parser.error(f"no train/ and validation/ books for {missing or 'any author'} in {args.authors_dir}")
    if args.max_steps is not None and args.max_steps < 1:
        parser.error("--max-steps must be at least 1")

    import torch
    from transformers import AutoTokenizer

    from victorian_gpt.utils.modeling import context_length

    torch.set_num_threads(os.cpu_count() or 1)
    runs = {}
    for author in authors:
        output = args.output / author
        runs[author] = read_summary(output) if args.skip_training else train_adapter(author, args, output)
        print(json.dumps({"author": author, **runs[author]}), file=sys.stderr, flush=True)

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    from transformers import AutoConfig

    block_size = context_length(AutoConfig.from_pretrained(args.model, trust_remote_code=True))
    matrix, samples = {}, {}
    for row in ["base", *authors]:
        model = load_merged(args.model, None if row == "base" else args.output / row / "model")
        matrix[row] = {a: bits_per_byte(model, tokenizer, args.authors_dir / a, args.max_eval_blocks, block_size)
                       for a in authors}
        samples[row] = continuations(model, tokenizer, args.opening, args.seeds, args.max_new_tokens)
        print(json.dumps({"row": row, "bits_per_byte": matrix[row]}), file=sys.stderr, flush=True)

    budget = f"{args.max_steps} steps" if args.max_steps else f"{args.minutes:g} min"
    header = "| model | " + " | ".join(authors) + " | PG19 test |"
    lines = [header, "|---|" + "---:|" * (len(authors) + 1)]
    general_base = next(iter(runs.values()))["general_before"]
    lines.append("| base | " + " | ".join(f"{matrix['base'][a]:.4f}" for a in authors) + f" | {general_base:.4f} |")
    goals = {}
    for row in authors:
        cells = []
        for a in authors:
            change = 100 * (matrix[row][a] / matrix["base"][a] - 1)
            cell = f"{matrix[row][a]:.4f} ({change:+.1f} %)"
            cells.append(f"**{cell}**" if a == row else cell)
        run = runs[row]
        general = 100 * (run["general_after"] / run["general_before"] - 1)
        lines.append(f"| {row} adapter | " + " | ".join(cells) + f" | {run['general_after']:.4f} ({general:+.1f} %) |")
        own = matrix[row][row] / matrix["base"][row] - 1
        goals[row] = {"best_row_on_own_book": min(authors, key=lambda r: matrix[r][row]) == row,
                      "own_change": round(own, 4), "own_down_5pct": own <= -0.05,
                      "general_change": round(general / 100, 4), "general_up_at_most_1pct": general <= 1.0}
        print(json.dumps({"adapter": row, "budget": budget, **runs[row], "row": matrix[row], **goals[row]}), flush=True)
    table = "\n".join(lines)
    print(table, file=sys.stderr)
    sample_lines = [f"Opening: *{args.opening}*", ""]
    for row in ["base", *authors]:
        for seed, text in zip(args.seeds, samples[row]):
            sample_lines.append(f"- **{row}**, seed {seed}: {text.strip()!r}")
    print("\n".join(sample_lines), file=sys.stderr)
    if args.plot:
        plot(matrix, authors, args.plot, f"bits/byte on each author's validation book; LoRA adapters, {budget} each")
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(table + "\n\n" + "\n".join(sample_lines) + "\n")
    print(json.dumps({"budget": budget, "goals": goals,
                      "all_met": all(g["best_row_on_own_book"] and g["own_down_5pct"] and g["general_up_at_most_1pct"]
                                     for g in goals.values())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
