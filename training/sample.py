"""Make a small PG19-format sample: the first books of each split of a PG19-format source, streamed.

    python -m training.sample --dataset emozilla/pg19 --books 60 --output data/pg19-sample

writes data/pg19-sample/{train,validation,test}.jsonl.gz, one book per line with PG19's fields (short_book_title,
publication_date, url, text, in that order), and a README.md saying what was taken from where. The splits are
streamed through `victorian_gpt.sources.load_text_dataset` (the path training reads), so only the books taken are
downloaded. `--years 1837-1901` keeps Victorian books only; `--max-chars` cuts each book (for a test-sized copy).
The folder appears whole or not at all: it is written beside `--output` and renamed into place.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from pathlib import Path

from tqdm.auto import tqdm

from victorian_gpt.sources import DEFAULT_DATASET, PG19_FIELDS, load_text_dataset
from victorian_gpt.utils.files import atomic_output

SPLITS = ("train", "validation", "test")


def parse_years(text: str) -> tuple[int, int]:
    try:
        first, last = (int(part) for part in text.split("-"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FIRST-LAST, e.g. 1837-1901; got {text!r}") from None
    if first > last:
        raise argparse.ArgumentTypeError(f"{text!r}: the first year is after the last")
    return first, last


def pg19_record(row: dict, where: str) -> dict:
    """The row reduced to PG19's four fields, in PG19's order; a clear error when one is missing."""
    missing = [field for field in PG19_FIELDS if field not in row]
    if missing:
        raise ValueError(f"{where} has no {', '.join(repr(f) for f in missing)} field; a PG19-format record has "
                         f"{', '.join(PG19_FIELDS)} (its fields are {', '.join(sorted(row))})")
    if not isinstance(row["text"], str):
        raise ValueError(f"{where}: 'text' is {type(row['text']).__name__}, not a string")
    return {field: row[field] for field in PG19_FIELDS}


def published_in(row: dict, years: tuple[int, int] | None) -> bool:
    if years is None:
        return True
    try:
        year = int(row["publication_date"])
    except (TypeError, ValueError):
        return False  # an unknown date is not in any range
    return years[0] <= year <= years[1]


def write_split(source: str, split: str, books: int, path: Path, years=None, max_chars=None) -> dict:
    """Stream the first `books` books of `split` (within `years`) into `path` (.jsonl.gz). Returns the split's facts."""
    rows = iter(load_text_dataset(source, split=split))
    facts = {"books": 0, "characters": 0, "bytes": 0, "titles": []}
    scanned = 0
    # mtime 0 and no file name in the gzip header: the same books give the same bytes
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", filename="", mtime=0, compresslevel=6) as out, \
            tqdm(total=books, desc=f"sample: {split}", unit="book", dynamic_ncols=True) as bar:
        for row in rows:
            scanned += 1
            if not published_in(row, years):
                bar.set_postfix(scanned=scanned, refresh=False)
                continue
            record = pg19_record(row, f"{source} ({split}, book {scanned})")
            if max_chars is not None:
                record["text"] = record["text"][:max_chars]
            line = json.dumps(record, ensure_ascii=False) + "\n"
            out.write(line.encode("utf-8"))
            facts["books"] += 1
            facts["characters"] += len(record["text"])
            facts["bytes"] += len(record["text"].encode("utf-8"))
            facts["titles"].append((record["short_book_title"], record["publication_date"], record["url"]))
            bar.update(1)
            bar.set_postfix(scanned=scanned, MB=f"{facts['bytes'] / 1e6:.1f}", refresh=False)
            if facts["books"] == books:
                break
    if facts["books"] < books:
        where = f" published {years[0]}-{years[1]}" if years else ""
        print(f"sample: {split} has only {facts['books']} books{where}; took them all", file=sys.stderr)
    return facts


def readme(source: str, command: str, splits: dict, years, max_chars) -> str:
    lines = [
        "# PG19-format sample",
        "",
        f"The first books of each split of `{source}`"
        + (f", keeping books with `publication_date` from {years[0]} to {years[1]}" if years else "")
        + (f", each cut to its first {max_chars:,} characters" if max_chars else "")
        + ", in the order the source streams them. Made with:",
        "",
        f"    {command}",
        "",
        "One JSON object per line (gzip-compressed), with PG19's fields in PG19's order: "
        + ", ".join(f"`{field}`" for field in PG19_FIELDS) + ". The texts are as the source has them.",
        "",
        "| split | books | characters of `text` | UTF-8 bytes of `text` |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| `{split}.jsonl.gz` | {f['books']} | {f['characters']:,} | {f['bytes']:,} |" for split, f in splits.items()]
    for split, facts in splits.items():
        lines += ["", f"## {split}", "", "| # | title | year | url |", "| ---: | --- | ---: | --- |"]
        lines += [f"| {i} | {str(title).replace('|', '/')} | {year} | {url} |"
                  for i, (title, year, url) in enumerate(facts["titles"], 1)]
    return "\n".join(lines) + "\n"


def make_sample(source: str, output: str | os.PathLike, books: int, books_eval: int, splits=SPLITS, years=None,
                max_chars=None, overwrite: bool = False, command: str | None = None) -> dict:
    """Write the sample folder atomically; returns {split: {books, characters, bytes}}."""
    output = Path(output)
    if output.exists() and not (overwrite and output.is_dir()):
        raise FileExistsError(f"{output} already exists; choose another --output or pass --overwrite")
    with atomic_output(output) as tmp:
        facts = {
            split: write_split(source, split, books if split == "train" else books_eval, tmp / f"{split}.jsonl.gz",
                               years, max_chars)
            for split in splits
        }
        command = command or f"python -m training.sample --dataset {source} --books {books} --output {output}"
        (tmp / "README.md").write_text(readme(source, command, facts, years, max_chars), encoding="utf-8")
    return {split: {k: v for k, v in f.items() if k != "titles"} for split, f in facts.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.sample", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=DEFAULT_DATASET,
                        help=f"Hub dataset id or local PG19-format folder (default {DEFAULT_DATASET})")
    parser.add_argument("--output", required=True, help="folder to create (e.g. data/pg19-sample)")
    parser.add_argument("--books", type=int, default=60, help="books to take from the train split (default 60)")
    parser.add_argument("--books-eval", "--books_eval", type=int, default=None,
                        help="books to take from validation and from test (default: --books / 8, at least 1)")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    parser.add_argument("--years", type=parse_years, default=None, metavar="FIRST-LAST",
                        help="only books whose publication_date is in this range, e.g. 1837-1901 (Victorian)")
    parser.add_argument("--max-chars", "--max_chars", type=int, default=None,
                        help="cut each book to its first N characters")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output folder")
    args = parser.parse_args(argv)
    books_eval = args.books_eval if args.books_eval is not None else max(1, args.books // 8)
    if args.books < 1 or books_eval < 1 or (args.max_chars is not None and args.max_chars < 1):
        parser.error("--books, --books-eval and --max-chars must be positive")
    command = "python -m training.sample " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        facts = make_sample(args.dataset, args.output, args.books, books_eval, args.splits, args.years,
                            args.max_chars, args.overwrite, command)
    except (ValueError, FileNotFoundError, FileExistsError, ConnectionError) as error:
        parser.error(str(error))
    print(json.dumps({"output": str(args.output), "splits": facts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
