"""Plain `.txt` books as a dataset: split folders or a seeded split by book, Gutenberg header and footer, titles,
one file, DDP sharding by book; and the same source through `python -m training.prepare`, `victorian-gpt tokenizer`
and `victorian-gpt eval`."""

from __future__ import annotations

import json

import pytest

from helpers.synthetic_pg19 import gutenberg_txt, make_book, write_txt_books
from victorian_gpt.sources import TextOptions, load_text_dataset, read_txt_book, txt_splits


def _names(files):
    return sorted(f.rsplit("/", 1)[-1] for f in files)


def test_a_flat_folder_is_split_by_book_seeded_and_disjoint(tmp_path):
    books = write_txt_books(tmp_path / "flat", books=10, length=2_000)
    splits = txt_splits(str(books), TextOptions(validation_split_percentage=20, test_split_percentage=10))
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [7, 2, 1]
    every = [f for files in splits.values() for f in files]
    assert len(set(every)) == 10 == len(list(books.glob("*.txt")))
    assert txt_splits(str(books), TextOptions(validation_split_percentage=20, test_split_percentage=10)) == splits
    others = [txt_splits(str(books), TextOptions(20, 10, split_seed=seed))["validation"] for seed in range(1, 6)]
    assert any(other != splits["validation"] for other in others)  # the seed chooses the books
    # no test split asked for: none made, and asking for it is a clear error
    no_test = txt_splits(str(books), TextOptions(validation_split_percentage=10, test_split_percentage=0))
    assert sorted(no_test) == ["train", "validation"]
    with pytest.raises(ValueError, match="has no 'test' split"):
        load_text_dataset(str(books), "test", text_options={"test_split_percentage": 0})
    with pytest.raises(ValueError, match="too few to hold out"):
        txt_splits(str(write_txt_books(tmp_path / "two", books=2, length=500)))


def test_split_subfolders_are_the_splits_and_every_record_is_pg19_shaped(tmp_path):
    books = write_txt_books(tmp_path / "layout", length=3_000, layout={"train": 2, "validation": 1, "test": 1})
    splits = txt_splits(str(books))
    assert {s: len(f) for s, f in splits.items()} == {"train": 2, "validation": 1, "test": 1}
    rows = list(load_text_dataset(str(books), "train"))
    assert [sorted(r) for r in rows] == [["publication_date", "short_book_title", "text", "url"]] * 2
    assert [r["url"] for r in rows] == _names(splits["train"])


def test_gutenberg_header_and_footer_are_cut_and_the_title_line_names_the_book(tmp_path):
    body = make_book("strip", 3_000)
    path = tmp_path / "pg12345.txt"
    path.write_bytes(gutenberg_txt("The Lonely Parish", body).encode())
    book = read_txt_book(str(path))
    assert book["short_book_title"] == "The Lonely Parish"
    assert book["text"] == body.strip("\n") + "\n"  # BOM, CRLF, header, "End of the Project Gutenberg", footer gone
    kept = read_txt_book(str(path), strip_gutenberg=False)["text"]
    assert kept.startswith("The Project Gutenberg EBook") and "*** END OF THIS PROJECT GUTENBERG EBOOK" in kept
    assert "\r" not in kept and body.strip() in kept
    plain = tmp_path / "Bleak_House.txt"
    plain.write_text(body)
    assert read_txt_book(str(plain)) == {"short_book_title": "Bleak House", "publication_date": None,
                                         "url": "Bleak_House.txt", "text": body}
    # one file is every split, as one .jsonl file is
    assert [r["text"] for r in load_text_dataset(str(plain), "validation")] == [body]


def test_books_shard_across_ranks_by_file(tmp_path, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    from training.blocks import BookReader

    books = write_txt_books(tmp_path / "books", length=1_500, layout={"train": 4})
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    seen = []
    for rank in range(2):
        reader = BookReader(str(books), "train", tokenizer, rank=rank, world_size=2, endless=False)
        seen.append([len(item["ids"]) for item in reader if not item.get("end")])
    assert [len(s) for s in seen] == [2, 2]
    everything = [len(item["ids"]) for item in BookReader(str(books), "train", tokenizer, endless=False)
                  if not item.get("end")]
    assert sorted(seen[0] + seen[1]) == sorted(everything)


def test_prepare_tokenizer_and_eval_commands_read_txt_books(tmp_path, tiny_export, capsys):
    from training.evaluate import main as eval_main
    from training.prepare import main as prepare_main
    from victorian_gpt.tokenization import main as tokenizer_main

    books = write_txt_books(tmp_path / "books", books=5, length=6_000)
    assert tokenizer_main(["--dataset", str(books), "--vocab-size", "300", "--output", str(tmp_path / "tok"),
                           "--validation-split-percentage", "20", "--test-split-percentage", "20"]) == 0
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    assert prepare_main(["--dataset", str(books), "--tokenizer", str(tiny_export), "--output", str(tmp_path / "prep"),
                         "--validation_split_percentage", "20", "--test_split_percentage", "20"]) == 0
    meta = json.loads((tmp_path / "prep" / "prepared.json").read_text())
    assert {s: v["books"] for s, v in meta["splits"].items()} == {"train": 3, "validation": 1, "test": 1}
    capsys.readouterr()
    figures = {}
    for strip in (True, False):
        assert eval_main([str(tiny_export), "--dataset", str(books), "--split", "test", "--max_eval_samples", "2"]
                         + ([] if strip else ["--no-strip-gutenberg"])) == 0
        figures[strip] = json.loads(capsys.readouterr().out)
    assert figures[True]["tokens"] == figures[False]["tokens"] == 2 * 128
    assert figures[True]["bytes"] != figures[False]["bytes"]  # the header is text too when kept
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        tokenizer_main(["--dataset", str(empty), "--output", str(tmp_path / "never")])
    assert exit_info.value.code == 2 and "no .txt books" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
