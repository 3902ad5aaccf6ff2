"""`victorian-gpt eval --stride S`: sliding-window bits per byte, checked against the NLL of each token computed
directly from the context the stride gives it; the stride equal to the block size against the block evaluation; bad
strides and block sizes as one-line errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

BOOKS = [
    ("CHAPTER I. The old house stood at the end of the lane, and the rain fell in torrents—except at occasional "
     "intervals, when it was checked by a violent gust of wind which swept up the streets. “Mr. Pickwick’s café,” "
     "said Sam Weller, with a naïve air."),
    ("It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness; "
     "it was the epoch of belief, it was the epoch of incredulity."),
]


def write_books(folder, books, split="validation"):
    folder.mkdir(exist_ok=True)
    rows = [{"short_book_title": f"Book {i}", "publication_date": 1859, "url": "", "text": text}
            for i, text in enumerate(books)]
    (folder / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def run_eval(export, data, capsys, *args):
    from training.evaluate import main as eval_main

    assert eval_main([str(export), "--dataset", str(data), "--split", "validation", *args]) == 0
    return json.loads(capsys.readouterr().out)


def context_start(target: int, block_size: int, stride: int) -> int:
    """Where the context of target token `target` (1, 2, ...) of a book starts under the stride, worked out on its
    own: the first window (begin 0) scores targets 1 .. block_size; window k >= 1 begins at k * stride and scores the
    `stride` targets that end at k * stride + block_size."""
    if target <= block_size:
        return 0
    return math.ceil((target - block_size) / stride) * stride


@pytest.mark.parametrize("fixture", ["modern_tiny_export", "tiny_export"])
def test_stride_figures_equal_each_tokens_nll_from_the_context_the_stride_gives_it(fixture, request, tmp_path,
                                                                                    capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = request.getfixturevalue(fixture)
    data = write_books(tmp_path / "books", BOOKS)
    block, stride = 16, 5
    figures = run_eval(export, data, capsys, "--block_size", str(block), "--stride", str(stride), "--batch_size", "3")

    tokenizer = AutoTokenizer.from_pretrained(export)
    model = AutoModelForCausalLM.from_pretrained(export, trust_remote_code=True).eval()
    nll, tokens, bytes_, words = 0.0, 0, 0, 0
    with torch.no_grad():
        for text in BOOKS:
            encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
            ids = encoding["input_ids"] + [tokenizer.eos_token_id]
            assert len(ids) > 2 * block  # several windows per book, and a last one that is cut short
            for target in range(1, len(ids)):  # each token but the book's first, from its own context
                context = ids[context_start(target, block, stride) : target]
                assert block - stride + 1 <= len(context) <= block or target <= block
                logits = model(torch.tensor([context])).logits[0, -1].double()
                nll -= torch.log_softmax(logits, dim=-1)[ids[target]].item()
            tokens += len(ids) - 1
            # the bytes and words of the text but those of the book's first token (context only; EOS has none)
            first_token_end = encoding["offset_mapping"][0][1]
            bytes_ += len(text.encode()) - len(text[:first_token_end].encode())
            words += len(text.split()) - 1  # each book starts with a word, in its first token

    assert figures["stride"] == stride and figures["block_size"] == block
    assert figures["tokens"] == tokens
    assert figures["bytes"] == bytes_
    assert figures["words"] == words
    assert figures["loss"] == pytest.approx(nll / tokens, rel=1e-5)
    assert figures["bits_per_byte"] == pytest.approx(nll / math.log(2) / bytes_, rel=1e-5)
    assert figures["word_perplexity"] == pytest.approx(math.exp(nll / words), rel=1e-4)
    assert figures["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-4)


def test_a_stride_of_the_block_size_scores_as_the_block_evaluation_of_the_same_windows(modern_tiny_export):
    """Windows that line up (each a full block_size + 1 tokens, consecutive ones sharing the token that is the next
    one's context): `evaluate_strided` with stride = block size gives the figures of `evaluate_blocks`, the code
    behind the plain `eval`, on those windows as blocks. A shorter stride does not."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.evaluate import evaluate_blocks, evaluate_strided, text_measures

    tokenizer = AutoTokenizer.from_pretrained(modern_tiny_export)
    model = AutoModelForCausalLM.from_pretrained(modern_tiny_export, trust_remote_code=True).eval()
    measures = text_measures(tokenizer)
    block = 12
    books = []
    for text in BOOKS:
        ids = np.array(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"] + [tokenizer.eos_token_id])
        books.append(ids[: (len(ids) - 1) // block * block + 1])  # k full windows of block + 1 tokens
    windows = [{"input_ids": torch.from_numpy(ids[k : k + block + 1].astype(np.int64)), "book": 0}
               for ids in books for k in range(0, len(ids) - 1, block)]
    assert len(windows) >= 6
    blocks = evaluate_blocks(model, iter(windows), measures, batch_size=4, device=torch.device("cpu"))
    strided = evaluate_strided(model, books, measures, block, block, batch_size=4, device=torch.device("cpu"))
    assert strided["tokens"] == blocks["tokens"] == len(windows) * block
    assert (strided["bytes"], strided["words"]) == (blocks["bytes"], blocks["words"])
    for key in ("loss", "bits_per_byte", "word_perplexity"):
        assert strided[key] == pytest.approx(blocks[key], rel=1e-5)
    # more context per token: other (here lower) figures on the same tokens
    shorter = evaluate_strided(model, books, measures, block, block // 3, batch_size=4, device=torch.device("cpu"))
    assert shorter["tokens"] == blocks["tokens"]
    assert abs(shorter["loss"] - blocks["loss"]) > 1e-4


def test_a_stride_of_the_block_size_on_a_one_block_book_prints_what_the_plain_eval_prints(modern_tiny_export,
                                                                                           tmp_path, capsys):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(modern_tiny_export)
    block = len(tokenizer(BOOKS[1], add_special_tokens=False)["input_ids"])  # + EOS: exactly one block of block + 1
    data = write_books(tmp_path / "one", BOOKS[1:])
    plain = run_eval(modern_tiny_export, data, capsys, "--block_size", str(block))
    strided = run_eval(modern_tiny_export, data, capsys, "--block_size", str(block), "--stride", str(block))
    assert strided.pop("stride") == block
    assert plain.keys() == strided.keys()
    for key, value in plain.items():
        assert strided[key] == (pytest.approx(value, rel=1e-6) if isinstance(value, float) else value), key


def test_max_eval_samples_bounds_the_windows(modern_tiny_export, tmp_path, capsys):
    data = write_books(tmp_path / "books", BOOKS)
    figures = run_eval(modern_tiny_export, data, capsys, "--block_size", "16", "--stride", "4",
                       "--max_eval_samples", "3")
    assert figures["tokens"] == 16 + 4 + 4  # the first window scores its 16 targets, the next two 4 each


def test_stride_windows_score_every_target_once():
    from training.evaluate import stride_windows

    for length in (1, 2, 5, 16, 17, 18, 40, 41):
        for block in (1, 4, 16):
            for stride in range(1, block + 1):
                windows = stride_windows(length, block, stride)
                scored = [t for _, end, count in windows for t in range(end - count + 1, end + 1)]
                assert scored == list(range(1, length)), (length, block, stride)
                assert all(end - begin <= block and count <= end - begin for begin, end, count in windows)


@pytest.mark.parametrize(
    ("args", "message", "needs_model"),
    [
        (["--stride", "0"], "--stride must be 1 or more", False),
        (["--stride", "-3"], "--stride must be 1 or more", False),
        (["--block_size", "16", "--stride", "17"], "--stride 17 exceeds --block_size 16", False),
        (["--block_size", "0", "--stride", "8"], "--block_size must be 1 or more", False),
        (["--stride", "129"], "--stride 129 exceeds the block size (128, the model's context)", True),
        (["--block_size", "256", "--stride", "8"], "--block_size 256 exceeds the model's context (128)", True),
    ],
)
def test_bad_stride_or_block_size_is_a_one_line_error_before_any_evaluation(args, message, needs_model,
                                                                           modern_tiny_export, tmp_path, capsys):
    """Errors the arguments alone show come before the data is opened (a missing folder is not what is reported);
    those that need the model's context come once its config is known, and nothing is evaluated (no JSON)."""
    from training.evaluate import main as eval_main

    data = write_books(tmp_path / "books", BOOKS) if needs_model else tmp_path / "missing"
    with pytest.raises(SystemExit) as exit_info:
        eval_main([str(modern_tiny_export), "--dataset", str(data), "--split", "validation", *args])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    errors = [line for line in captured.err.splitlines() if "error:" in line]
    assert errors == [captured.err.strip().splitlines()[-1]], captured.err  # one line, the last
    assert errors[0].startswith("victorian-gpt eval: error: ") and message in errors[0], errors
