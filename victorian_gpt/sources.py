"""Open a text source: a Hub dataset id, local PG19-format JSON Lines / Parquet files, or plain `.txt` books; always
streamed, always as PG19-format records (`short_book_title`, `publication_date`, `url`, `text`).

Hub ids and local PG19-format folders go through the same `datasets.load_dataset(..., streaming=True)` call, and
`.txt` books through `datasets.IterableDataset.from_generator` (one shard per file), so everything downstream
(tokenizer training, packing, evaluation, DDP sharding, exact resume) is one code path.

Plain text (`TextOptions`): one book per `.txt` file (UTF-8). A folder with `train/`, `validation/` and `test/`
subfolders has those splits; a flat folder is split by book, seeded: `test_split_percentage` of the books (at least
one when the percentage is not 0) are the test split, `validation_split_percentage` the validation split (run_clm's
name), the rest the training split. A single `.txt` file is every split, as a single `.jsonl` file is. Project
Gutenberg's licence header and footer (`*** START OF ... ***` / `*** END OF ... ***`) are cut off when present
(`strip_gutenberg`); the book's title is the Gutenberg `Title:` line, else the file name.
"""

from __future__ import annotations

import codecs
import os
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from datasets import Features, IterableDataset, Value, load_dataset

from .utils.hub import is_local_path

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
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class TextOptions:
    """How `.txt` books are read and split (ignored for PG19-format sources). The training config holds the same keys."""

    strip_gutenberg: bool = True  # cut Project Gutenberg's header and footer when present
    validation_split_percentage: float = 10.0  # flat folder: books held out for validation (at least one if > 0)
    test_split_percentage: float = 10.0  # flat folder: books held out for the test split (at least one if > 0)
    split_seed: int = 0  # the seed of the flat folder's split by book

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------------------------------------
# plain-text books

_GUTENBERG_START = re.compile(r"^\*\*\*\s*START OF (?:THE|THIS) PROJECT GUTENBERG[^\n]*$", re.M | re.I)
_GUTENBERG_END = re.compile(r"^\*\*\*\s*END OF (?:THE|THIS) PROJECT GUTENBERG[^\n]*$", re.M | re.I)
_GUTENBERG_END_LINE = re.compile(r"^End of (?:the )?Project Gutenberg\S*(?: E-?Book)?[^\n]*$", re.M | re.I)  # older files
_GUTENBERG_TITLE = re.compile(r"^Title:[ \t]*(.+(?:\n[ \t]+\S.*)*)$", re.M)
_SNIFF_BYTES = 1 << 16


def strip_gutenberg_text(text: str) -> str:
    """The book between Project Gutenberg's `*** START OF ... ***` and `*** END OF ... ***` lines (each side cut only
    when its marker is present)."""
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end():]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
        tail = _GUTENBERG_END_LINE.search(text, max(0, len(text) - 2000))  # "End of the Project Gutenberg EBook of"
        if tail:
            text = text[: tail.start()]
    return text.strip("\n") + "\n"


def gutenberg_title(text: str) -> str | None:
    """The `Title:` line of a Gutenberg header (continuation lines joined), if the header has one."""
    start = _GUTENBERG_START.search(text)
    match = _GUTENBERG_TITLE.search(text, 0, start.start() if start else min(len(text), 10_000))
    return " ".join(match.group(1).split()) if match else None


def read_txt_book(path: str, strip_gutenberg: bool = True) -> dict:
    """One `.txt` file as a PG19-format record (line ends normalised to `\\n`, a byte-order mark dropped)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    title = gutenberg_title(text) or Path(path).stem.replace("_", " ").strip()
    if strip_gutenberg:
        text = strip_gutenberg_text(text)
    if not text.strip():
        raise ValueError(f"{path} holds no text" + (" once the Gutenberg header and footer are cut" if
                                                    strip_gutenberg else ""))
    return {"short_book_title": title, "publication_date": None, "url": Path(path).name, "text": text}


def _txt_records(paths: list[str], strip_gutenberg: bool):
    for path in paths:  # `datasets` hands each shard (here: each file) to this generator
        yield read_txt_book(path, strip_gutenberg)


def check_txt_file(path: Path) -> None:
    """An empty or binary file is a clear error before any compute (the first 64 KiB are looked at)."""
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{path} is empty")
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if b"\x00" in head:
        raise ValueError(f"{path} is a binary file, not UTF-8 text (it holds NUL bytes)")
    try:
        codecs.getincrementaldecoder("utf-8-sig")().decode(head, final=size <= _SNIFF_BYTES)
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    if size <= _SNIFF_BYTES and not head.decode("utf-8-sig").strip():
        raise ValueError(f"{path} holds only whitespace")


def _txt_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.txt") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(folder).parts))


def is_txt_source(source: str) -> bool:
    """A local `.txt` file, or a folder holding `.txt` files and no PG19-format (.jsonl/.parquet) files."""
    path = Path(os.path.expanduser(source))
    if path.is_file():
        return path.suffix.lower() == ".txt"
    if not path.is_dir():
        return False
    for p in path.rglob("*"):
        name = p.name[:-3] if p.name.endswith(".gz") else p.name
        if Path(name).suffix in _FORMATS:
            return False
    return bool(_txt_files(path))


def txt_splits(source: str, options: TextOptions | None = None) -> dict[str, list[str]]:
    """Split name -> the `.txt` files of that split (see the module docstring). Checks every file (empty, binary)."""
    options = options or TextOptions()
    path = Path(os.path.expanduser(source))
    if path.is_file():
        check_txt_file(path)
        return {split: [str(path)] for split in SPLITS}
    layout = [split for split in SPLITS if (path / split).is_dir()]
    if layout:
        splits = {split: _txt_files(path / split) for split in layout}
        splits = {split: files for split, files in splits.items() if files}
        if not splits:
            raise FileNotFoundError(f"no .txt files in {path}'s {'/, '.join(layout)}/ folders")
    else:
        files = _txt_files(path)
        if not files:
            raise FileNotFoundError(f"no .txt files (and no PG19-format .jsonl/.parquet files) in {path}")
        for name, pct in (("validation_split_percentage", options.validation_split_percentage),
                          ("test_split_percentage", options.test_split_percentage)):
            if not 0 <= pct < 100:
                raise ValueError(f"{name} must be between 0 and 100, got {pct}")
        order = list(files)
        random.Random(options.split_seed).shuffle(order)

        def count(pct):
            return 0 if pct == 0 else max(1, round(len(files) * pct / 100))

        n_test, n_val = count(options.test_split_percentage), count(options.validation_split_percentage)
        if n_test + n_val >= len(files):
            raise ValueError(
                f"{path} holds {len(files)} .txt book(s): too few to hold out {n_val} for validation and {n_test} "
                "for test by book; add books, lower validation_split_percentage / test_split_percentage, or make "
                "train/, validation/ and test/ subfolders"
            )
        chosen = {"test": order[:n_test], "validation": order[n_test : n_test + n_val],
                  "train": order[n_test + n_val :]}
        splits = {split: sorted(chosen[split]) for split in SPLITS if chosen[split]}
    for files in splits.values():
        for file in files:
            check_txt_file(file)
    return {split: [str(f) for f in files] for split, files in splits.items()}


def _txt_dataset(source: str, split: str, options: TextOptions | None):
    splits = txt_splits(source, options)
    if split not in splits:
        raise ValueError(f"{source} has no {split!r} split; it has {sorted(splits)}")
    features = Features({"short_book_title": Value("string"), "publication_date": Value("int64"),
                         "url": Value("string"), "text": Value("string")})
    strip = (options or TextOptions()).strip_gutenberg
    return IterableDataset.from_generator(_txt_records, features=features,
                                          gen_kwargs={"paths": splits[split], "strip_gutenberg": strip})


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
            f"No train/validation/test JSON Lines or Parquet files and no .txt books found in {folder} "
            "(expected e.g. train.jsonl.gz, validation.jsonl, data/test-00000-of-00001.parquet, or book.txt files)"
        )
    return builder, found


def load_text_dataset(source: str = DEFAULT_DATASET, split: str = "train", streaming: bool = True,
                      text_options: TextOptions | dict | None = None):
    """Return `split` of `source` as a (streaming) `datasets` dataset with at least a `text` column.

    `source` is a Hub dataset id, a local folder in PG19 layout, one local file (then it is the only split), or
    `.txt` books (a folder or one file; read as `text_options` says). `.txt` sources always stream.
    """
    if source in SCRIPT_ONLY_DATASETS:
        raise ValueError(
            f"{source!r} ships a Python loading script, which datasets >= 4 refuses ('Dataset scripts are no "
            f"longer supported'). Use {DEFAULT_DATASET!r}, a Parquet copy with the same fields and splits."
        )
    path = Path(os.path.expanduser(source))
    if is_local_path(source):  # else a Hub id: `name` or `namespace/name`
        if not path.exists():
            raise FileNotFoundError(f"Dataset path {source!r} does not exist. {MISSING_DATASET_HINT}")
        if is_txt_source(source):
            if isinstance(text_options, dict):
                text_options = TextOptions(**text_options)
            return _txt_dataset(source, split, text_options)
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


def add_text_arguments(parser) -> None:
    """The `.txt` options (`TextOptions`) as command-line flags, named as the training config keys."""
    group = parser.add_argument_group("plain-text books (.txt folder or file)")
    group.add_argument("--no_strip_gutenberg", "--no-strip-gutenberg", dest="strip_gutenberg", action="store_false",
                       help="keep Project Gutenberg's header and footer (cut by default when present)")
    group.add_argument("--validation_split_percentage", "--validation-split-percentage", type=float,
                       default=TextOptions.validation_split_percentage,
                       help="flat folder: percent of the books held out for validation (at least one if > 0)")
    group.add_argument("--test_split_percentage", "--test-split-percentage", type=float,
                       default=TextOptions.test_split_percentage,
                       help="flat folder: percent of the books held out for the test split (at least one if > 0)")
    group.add_argument("--split_seed", "--split-seed", type=int, default=TextOptions.split_seed,
                       help="flat folder: seed of the split by book")


def text_options_from_args(args) -> TextOptions:
    return TextOptions(strip_gutenberg=args.strip_gutenberg,
                       validation_split_percentage=args.validation_split_percentage,
                       test_split_percentage=args.test_split_percentage, split_seed=args.split_seed)
