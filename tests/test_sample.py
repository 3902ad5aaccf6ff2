"""`python -m training.sample` against local stand-ins for the Hub's PG19 (a JSON Lines folder, a Parquet folder in
the Hub's `data/<split>-NNNNN-of-NNNNN.parquet` layout), both streamed through `load_text_dataset`; the one-line
advice when a local dataset is missing (sources, train, eval); the generated test corpus against the real sample."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.isolation import REPO_ROOT
from helpers.synthetic_pg19 import make_records, write_pg19_folder

from training.sample import main as sample_main
from victorian_gpt.sources import PG19_FIELDS, load_text_dataset

SMALL = {"train": (6, 3_000), "validation": (3, 1_500), "test": (3, 1_500)}


def read_split(folder: Path, split: str) -> list[dict]:
    with gzip.open(folder / f"{split}.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_sample_streams_the_first_books_of_each_split_into_gzipped_pg19_jsonl(tmp_path):
    source = write_pg19_folder(tmp_path / "src", SMALL)
    out = tmp_path / "data" / "pg19-sample"
    result = subprocess.run(
        [sys.executable, "-m", "training.sample", "--dataset", str(source), "--books", "4", "--books-eval", "2",
         "--output", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sample: train" in result.stderr and "4/4" in result.stderr  # the tqdm bar, in books
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert {split: facts["books"] for split, facts in summary["splits"].items()} == {"train": 4, "validation": 2,
                                                                                    "test": 2}
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "test.jsonl.gz", "train.jsonl.gz",
                                                     "validation.jsonl.gz"]
    assert [p.name for p in out.parent.iterdir()] == ["pg19-sample"]  # no temporary folder left beside it
    for split, (_, _) in SMALL.items():
        wanted = make_records(split, *SMALL[split])[: 4 if split == "train" else 2]
        records = read_split(out, split)
        assert records == wanted and all(list(r) == list(PG19_FIELDS) for r in records)  # PG19's order
        # the sample is itself a PG19-format source for training
        assert [row["text"] for row in load_text_dataset(str(out), split)] == [r["text"] for r in wanted]
    readme = (out / "README.md").read_text()
    assert f"--dataset {source}" in readme and "| `train.jsonl.gz` | 4 |" in readme
    assert wanted[0]["short_book_title"] in readme

    # the same books give the same bytes: a rerun with --overwrite changes nothing
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sample_main(["--dataset", str(source), "--books", "4", "--books-eval", "2", "--output", str(out),
                        "--overwrite"]) == 0
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != "README.md"} == {
        k: v for k, v in before.items() if k != "README.md"}


def test_sample_from_a_hub_layout_parquet_folder_with_years_and_max_chars(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = make_records("train", 8, 2_000)
    shards = tmp_path / "hub" / "data"
    shards.mkdir(parents=True)
    for i, part in enumerate((records[:4], records[4:])):  # the Hub's sharded Parquet layout
        pq.write_table(pa.Table.from_pylist(part), shards / f"train-{i:05d}-of-00002.parquet")
    for split in ("validation", "test"):
        pq.write_table(pa.Table.from_pylist(make_records(split, 2, 1_000)), shards / f"{split}-00000-of-00001.parquet")

    out = tmp_path / "victorian"
    assert sample_main(["--dataset", str(tmp_path / "hub"), "--books", "3", "--years", "1845-1890", "--max-chars",
                        "500", "--output", str(out), "--splits", "train"]) == 0
    wanted = [r for r in records if 1845 <= r["publication_date"] <= 1890]
    got = read_split(out, "train")
    assert 3 < len(wanted) < len(records) and got == [dict(r, text=r["text"][:500]) for r in wanted[:3]]
    assert not (out / "validation.jsonl.gz").exists()

    # fewer matching books than asked: take them all and say so
    assert sample_main(["--dataset", str(tmp_path / "hub"), "--books", "50", "--years", "1845-1890", "--output",
                        str(out), "--overwrite", "--splits", "train"]) == 0
    assert len(read_split(out, "train")) == len(wanted)
    assert f"train has only {len(wanted)} books published 1845-1890" in capsys.readouterr().err


def test_sample_errors_are_one_line_and_lose_nothing(tmp_path, capsys):
    source = write_pg19_folder(tmp_path / "src", SMALL)
    out = tmp_path / "sample"
    out.mkdir()
    (out / "keep.txt").write_text("mine")

    def error(argv) -> str:
        with pytest.raises(SystemExit) as exit_info:
            sample_main(argv)
        assert exit_info.value.code == 2
        return capsys.readouterr().err.strip().splitlines()[-1]

    assert "already exists; choose another --output or pass --overwrite" in error(
        ["--dataset", str(source), "--output", str(out)])
    # a split whose records lack a PG19 field: found while streaming, after train was written; nothing is replaced
    (source / "test.jsonl").write_text(json.dumps({"title": "Bleak House", "text": "..."}) + "\n")
    message = error(["--dataset", str(source), "--output", str(out), "--overwrite", "--books", "2"])
    assert "(test, book 1) has no 'short_book_title', 'publication_date', 'url' field" in message
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and sorted(p.name for p in tmp_path.iterdir()) == [
        "sample", "src"]
    assert "expected FIRST-LAST" in error(["--dataset", str(source), "--output", str(tmp_path / "x"), "--years",
                                           "victorian"])


def check_missing_dataset_advice(message: str, missing: Path) -> None:
    assert message.count("\n") == 0
    assert f"Dataset path {str(missing)!r} does not exist." in message
    assert "Stream PG19 from the Hub with --dataset emozilla/pg19" in message
    assert "point --dataset at a local PG19-format copy" in message
    assert "short_book_title, publication_date, url, text" in message and "python -m training.sample" in message


def test_a_missing_local_dataset_says_what_to_do_next(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "shared" / "data" / "pg19-sample"
    with pytest.raises(FileNotFoundError) as error:
        load_text_dataset(str(missing))
    check_missing_dataset_advice(str(error.value), missing)

    # the training command, up front (before building anything)
    from training.train import main as train_main

    with pytest.raises(SystemExit) as exit_info:
        train_main(["--config", str(REPO_ROOT / "training" / "configs" / "tiny.yaml"), "--dataset", str(missing),
                    "--output_dir", str(tmp_path / "run")])
    assert exit_info.value.code == 2 and not (tmp_path / "run").exists()
    check_missing_dataset_advice(capsys.readouterr().err.strip().splitlines()[-1].split("error: ", 1)[1], missing)

    # `victorian-gpt eval`, before loading the model
    from victorian_gpt.cli import main as cli_main

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["eval", str(tmp_path / "no-model"), "--dataset", str(missing), "--split", "validation"])
    assert exit_info.value.code == 2
    check_missing_dataset_advice(capsys.readouterr().err.strip().splitlines()[-1].split("error: ", 1)[1], missing)

    # one slash, but under an existing local folder: a path that is missing, not a Hub id to look up
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"^Dataset path 'data/pg19-sample' does not exist\. Stream PG19"):
        load_text_dataset("data/pg19-sample")


def test_generated_test_corpus_has_the_real_samples_record_format(pg19_tiny, pg19_sample):
    """Only where the real sample sits beside the checkout (skipped elsewhere)."""
    real = json.loads((pg19_sample / "tiny" / "train.jsonl").open(encoding="utf-8").readline())
    made = json.loads((pg19_tiny / "train.jsonl").open(encoding="utf-8").readline())
    assert list(made) == list(real) == list(PG19_FIELDS)
    assert {k: type(v) for k, v in made.items()} == {k: type(v) for k, v in real.items()}
    assert sorted(p.name for p in pg19_tiny.iterdir()) == sorted(p.name for p in (pg19_sample / "tiny").iterdir())
