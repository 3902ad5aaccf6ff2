"""The byte-level BPE tokenizer: trained from a streamed PG19-format source, exact round trips, HF loading."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from transformers import AutoTokenizer

from victorian_gpt.tokenization import _chunks, train_tokenizer

SAMPLES = [
    "It is a truth universally acknowledged, that a single man in possession of a good fortune",
    "Café, naïve, résumé, Zoë, Ångström — and an em dash—here.",
    "“Curly double” and ‘curly single’ quotes, «guillemets», „low“, … ellipsis",
    "Ωμέγα, Москва, 日本語のテキスト, العربية, עברית, हिन्दी",
    "Emoji: 🎩🫖📚👨‍👩‍👧 and a flag 🇬🇧",
    "  leading spaces,\ttabs,\r\nwindows newlines\n\n\nand trailing spaces   ",
    "<|endoftext|> inside text, <|pad|> too",
    "",
]


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


def test_special_tokens_and_size(tokenizer):
    assert len(tokenizer) == 512
    assert tokenizer.eos_token == tokenizer.bos_token == "<|endoftext|>" and tokenizer.eos_token_id == 0
    assert tokenizer.pad_token == "<|pad|>" and tokenizer.pad_token_id == 1
    assert tokenizer.padding_side == "left"
    assert tokenizer.unk_token is None  # byte-level: nothing is unknown


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip_is_exact(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_learned_merges_compress_english(tokenizer):
    text = SAMPLES[0]
    ids = tokenizer(text)["input_ids"]
    assert len(ids) < len(text.encode()) * 0.6, "BPE merges should shorten English well below one token a byte"


def test_training_is_fed_by_an_iterator_in_chunks():
    book = ("A line of a very long book.\n" * 10_000)
    pieces = list(_chunks([book], chunk_chars=4096))
    assert "".join(pieces) == book and max(map(len, pieces)) <= 4096 and len(pieces) > 50
    consumed = []

    def texts():
        for i in range(5):
            consumed.append(i)
            yield f"Chapter {i}. " + "the quick brown fox jumps over the lazy dog " * 200

    tok = train_tokenizer(texts(), vocab_size=300, min_frequency=1)
    assert consumed == [0, 1, 2, 3, 4] and len(tok) == 300
    with pytest.raises(ValueError, match="at least 258"):
        train_tokenizer(iter(["x"]), vocab_size=100)


def test_cli_trains_from_a_local_pg19_folder(tmp_path, pg19_tiny):
    out = tmp_path / "tok"
    result = subprocess.run(
        [sys.executable, "-m", "victorian_gpt.cli", "tokenizer", "--dataset", str(pg19_tiny), "--vocab-size", "400",
         "--output", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "book" in result.stderr  # the tqdm bar over books
    assert json.loads((out / "tokenizer.json").read_text())["model"]["type"] == "BPE"
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == 400 and tok.decode(tok(SAMPLES[3])["input_ids"]) == SAMPLES[3]


def test_cli_reports_a_missing_dataset(tmp_path, capsys):
    from victorian_gpt.cli import main

    try:  # in this process: the same code path as the console script, without an interpreter start
        code = main(["tokenizer", "--dataset", str(tmp_path / "nope"), "--output", str(tmp_path / "tok")])
    except SystemExit as exit_info:  # argparse's way of failing
        code = exit_info.code
    assert code not in (0, None) and "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "tok").exists()
