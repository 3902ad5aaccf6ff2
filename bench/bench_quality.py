"""Quality per unit of compute: the GPT-2 recipe and the modern recipe, trained for the same wall-clock budget on the
same cores, one after the other, then measured on held-out books.

    python bench/bench_quality.py                       # 25 minutes each, the README's launcher (2 gloo processes)
    python bench/bench_quality.py --minutes 5 --recipes modern
    python bench/bench_quality.py --recipes modern,modern+zero_init_residual=true    # an ablation against its base

A recipe is a name of RECIPES, optionally followed by `+key=value` changes: keys of the model's config go into the
config's `model_overrides`, others are training keys (`modern+n_positions=512+micro_batch_size=8`). The changed
config is written beside the run (`<output>/<recipe>.yaml`), so every figure names exactly what was trained.

Each recipe is a training config (`training/configs/<name>.yaml`: model, tokenizer size, optimizer, schedule,
precision), trained by the product's own command, `accelerate launch ... -m training.train`, with
`--max_train_minutes` (the schedule follows the clock; evaluation pauses do not count). Its tokenizer is trained
first, outside the budget, as the README's main command does. Then the export is measured with `victorian-gpt eval`
on the *whole* validation and test splits (bits per byte: comparable across tokenizers), and continues three fixed
openings (the Space's examples) with the export's own sampling defaults and a fixed seed: unedited samples.

Prints one JSON line per recipe and a last line with the ratios (modern / gpt2), and writes `quality.png`: validation
bits per byte against training minutes for both recipes.
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
RECIPES = {  # name -> training config; the README says what each holds
    "gpt2": REPO / "training" / "configs" / "gpt2-sample-cpu.yaml",
    "modern": REPO / "training" / "configs" / "pg19-sample-cpu.yaml",
}
OPENINGS = [  # the Space's first three examples (spaces_app/app.py)
    "It was a dark and stormy night; the rain fell in torrents, except at occasional intervals,",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune,",
    "The fog lay thick upon the river, and the lamplighter had scarcely begun his round, when",
]


def recipe_config(spec: str, root: Path) -> Path:
    """The training config of a recipe spec: RECIPES[name] itself, or a copy with the `+key=value` changes applied."""
    import yaml

    from victorian_gpt.configuration_victorian_gpt import VictorianGPTConfig

    name, *changes = spec.split("+")
    if not changes:
        return RECIPES[name]
    config = yaml.safe_load(RECIPES[name].read_text())
    model_keys = set(VictorianGPTConfig().to_dict())
    for change in changes:
        key, value = change.split("=", 1)
        value = yaml.safe_load(value)
        if key in model_keys:
            config.setdefault("model_overrides", {})[key] = value
        else:
            config[key] = value
    path = root / f"{spec}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {spec}: {RECIPES[name].relative_to(REPO)} with {', '.join(changes)}\n"
                    + yaml.safe_dump(config, sort_keys=False))
    return path


def train(recipe: str, config: Path, minutes: float, dataset: str, output: Path, num_processes: int) -> float:
    """Run the training command for `minutes` of training time; return its wall-clock seconds."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "accelerate_config.yaml"),
               "--num_processes", str(num_processes)]
    if num_processes == 1:
        command = [sys.executable]
    command += ["-m", "training.train", "--config", str(config), "--dataset", dataset, "--output_dir", str(output),
                "--overwrite_output_dir", "--max_train_minutes", str(minutes), "--max_steps", "1000000",
                "--test_split", "none", "--report_to", "none", "--save_steps", "0"]
    log = output.parent / f"{output.name}.log"  # not with_suffix: a recipe such as "modern+decay_ratio=0.5" has dots
    output.parent.mkdir(parents=True, exist_ok=True)
    print(f"[{recipe}] training for {minutes:g} min: {' '.join(command)}\n[{recipe}] log: {log}", file=sys.stderr)
    start = time.time()
    with open(log, "w") as out:
        result = subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if result.returncode != 0:
        raise SystemExit(f"[{recipe}] training failed (exit {result.returncode}); see {log}")
    return time.time() - start


def evaluate(export: Path, dataset: str, split: str) -> dict:
    result = subprocess.run([sys.executable, "-m", "victorian_gpt.cli", "eval", str(export), "--dataset", dataset,
                             "--split", split], cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"eval of {export} on {split} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout[result.stdout.index("{"):])


def samples(export: Path, seed: int, max_new_tokens: int) -> list[str]:
    """Continuations of OPENINGS with the export's own generation_config.json (sampling), seeded: unedited."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(export, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(export, trust_remote_code=True).eval()
    texts = []
    for opening in OPENINGS:
        torch.manual_seed(seed)
        inputs = tokenizer(opening, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens)
        texts.append(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
    return texts


def curve(output: Path) -> list[tuple[float, float]]:
    """(training minutes, validation bits per byte) at each evaluation of a run."""
    points, train_time = [], 0.0
    for line in (output / "metrics.jsonl").read_text().splitlines():
        entry = json.loads(line)
        train_time = entry.get("train_time_s", train_time)
        if "eval" in entry:
            points.append((train_time / 60, entry["eval"]["bits_per_byte"]))
    return points


def plot(curves: dict, path: Path, minutes: float):
    """Validation bits per byte against training minutes: the whole run, and its second half on its own scale, where
    recipes that differ by a hundredth are told apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (whole, late) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for name, points in curves.items():
        if points:
            whole.plot(*zip(*points), "o-", ms=3, label=name)
            tail = [(m, b) for m, b in points if m >= minutes / 2]
            if tail:
                late.plot(*zip(*tail), "o-", ms=3, label=name)
    for ax, title in ((whole, f"PG19 sample: quality at equal wall-clock ({minutes:g} min)"),
                      (late, "second half, own scale")):
        ax.set_xlabel("training minutes (2 CPU cores)")
        ax.set_ylabel("validation bits per byte")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    late.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=25.0, help="training-time budget of each recipe")
    parser.add_argument("--recipes", default="gpt2,modern", help=f"comma-separated, from {sorted(RECIPES)}")
    parser.add_argument("--dataset", default=str(REPO.parent / "shared" / "data" / "pg19-sample"))
    parser.add_argument("--output", default=str(REPO / "runs" / "bench-quality"))
    parser.add_argument("--num-processes", type=int, default=2, help="gloo DDP processes (1: a plain process)")
    parser.add_argument("--seed", type=int, default=1919, help="sampling seed of the unedited samples")
    parser.add_argument("--sample-tokens", type=int, default=80)
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO))
    from victorian_gpt.sources import load_text_dataset

    try:
        load_text_dataset(args.dataset, split="test")
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    recipes = args.recipes.split(",")
    for name in recipes:
        base, *changes = name.split("+")
        if base not in RECIPES or not all("=" in change for change in changes):
            parser.error(f"unknown recipe {name!r}; choose from {sorted(RECIPES)}, each optionally +key=value...")
    root = Path(args.output)
    results, curves = {}, {}
    configs = {name: recipe_config(name, root) for name in recipes}  # every spec is checked before any training
    for name in recipes:
        output = root / name
        wall = train(name, configs[name], args.minutes, args.dataset, output, args.num_processes)
        summary = json.loads((output / "model" / "training_summary.json").read_text())
        export = output / "model"
        record = {
            "bench": "quality", "recipe": name, "config": str(configs[name]),
            "minutes": args.minutes, "train_time_s": summary.get("train_time_s"), "wall_s": round(wall, 1),
            "steps": summary["steps"], "tokens": summary["tokens_seen"], "hardware": summary["hardware"],
            "validation": evaluate(export, args.dataset, "validation"),
            "test": evaluate(export, args.dataset, "test"),
            "samples": dict(zip(OPENINGS, samples(export, args.seed, args.sample_tokens))),
        }
        for split in ("validation", "test"):
            record[f"{split}_bits_per_byte"] = round(record[split]["bits_per_byte"], 4)
        results[name] = record
        curves[name] = curve(output)
        print(json.dumps(record), flush=True)
    if {"gpt2", "modern"} <= set(results):
        ratio = {f"{split}_bits_per_byte_ratio": round(results["modern"][f"{split}_bits_per_byte"]
                                                         / results["gpt2"][f"{split}_bits_per_byte"], 4)
                 for split in ("validation", "test")}
        ratio["tokens_ratio"] = round(results["modern"]["tokens"] / results["gpt2"]["tokens"], 3)
        print(json.dumps({"bench": "quality", "modern_vs_gpt2": ratio, "minutes": args.minutes}), flush=True)
    base = recipes[0]
    for name in recipes[1:]:  # each later recipe against the first: an ablation's delta
        delta = {f"{split}_bits_per_byte_delta": round(results[name][f"{split}_bits_per_byte"]
                                                       - results[base][f"{split}_bits_per_byte"], 4)
                 for split in ("validation", "test")}
        print(json.dumps({"bench": "quality", "recipe": name, "against": base, **delta,
                          "tokens_ratio": round(results[name]["tokens"] / results[base]["tokens"], 3)}), flush=True)
    plot(curves, root / "quality.png", args.minutes)
    print(f"plot: {root / 'quality.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
