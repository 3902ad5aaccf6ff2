"""Open a PG19-format text source: a Hub dataset id or local JSON Lines / Parquet files, always streamed.

Hub ids and local folders go through the same `datasets.load_dataset(..., streaming=True)` call, so everything
downstream (tokenizer training, packing, evaluation) is one code path.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DATASET = "emozilla/pg19"  # a Parquet copy of deepmind/pg19 (same fields and splits) that streams
SCRIPT_ONLY_DATASETS = {"deepmind/pg19", "pg19"}
PG19_FIELDS = ("short_book_title", "publication_date", "url", "text")
# What to do when a local dataset is missing; one line, for every command that takes --dataset.
MISSING_DATASET_HINT = (
    f"Stream PG19 from the Hub with --dataset {DEFAULT_DATASET}, or point --dataset at a local PG19-format copy: "
    "a folder of train/validation/test .jsonl, .jsonl.gz or .parquet files, one book per record with the fields "
    f"{', '.join(PG19_FIELDS)} (`python -m training.sample --dataset {DEFAULT_DATASET} --books 60 --output "
    "data/pg19-sample` makes one)."
)
_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def _data_files(folder: Path) -> tuple[str, dict[str, list[str]]]:
    """Map each split name to its files in a PG19-format folder (`train.jsonl.gz`, `validation/…parquet`, …)."""
    found: dict[str, list[str]] = {}
    builder = None
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        name = path.name[:-3] if path.name.endswith(".gz") else path.name
        fmt = _FORMATS.get(Path(name).suffix)
        if fmt is None:
            continue
        rel = path.relative_to(folder)
        if len(rel.parts) > 1 and rel.parts[0] != "data":
            split = rel.parts[0]  # `validation/part-0.parquet`
        else:
            split = Path(name).stem.split("-")[0]  # `train.jsonl.gz`, `data/train-00000-of-00023.parquet`
        if split not in ("train", "validation", "test"):
            continue
        if builder not in (None, fmt):
            raise ValueError(f"{folder} mixes JSON Lines and Parquet files; keep one format per dataset")
        builder = fmt
        found.setdefault(split, []).append(str(path))
    if not found:
        raise FileNotFoundError(
            f"No train/validation/test JSON Lines or Parquet files found in {folder} "
            "(expected e.g. train.jsonl.gz, validation.jsonl, data/test-00000-of-00001.parquet)"
        )
    return builder, found


def load_text_dataset(source: str = DEFAULT_DATASET, split: str = "train", streaming: bool = True):
    """Return `split` of `source` as a (streaming) `datasets` dataset with at least a `text` column.

    `source` is a Hub dataset id, a local folder in PG19 layout, or one local file (then it is the only split).
    """
    from datasets import load_dataset

    if source in SCRIPT_ONLY_DATASETS:
        raise ValueError(
            f"{source!r} ships a Python loading script, which datasets >= 4 refuses ('Dataset scripts are no "
            f"longer supported'). Use {DEFAULT_DATASET!r}, a Parquet copy with the same fields and splits."
        )
    path = Path(os.path.expanduser(source))
    # a Hub id is `name` or `namespace/name`; `data/pg19-sample` is a local path when `data/` is a local folder
    looks_local = (
        path.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1
        or (len(path.parts) > 1 and path.parent.is_dir())
    )
    if looks_local:
        if not path.exists():
            raise FileNotFoundError(f"Dataset path {source!r} does not exist. {MISSING_DATASET_HINT}")
        if path.is_file():
            name = path.name[:-3] if path.name.endswith(".gz") else path.name
            builder = _FORMATS.get(Path(name).suffix)
            if builder is None:
                raise ValueError(f"{source}: expected a .jsonl, .json or .parquet file (optionally .gz)")
            files = {split: [str(path)]}
        else:
            builder, files = _data_files(path)
        if split not in files:
            raise ValueError(f"{source} has no {split!r} split; it has {sorted(files)}")
        dataset = load_dataset(builder, data_files={split: files[split]}, split=split, streaming=streaming)
    else:
        dataset = load_dataset(source, split=split, streaming=streaming)
    columns = dataset.column_names if dataset.column_names is not None else list(dataset.features or [])
    if columns and "text" not in columns:
        raise ValueError(f"{source} ({split}) has no 'text' field; its fields are {columns}")
    return dataset
