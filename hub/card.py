"""The model card: `README.md` of a Hub repo, built from what an export folder holds.

Every figure in the card is read from the folder: the architecture from `config.json`, the parameter count from
the safetensors headers, the sampling defaults from `generation_config.json`, training facts and evaluation from
`training_summary.json` (written by training). Nothing is typed twice and nothing is invented: a run that measured
no evaluation gets no `model-index` results.

    victorian-gpt card EXPORT_DIR [--repo-id USER/NAME] [--revision COMMIT] [--license apache-2.0]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from victorian_gpt.summary import SUMMARY_FILE, TrainingSummary
from victorian_gpt.utils.hub import is_hub_id

TEMPLATE = Path(__file__).parent / "templates" / "model_card.md"
# What `victorian_gpt.export.save_model_folder` writes; weights are either one file or an index plus shards.
REQUIRED_FILES = (
    "config.json",
    "configuration_victorian_gpt.py",
    "modeling_victorian_gpt.py",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
)
WEIGHTS_FILE, WEIGHTS_INDEX = "model.safetensors", "model.safetensors.index.json"
# A LoRA adapter exported alone (`lora_export: adapter`): peft's two files, the tokenizer, no model code or weights.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json")
PAPER_URL = "https://arxiv.org/abs/1911.05507"
# Model-index metrics: token perplexity, bits per byte and PG19's word-level perplexity (loss is in the card's table).
MODEL_INDEX_METRICS = {"perplexity": "Perplexity", "bits_per_byte": "Bits per byte",
                       "word_perplexity": "Word-level perplexity"}
# Generation settings worth showing (the rest of generation_config.json is token ids and versions).
GENERATION_KEYS = ("do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens", "max_length")


class ExportError(ValueError):
    """The export folder cannot be described or published (a file is missing or unreadable)."""


def is_adapter(export_dir: Path) -> bool:
    return (export_dir / "adapter_config.json").is_file() and not (export_dir / "config.json").is_file()


def missing_files(export_dir: Path) -> list[str]:
    """Files an export must hold that `export_dir` lacks (weights count as present when single or sharded)."""
    if is_adapter(export_dir):
        return [name for name in ADAPTER_FILES if not (export_dir / name).is_file()]
    missing = [name for name in REQUIRED_FILES if not (export_dir / name).is_file()]
    if not (export_dir / WEIGHTS_FILE).is_file() and not (export_dir / WEIGHTS_INDEX).is_file():
        missing.append(WEIGHTS_FILE)
    return missing


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{path} not found") from None
    except json.JSONDecodeError as error:
        raise ExportError(f"{path} is not valid JSON: {error}") from None


def count_parameters(export_dir: Path) -> int:
    """Number of stored parameters, read from the safetensors headers without loading a tensor.

    A safetensors file starts with an 8-byte little-endian header length and a JSON header of tensor shapes.
    Tied weights are stored once, so this is the model's unique parameter count.
    """
    if (export_dir / WEIGHTS_INDEX).is_file():
        files = sorted(set(_read_json(export_dir / WEIGHTS_INDEX)["weight_map"].values()))
    elif is_adapter(export_dir):
        files = ["adapter_model.safetensors"]
    else:
        files = [WEIGHTS_FILE]
    total = 0
    for name in files:
        with open(export_dir / name, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
        total += sum(math.prod(t["shape"]) for key, t in header.items() if key != "__metadata__")
    return total


def _human(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    minutes, s = divmod(round(seconds), 60)
    h, m = divmod(minutes, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s"


def _fmt(value, spec: str = "{}") -> str:
    return "—" if value is None else spec.format(value)


def _optimizer_row(s: TrainingSummary) -> str:
    if s.optimizer == "muon":
        return (f"Muon (hidden matrices, lr {_fmt(s.muon_learning_rate, '{:g}')}) + AdamW (embeddings, head, "
                "norms, biases)")
    return "AdamW"


def _weights_rows(s: TrainingSummary) -> list[tuple[str, str]]:
    """Which step's weights the repository holds, and whether early stopping ended the run."""
    rows = []
    exported, best = s.exported_step, s.best_model or {}
    if exported is not None:
        why = "the last step"
        if best.get("load_best_model_at_end") and best.get("step") == exported:
            why = f"the best validation `{best.get('metric')}` ({best['value']:.4f}), `load_best_model_at_end`"
        rows.append(("Weights published", f"step {exported:,} ({why})"))
    stopping = s.early_stopping or {}
    if stopping.get("stopped_early"):
        rows.append(("Early stopping", f"stopped at step {stopping['stopped_at_step']:,}: no improvement of "
                                       f"`{best.get('metric')}` by more than {stopping.get('threshold'):g} in "
                                       f"{stopping.get('patience')} evaluations"))
    return rows


def _finetuning(summary: TrainingSummary, base_model: str | None) -> dict | None:
    """What the card says of a fine-tune: its base (a Hub id for the model tree, else a local name), relation, data,
    and the before/after figures on the fine-tuning data's held-out books and on the general split."""
    ft = summary.finetuning
    if ft is None:
        return None
    base = base_model or ft.base_model or ""
    base_is_hub = is_hub_id(base)
    before, after = ft.before or {}, ft.after or {}
    names = {"validation": "held-out books (validation)", "test": "held-out books (test)",
             "general": f"general text: `{Path(ft.general_dataset).name if ft.general_dataset else '?'}`"
                        f" ({ft.general_split})"}
    rows = []
    for key, label in names.items():
        b, a = (before.get(key) or {}).get("bits_per_byte"), (after.get(key) or {}).get("bits_per_byte")
        if b is None or a is None:
            continue
        rows.append(dict(label=label, before=f"{b:.4f}", after=f"{a:.4f}", change=f"{100 * (a / b - 1):+.1f} %"))
    dataset = ft.dataset or summary.dataset or "unknown"
    return dict(base=base if base_is_hub else Path(base).name, base_is_hub=base_is_hub,
                revision=ft.revision, relation=ft.base_model_relation or "finetune",
                type=ft.finetuning_type, lora=ft.lora, dataset=dataset if is_hub_id(dataset)
                else Path(dataset).name, dataset_is_hub=is_hub_id(dataset),
                trainable=_fmt(ft.trainable_parameters, "{:,}"), total=_fmt(ft.total_parameters, "{:,}"),
                rows=rows)


def read_summary(folder: Path) -> TrainingSummary:
    """The folder's training_summary.json, or an ExportError saying why the card cannot be built without it."""
    if not (folder / SUMMARY_FILE).is_file():
        raise ExportError(
            f"{folder / SUMMARY_FILE} not found: the card reports the training run's measured facts and "
            "will not invent them (training writes this file into its export)"
        )
    try:
        return TrainingSummary.read(folder)
    except ValueError as error:
        raise ExportError(str(error)) from None


def evaluation(summary: TrainingSummary) -> tuple[list[EvalResult], list[dict]]:
    """The model-index results and the card's table rows: only the splits (and metrics) that training measured."""
    dataset = summary.dataset or "unknown"
    hub, name, finetuned = is_hub_id(dataset), Path(dataset).name, summary.finetuning is not None
    results, rows = [], []
    for split, metrics in (summary.eval or {}).items():
        for key, pretty in MODEL_INDEX_METRICS.items():
            if metrics.get(key) is not None:
                results.append(EvalResult(
                    task_type="text-generation",
                    task_name="Causal language modeling",
                    dataset_type=dataset if hub else ("text" if finetuned else "pg19"),
                    dataset_name=("PG19" if hub and not finetuned else dataset if hub
                                  else f"{name} (held-out books)" if finetuned else f"PG19 (local copy: {name})"),
                    dataset_split=split,
                    metric_type=key,
                    metric_name=pretty,
                    metric_value=float(metrics[key]),
                ))
        rows.append(dict(
            split=split,
            loss=_fmt(metrics.get("loss"), "{:.4f}"),
            perplexity=_fmt(metrics.get("perplexity"), "{:.2f}"),
            bits_per_byte=_fmt(metrics.get("bits_per_byte"), "{:.4f}"),
            word_perplexity=_fmt(metrics.get("word_perplexity"), "{:.2f}"),
            tokens=_fmt(metrics.get("tokens"), "{:,}"),
            bytes=_fmt(metrics.get("bytes"), "{:,}"),
            words=_fmt(metrics.get("words"), "{:,}"),
        ))
    return results, rows


def build_card(
    export_dir: str | os.PathLike,
    repo_id: str | None = None,
    revision: str | None = None,
    license: str = "apache-2.0",
    base_model: str | None = None,
) -> ModelCard:
    """The model card for `export_dir`. `repo_id` is where it will live (for the usage snippet); `revision` the
    commit to pin in that snippet (default "main", with a note to pin a commit hash). A fine-tune names its base
    (`base_model`: the Hub id of a base that training read from a local folder) and `base_model_relation`."""
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise ExportError(f"{export_dir} is not a folder")
    missing = missing_files(export_dir)
    if missing:
        raise ExportError(f"{export_dir} is not a complete export: missing {', '.join(missing)}")
    summary = read_summary(export_dir)
    adapter = is_adapter(export_dir)
    if adapter:  # the architecture is the base's; generation defaults are the base's too
        config, generation = summary.model_config or {}, {}
    else:
        config = _read_json(export_dir / "config.json")
        generation = _read_json(export_dir / "generation_config.json")
    finetuning = _finetuning(summary, base_model)

    model_name = export_dir.name if repo_id is None else repo_id.split("/")[-1]
    repo_id = repo_id or f"your-username/{export_dir.name}"
    dataset = summary.dataset or "unknown"
    dataset_is_hub = is_hub_id(dataset)
    dataset_url = f"https://huggingface.co/datasets/{dataset}" if dataset_is_hub else "https://huggingface.co/datasets/deepmind/pg19"
    eval_results, eval_rows = evaluation(summary)

    tags = ["text-generation", "gpt", "victorian", "pg19", "custom_code", "safetensors"]
    extra = {}
    if finetuning:
        tags += ["fine-tuned"] + (["lora", "peft"] if finetuning["type"] == "lora" else [])
        if finetuning["base_is_hub"]:  # the Hub's model tree: https://huggingface.co/docs/hub/model-cards
            extra = {"base_model": finetuning["base"], "base_model_relation": finetuning["relation"]}
    card_data = ModelCardData(
        language="en",
        license=license,
        library_name="peft" if adapter else "transformers",
        pipeline_tag="text-generation",
        tags=tags,
        datasets=[dataset] if dataset_is_hub else None,
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
        **extra,
    )

    s = summary
    procedure = [
        ("Model preset", _fmt(s.model_preset, "`{}`")),
        ("Optimizer steps", _fmt(s.steps, "{:,}")),
        ("Tokens per optimizer step", _fmt(s.tokens_per_step, "{:,}")),
        ("Micro-batch size (per process)", _fmt(s.micro_batch_size)),
        ("`gradient_accumulation_steps`", _fmt(s.gradient_accumulation_steps)),
        ("Processes", _fmt(s.num_processes)),
        ("Tokens seen", _fmt(s.tokens_seen, "{:,}")),
        *([("Optimizer", _optimizer_row(s))] if s.optimizer else []),
        ("Learning rate", _fmt(s.learning_rate, "{:g}")),
        ("Schedule", f"{_fmt(s.lr_schedule)}, {_fmt(s.warmup_steps)} warm-up steps"
                     + (f", {s.max_train_minutes:g}-minute training-time budget" if s.max_train_minutes else "")),
        ("Weight decay", _fmt(s.weight_decay, "{:g}")),
        ("Gradient clipping (`max_grad_norm`)", _fmt(s.max_grad_norm, "{:g}")),
        ("`mixed_precision`", _fmt(s.mixed_precision, "`{}`")),
        ("Hardware", _fmt(s.hardware)),
        ("Wall time", _duration(s.wall_time_s)),
        *_weights_rows(s),
    ]
    loss_curve = s.loss_curve
    if loss_curve and not (export_dir / loss_curve).is_file():
        loss_curve = None  # named in the summary but not exported: no broken image in the card

    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        model_name=model_name,
        repo_id=repo_id,
        revision=revision or "main",
        revision_pinned=revision is not None,
        config=config,
        n_params=_human(count_parameters(export_dir) if not adapter else  # the base's, not the adapter's
                        summary.finetuning.total_parameters - summary.finetuning.trainable_parameters),
        summary=summary,
        dataset=dataset if dataset_is_hub else Path(dataset).name,  # a local path: its name, not the machine's layout
        dataset_is_hub=dataset_is_hub,
        dataset_url=dataset_url,
        dataset_splits=s.dataset_splits or {"train": "train"},
        procedure=procedure,
        training_config_json=json.dumps(s.training_config, indent=2, sort_keys=True, default=str),
        loss_curve=loss_curve,
        eval_rows=eval_rows,
        generation_defaults=[(k, repr(generation[k])) for k in GENERATION_KEYS if k in generation],
        finetuning=finetuning,
        adapter=adapter,
    )


def check_card(card: ModelCard) -> None:
    """Offline validation: the card's YAML must parse back through `ModelCardData` to the same metadata.

    (`ModelCard.validate` asks the Hub's /api/validate-yaml and needs the network; this is the part we can check.)
    """
    reparsed = ModelCard(str(card))
    if reparsed.data.to_dict() != card.data.to_dict():
        raise ValueError("the card's metadata does not round-trip through ModelCardData")
    for key in ("language", "license", "library_name", "pipeline_tag"):
        if not reparsed.data.get(key):
            raise ValueError(f"the card's metadata lacks `{key}`")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="victorian-gpt card",
        description="Write the model card (README.md) into an exported model folder, from its files and "
        "training_summary.json.",
    )
    parser.add_argument("export_dir", help="folder written by training's export (save_model_folder)")
    parser.add_argument("--repo-id", help="USER/NAME the model will be published as (used in the usage snippet)")
    parser.add_argument("--revision", help="commit hash to pin in the usage snippet (default: main)")
    parser.add_argument("--license", default="apache-2.0", help="license id for the card metadata")
    parser.add_argument("--base-model", default=None,
                        help="a fine-tune's base as a Hub id (when training read it from a local folder), for the "
                        "card's base_model (the Hub's model tree)")
    args = parser.parse_args(argv)
    if args.repo_id is not None:
        try:
            validate_repo_id(args.repo_id)
        except HFValidationError as error:
            parser.error(f"invalid --repo-id {args.repo_id!r}: {error}")
    try:
        if args.base_model is not None:
            validate_repo_id(args.base_model)
        card = build_card(args.export_dir, repo_id=args.repo_id, revision=args.revision, license=args.license,
                          base_model=args.base_model)
        check_card(card)
    except (ExportError, ValueError, HFValidationError) as error:
        print(f"victorian-gpt card: error: {error}", file=sys.stderr)
        return 2
    path = Path(args.export_dir) / "README.md"
    card.save(path)
    print(f"wrote {path}")
    if args.repo_id is None:
        print("note: pass --repo-id USER/NAME so the card's usage snippet names the published repo")
    return 0


if __name__ == "__main__":
    sys.exit(main())
