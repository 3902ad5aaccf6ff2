"""PG19 word-level perplexity against a hand computation; early stopping with the best checkpoint exported and kept;
training for a wall-clock budget of training steps."""

from __future__ import annotations

import json
import math
import re
import shutil
import sys

import subprocess

import pytest
import torch

from helpers.isolation import REPO_ROOT
from helpers.training import metrics, run, step_losses, tiny_args
from training.config import load_config
from training.optim import lr_factor

BOOK = (
    "CHAPTER I.\n\nIt was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
    "foolishness; “Mr. Pickwick’s café,” said Sam Weller,  with  a naïve air,\tand the old house stood at the end of "
    "the lane. The rain fell in torrents—except at occasional intervals—when it was checked by a violent gust.\n\n"
) * 3


def test_word_level_perplexity_is_total_nll_over_the_words_of_the_text(tmp_path, tiny_export, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.evaluate import main as eval_main

    data = tmp_path / "book"
    data.mkdir()
    (data / "validation.jsonl").write_text(json.dumps({"short_book_title": "A Tale", "publication_date": 1859,
                                                       "url": "", "text": BOOK}) + "\n")
    block = 48
    assert eval_main([str(tiny_export), "--dataset", str(data), "--split", "validation", "--block_size", str(block),
                      "--batch_size", "3"]) == 0
    figures = json.loads(capsys.readouterr().out)

    # by hand: the book's tokens + EOS cut into blocks of 49; the model's NLL of tokens 1..48 of each block; the words
    # whose first character lies in one of those predicted tokens (offsets from the tokenizer, words by regex)
    tokenizer = AutoTokenizer.from_pretrained(tiny_export)
    model = AutoModelForCausalLM.from_pretrained(tiny_export, trust_remote_code=True).eval()
    encoding = tokenizer(BOOK, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoding["input_ids"] + [tokenizer.eos_token_id]
    n_blocks = len(ids) // (block + 1)
    nll = 0.0
    with torch.no_grad():
        for k in range(n_blocks):
            window = torch.tensor(ids[k * (block + 1):(k + 1) * (block + 1)])
            logprobs = torch.log_softmax(model(window[None, :-1]).logits[0].double(), dim=-1)
            nll -= logprobs[torch.arange(block), window[1:]].sum().item()
    token_of_char = {}
    for index, (start, end) in enumerate(encoding["offset_mapping"]):
        for char in range(start, end):
            token_of_char.setdefault(char, index)  # a character split over byte tokens starts in the first
    predicted = {i for i in range(n_blocks * (block + 1)) if i % (block + 1)}
    words = sum(token_of_char[m.start()] in predicted for m in re.finditer(r"[^ \t\n\r\x0b\x0c]+", BOOK))
    assert len(BOOK.split()) - n_blocks <= words < len(BOOK.split())  # block-initial tokens are context only

    assert figures["tokens"] == n_blocks * block
    assert figures["words"] == words
    assert figures["loss"] == pytest.approx(nll / (n_blocks * block), rel=1e-5)
    assert figures["word_perplexity"] == pytest.approx(math.exp(nll / words), rel=1e-4)
    assert figures["word_perplexity"] > figures["perplexity"]  # a word is more than one token on average


@pytest.mark.slow  # a training subprocess (~6 s)
def test_early_stopping_exports_the_best_checkpoint_which_pruning_keeps(tmp_path, pg19_tiny, tiny_tokenizer_dir):
    from safetensors.torch import load_file

    from hub.card import build_card

    out = tmp_path / "run"
    # an absurd threshold: no evaluation after the first counts as an improvement, so patience 2 ends the run at the
    # third evaluation (step 6 of 40); a learning rate far too high makes the first evaluated model the best one
    run([sys.executable, "-m", "training.train", *tiny_args(out, pg19_tiny, "--tokenizer", str(tiny_tokenizer_dir),
         "--max_steps", "40", "--eval_steps", "2", "--eval_on_start", "false", "--max_eval_samples", "16",
         "--num_samples", "0", "--save_steps", "2", "--save_total_limit", "1", "--learning_rate", "0.05",
         "--warmup_steps", "0", "--early_stopping_patience", "2", "--early_stopping_threshold", "100",
         "--load_best_model_at_end", "--test_split", "test", "--dataloader_num_workers", "0")])
    evals = {m["step"]: m["eval"] for m in metrics(out) if "eval" in m}
    assert sorted(evals) == [2, 4, 6] and max(step_losses(out)) == 6
    best = min(evals, key=lambda step: evals[step]["bits_per_byte"])
    assert best < 6, evals  # (the high learning rate makes the later models worse)
    summary = json.loads((out / "model" / "training_summary.json").read_text())
    assert summary["steps"] == 6 and summary["exported_step"] == best
    assert summary["best_model"] == {"metric": "bits_per_byte", "value": evals[best]["bits_per_byte"], "step": best,
                                     "load_best_model_at_end": True}
    assert summary["early_stopping"] == {"patience": 2, "threshold": 100.0, "stopped_early": True,
                                         "stopped_at_step": 6}
    assert summary["eval"]["validation"] == evals[best]  # the exported model's own figures
    assert {m["step"] for m in metrics(out) if "test" in m} == {best}
    # save_total_limit 1 keeps the last checkpoint and, beside it, the best one
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == sorted({f"step_{best}", "step_6"})
    exported = load_file(out / "model" / "model.safetensors")
    saved = load_file(out / "checkpoints" / f"step_{best}" / "model.safetensors")
    assert exported.keys() >= saved.keys() and all(torch.equal(exported[k], saved[k]) for k in saved)

    card = build_card(out / "model")
    assert f"| Weights published | step {best} (the best validation `bits_per_byte`" in card.text
    assert "| Early stopping | stopped at step 6: no improvement of `bits_per_byte` by more than 100" in card.text
    assert {(r.dataset_split, r.metric_type) for r in card.data.eval_results} >= {
        ("validation", "word_perplexity"), ("test", "word_perplexity")}


@pytest.mark.slow  # two training subprocesses (~22 s)
def test_a_time_budget_counts_training_steps_only_and_resumes_its_clock(tmp_path, pg19_tiny, tiny_tokenizer_dir):
    out = tmp_path / "timed"
    budget_s = 4.0  # several steps even on a busy machine, where one step can take over 2 s
    args = ["--tokenizer", str(tiny_tokenizer_dir), "--max_train_minutes", str(budget_s / 60), "--max_steps", "100000",
            "--eval_steps", "2", "--eval_on_start", "false", "--max_eval_samples", "8", "--num_samples", "0",
            "--save_steps", "1", "--save_total_limit", "100", "--lr_scheduler_type", "warmup_stable_decay",
            "--warmup_steps", "0", "--decay_ratio", "0.5", "--min_lr_ratio", "0.0", "--dataloader_num_workers", "0"]
    run([sys.executable, "-m", "training.train", *tiny_args(out, pg19_tiny, *args)])
    steps = [m for m in metrics(out) if "loss" in m]
    summary = json.loads((out / "model" / "training_summary.json").read_text())
    # the clock is the sum of the step times: evaluations and checkpoint saves are not in it
    assert summary["train_time_s"] == pytest.approx(sum(m["step_time_s"] for m in steps), abs=0.2)
    assert summary["wall_time_s"] > summary["train_time_s"]
    assert steps[-1]["train_time_s"] >= budget_s > steps[-2]["train_time_s"] - 0.05  # stopped once it was spent
    assert summary["steps"] == len(steps) < 100000 and summary["max_train_minutes"] == pytest.approx(budget_s / 60)
    # warm-up/stable/decay over time: each step's rate follows the clock as its step began (between the two
    # previous steps' end times), not the step count (which with max_steps 100000 would leave it at its peak)
    config = load_config(None, {"max_train_minutes": budget_s / 60, "lr_scheduler_type": "warmup_stable_decay",
                                "warmup_steps": 0, "decay_ratio": 0.5, "min_lr_ratio": 0.0, "learning_rate": 3e-3})
    ends = [0.0, 0.0] + [m["train_time_s"] for m in steps]
    for i, m in enumerate(steps):
        high, low = (3e-3 * lr_factor(i, config, t) for t in (ends[i], ends[i + 1]))
        assert low - 1e-12 <= m["lr"] <= high + 1e-12, (m, low, high)
    assert min(m["lr"] for m in steps) < 3e-3 == steps[0]["lr"]  # it did decay

    # resumed from its first checkpoint, the run continues its clock from there and stops at the same budget
    first = sorted((out / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))[0]
    clock = json.loads((first / "trainer_state.json").read_text())["train_time_s"]
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    run([sys.executable, "-m", "training.train", *tiny_args(resumed, pg19_tiny, *args, "--resume_from_checkpoint",
                                                             str(resumed / "checkpoints" / first.name))])
    after = [m for m in metrics(resumed) if "loss" in m and m["step"] > int(first.name.split("_")[1])]
    assert after[0]["train_time_s"] > clock and after[-1]["train_time_s"] >= budget_s
    assert after[0]["train_time_s"] - after[0]["step_time_s"] == pytest.approx(clock, abs=0.01)


@pytest.mark.slow  # a training subprocess (~6 s)
def test_native_export_writes_the_same_model_as_transformers_own_class(tmp_path, pg19_tiny, tiny_tokenizer_dir):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "native"
    run([sys.executable, "-m", "training.train",
         *tiny_args(out, pg19_tiny, "--tokenizer", str(tiny_tokenizer_dir), "--max_steps", "2", "--eval_steps", "0",
                    "--num_samples", "0", "--save_steps", "0", "--native_export", "true")])
    native = out / "model-hf"
    assert json.loads((native / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]
    assert "auto_map" not in json.loads((native / "config.json").read_text())
    assert not list(native.glob("*.py")) and (native / "generation_config.json").exists()
    ours = AutoModelForCausalLM.from_pretrained(out / "model", trust_remote_code=True).eval()
    theirs = AutoModelForCausalLM.from_pretrained(native, trust_remote_code=False).eval()
    ids = torch.randint(2, ours.config.vocab_size, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, ours(ids).logits, rtol=0, atol=1e-4)


def test_native_export_of_an_option_no_native_class_has_fails_before_anything_is_written(tmp_path, pg19_tiny):
    out = tmp_path / "capped"
    proc = subprocess.run([sys.executable, "-m", "training.train",
                           *tiny_args(out, pg19_tiny, "--native_export", "true",
                                      "--model_overrides", "{final_logit_softcapping: 30.0}")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "final_logit_softcapping" in proc.stderr.strip().splitlines()[-1]
    assert not out.exists()
