"""`victorian-gpt generate`: one prompt (plain or streamed), a prompts file (JSON Lines), the interactive loop."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import pytest

from serving.generate import main

PROMPT = "It was a dark and stormy night"


@pytest.fixture(scope="module")
def reference(tiny_export):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_export, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_export, trust_remote_code=True).eval()
    return model, tokenizer


def generate(reference, prompt, **kwargs) -> str:
    model, tokenizer = reference
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, **kwargs)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_prompt_greedy_and_streamed(tiny_export, reference, capsys):
    expected = generate(reference, PROMPT, max_new_tokens=25, do_sample=False, top_k=None, top_p=None,
                        temperature=None)  # repetition_penalty: the model's default, as the CLI's
    assert main([str(tiny_export), "--prompt", PROMPT, "--dtype", "float32", "--max-new-tokens", "25", "--greedy"]) == 0
    assert capsys.readouterr().out == expected + "\n"
    assert main([str(tiny_export), "--prompt", PROMPT, "--dtype", "float32", "--max-new-tokens", "25", "--greedy",
                 "--stream"]) == 0
    assert capsys.readouterr().out.replace("\ufffd", "") == expected.replace("\ufffd", "") + "\n"


def test_sampling_uses_the_models_defaults_and_seed(tiny_export, reference, capsys):
    import torch

    # With a seed, the CLI samples exactly as generate(do_sample=True) does with that seed and the model's
    # generation_config (temperature, top-k, top-p, repetition penalty all taken from it).
    torch.manual_seed(11)
    expected = generate(reference, PROMPT, max_new_tokens=20)
    assert main([str(tiny_export), "--prompt", PROMPT, "--dtype", "float32", "--max-new-tokens", "20",
                 "--seed", "11"]) == 0
    assert capsys.readouterr().out == expected + "\n"
    torch.manual_seed(11)
    hotter = generate(reference, PROMPT, max_new_tokens=20, temperature=2.0, top_k=5)
    assert main([str(tiny_export), "--prompt", PROMPT, "--dtype", "float32", "--max-new-tokens", "20", "--seed", "11",
                 "--temperature", "2.0", "--top-k", "5"]) == 0
    assert capsys.readouterr().out == hotter + "\n"


def test_prompts_file_writes_json_lines(tiny_export, reference, tmp_path, capsys):
    prompts = ["It was a dark and stormy night", "", "Mr. Pickwick rose early", "The fog lay thick"]
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(prompts) + "\n")
    out = tmp_path / "out.jsonl"
    assert main([str(tiny_export), "--prompts-file", str(path), "--dtype", "float32", "--max-new-tokens", "8",
                 "--greedy", "--output", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in lines] == [p for p in prompts if p]  # blank lines skipped
    for record in lines:
        assert record["generated_text"] == generate(reference, record["prompt"], max_new_tokens=8, do_sample=False,
                                                    top_k=None, top_p=None, temperature=None)
        assert record["finish_reason"] in ("length", "eos_token") and record["generated_tokens"] <= 8
    # to stdout when no --output
    assert main([str(tiny_export), "--prompts-file", str(path), "--dtype", "float32", "--max-new-tokens", "4",
                 "--seed", "3"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_prompts_file_checks_every_line_first_and_reads_a_long_opening_from_its_end(tiny_export, tmp_path, capsys):
    path = tmp_path / "prompts.txt"
    path.write_text("A short one\n" + "word " * 200 + "\n")
    out = tmp_path / "out.jsonl"
    assert main([str(tiny_export), "--prompts-file", str(path), "--output", str(out), "--max-new-tokens", "8",
                 "--temperature", "-1"]) == 2  # a bad setting: one line, nothing written
    assert "temperature" in capsys.readouterr().err and not out.exists()
    # an opening longer than the model's context (128 tokens here) is not an error: it goes on from its end
    assert main([str(tiny_export), "--prompts-file", str(path), "--output", str(out), "--max-new-tokens", "8"]) == 0
    err = capsys.readouterr().err
    assert re.search(rf"{re.escape(str(path))}, prompt 2 is \d+ tokens, more than the model reads at once; it goes "
                     "on from its last 127$", err, re.M), err
    assert [len(json.loads(line)["generated_text"]) > 0 for line in out.read_text().splitlines()] == [True, True]


def test_interactive_changes_settings_in_place_and_quits(tiny_export, monkeypatch, capsys):
    session = "\n".join([
        PROMPT,
        "/temperature 0.7",
        "/length 6",
        "/temperature -1",  # refused, the previous value stays
        "The second opening",
        "/settings",
        "/quit",
        "never generated",
    ]) + "\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(session))
    assert main([str(tiny_export), "--interactive", "--dtype", "float32", "--max-new-tokens", "9", "--seed", "5"]) == 0
    out = capsys.readouterr().out
    assert "[9 tokens, length]" in out or "eos_token]" in out
    assert "temperature=0.7" in out and "max_new_tokens=6" in out
    assert "error: temperature '-1': `temperature` must be strictly positive" in out
    assert "[6 tokens, length]" in out or out.count("eos_token]") >= 1
    assert out.rstrip().endswith(">>>")  # left at /quit: the line after it was never read as a prompt
    assert out.count("tokens, ") == 2


def test_bad_arguments_are_clear(tiny_export, tmp_path, capsys):
    assert main([str(tiny_export), "--prompt", PROMPT, "--temperature", "0"]) == 2
    assert "`temperature` must be strictly positive" in capsys.readouterr().err
    assert main([str(tiny_export), "--prompt", PROMPT, "--context-keep", "100"]) == 2  # over half the 128-token window
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("victorian-gpt generate:")]
    assert said == ["victorian-gpt generate: context keep (100) must be at most half the model's context (128 tokens): "
                    "the rest of the window is where the text goes on"]  # one line, and not a loading failure
    assert main([str(tiny_export), "--prompt", PROMPT, "--context-discard", "1.5"]) == 2
    assert "context discard must be a fraction between 0 and 1" in capsys.readouterr().err
    assert main([str(tmp_path / "no-model"), "--prompt", PROMPT, "--batch-size", "0"]) == 2  # before any loading
    assert capsys.readouterr().err.strip() == "victorian-gpt generate: --batch-size must be at least 1"
    assert main([str(tiny_export), "--prompts-file", str(tmp_path / "missing.txt")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main([str(tmp_path / "no-model"), "--prompt", PROMPT]) == 2
    assert "cannot load" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one of --prompt / --prompts-file / --interactive is required
        main([str(tiny_export)])


def test_console_script(tiny_export, capsys):
    args = ["generate", str(tiny_export), "--prompt", PROMPT, "--max-new-tokens", "5", "--seed", "1"]
    result = subprocess.run([sys.executable, "-m", "victorian_gpt.cli", *args], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert main(args[1:]) == 0
    assert result.stdout == capsys.readouterr().out  # the same seed gives the same text in another process
