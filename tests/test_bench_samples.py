"""bench/bench_samples.py: the sample measures on hand-made text, the openings it picks, that its batched decoding of
many settings samples what each setting's own generate() call would, and the bench end to end on a tiny export."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_samples", REPO / "bench" / "bench_samples.py")
bs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bs)

WORD_LIST = {"the", "old", "man", "said", "and", "chapter", "x", "of", "cat", "sat", "on", "mr", "brown", "s", "dog"}


def test_words_are_runs_of_letters():
    assert bs.words("Mr. Brown's dog—it ran_away 1887, naïve") == ["Mr", "Brown", "s", "dog", "it", "ran", "away",
                                                                     "naïve"]
    assert bs.whole_words("the old ma") == ["the", "old"]  # a continuation cut inside its last word
    assert bs.whole_words("the old man.") == ["the", "old", "man"]


def test_non_word_rate_counts_words_missing_from_the_list():
    tokens = bs.words("The cat sat on the glork, said Mr. Sofaly")
    assert bs.non_words(tokens, WORD_LIST) == ["glork", "Sofaly"]
    assert bs.non_word_rate(tokens, WORD_LIST) == pytest.approx(2 / 9)
    assert bs.build_word_list(["The Cat", "sat ON"]) == {"the", "cat", "sat", "on"}


def test_garble_is_all_capitals_non_words():
    tokens = bs.words("CHAPTER X--IFANET OF MLRTPATOMBERESS / the OLD man")
    assert [w for w in tokens if bs.is_garble(w, WORD_LIST)] == ["IFANET", "MLRTPATOMBERESS"]
    assert bs.garble_rate(tokens, WORD_LIST) == pytest.approx(2 / 8)
    assert not bs.is_garble("glork", WORD_LIST)  # a non-word, but not shouted
    assert not bs.is_garble("Q", WORD_LIST)  # one capital is an initial


def test_repeated_4grams_and_the_longest_repeated_span():
    looping = "a b c d a b c d".split()
    # 4-grams: abcd bcda cdab dabc abcd: one of five repeats an earlier one
    assert bs.repeated_ngram_share(looping, 4) == pytest.approx(1 / 5)
    assert bs.longest_repeated_span(looping) == 4
    assert bs.repeated_ngram_share("The old man and the OLD MAN said".split(), 4) == 0.0
    assert bs.longest_repeated_span("The old man and the OLD MAN said".split()) == 3  # case-blind
    assert bs.longest_repeated_span("a a a a".split()) == 3  # overlapping occurrences count
    assert bs.longest_repeated_span("one two three".split()) == 0
    assert bs.distinct_n("a b a b".split(), 2) == pytest.approx(2 / 3)
    assert bs.distinct_n("a b c".split(), 2) == 1.0


def test_the_choice_is_the_fewest_non_words_within_the_real_repetition():
    real = {"repeated_4gram_share": 0.01, "repeated_4gram_share_se": 0.005, "longest_repeated_span": 3.0,
            "longest_repeated_span_se": 0.2}

    def result(name, non_words, rep4, span, sample=True):
        return {"name": name, "do_sample": sample, "non_word_rate": non_words, "distinct_2": 0.9,
                "repeated_4gram_share": rep4, "repeated_4gram_share_se": 0.005, "longest_repeated_span": span,
                "longest_repeated_span_se": 0.2}

    results = [result("greedy", 0.001, 0.5, 40.0, sample=False), result("cold", 0.010, 0.08, 9.0),
               result("cool", 0.016, 0.02, 3.3), result("warm", 0.025, 0.005, 2.5)]
    assert not bs.within_real_range(results[1], real) and bs.within_real_range(results[2], real)
    assert bs.choose(results, real)["name"] == "cool"
    assert bs.choose(results[:2], real) is None  # greedy is never chosen; "cold" repeats too much


def test_openings_are_narrative_paragraphs():
    narrative = ("It was late in the autumn when Mr. Brown came at last to the old house by the river, and found "
                 "the door shut against him and the windows dark; he stood a long while in the rain, wondering what "
                 "had become of them all.")
    book = ("Produced by a volunteer\n\n\n\nTHE OLD HOUSE\n\nCONTENTS\n\n  I. The River      1\n II. The Door     9\n\n"
            + "\n\nCHAPTER I.\n\nTHE RIVER\n\n" + narrative + "\n\n" + narrative.replace("Brown", "Grey")
            + "\n\n    And the river ran, and the river ran,\n    And the old man sang of the sea,\n"
              "    And the wind and the rain and the river ran\n    For ever and ever with me.\n")
    openings = bs.find_openings([{"short_book_title": "b", "text": book}], count=2, opening_words=20)
    assert [o["opening"] for o in openings] == [
        "It was late in the autumn when Mr. Brown came at last to the old house by the river, and",
        "It was late in the autumn when Mr. Grey came at last to the old house by the river, and"]
    assert openings[0]["rest"].startswith(" found the door shut against him")
    assert not bs.is_narrative("CHAPTER I.", 5) and not bs.is_narrative(" I. The River      1\n II. The Door  9", 2)


def test_the_space_examples_are_read_without_gradio():
    examples = bs.space_examples()
    assert len(examples) >= 3 and examples[0].startswith("It was a dark and stormy night")


def _prompts(tokenizer):
    texts = ["It was a dark and stormy night; the rain fell", "The fog lay thick upon", "My dear Mrs. Fairfax"]
    return [tokenizer(t)["input_ids"] for t in texts]


def test_many_settings_in_one_call_sample_what_each_setting_alone_would(tiny_export):
    """PerRowSettings: a setting decoded alone through it draws exactly the tokens of generate() with that setting
    (same seed, same batch); greedy rows are generate()'s greedy rows, also when decoded beside sampled settings."""
    import torch

    model, tokenizer = bs.load(str(tiny_export), None)
    prompts = _prompts(tokenizer)
    setting = {"do_sample": True, "temperature": 0.7, "top_k": 50, "top_p": 0.9, "repetition_penalty": 1.2,
               "min_p": None}
    ours = bs.continue_settings(model, tokenizer, prompts, [setting], 12, seed=7, settings_per_call=1)[0]
    batch = tokenizer.pad({"input_ids": prompts}, return_tensors="pt")
    torch.manual_seed(7)
    reference = model.generate(**batch, do_sample=True, temperature=0.7, top_k=50, top_p=0.9, repetition_penalty=1.2,
                               max_new_tokens=12, min_new_tokens=12, pad_token_id=tokenizer.pad_token_id)
    assert ours == tokenizer.batch_decode(reference[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)

    greedy = {"do_sample": False, "temperature": None, "top_k": None, "top_p": None, "repetition_penalty": 1.0,
              "min_p": None}
    together = bs.continue_settings(model, tokenizer, prompts, [setting, greedy], 12, seed=7, settings_per_call=2)
    reference = model.generate(**batch, do_sample=False, repetition_penalty=1.0, max_new_tokens=12, min_new_tokens=12,
                               pad_token_id=tokenizer.pad_token_id)
    assert together[1] == tokenizer.batch_decode(reference[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert all(len(tokenizer(t)["input_ids"]) >= 10 for t in together[0])  # full-length rows, EOS suppressed


def test_the_bench_runs_end_to_end_and_chooses(tiny_export, pg19_tiny, tmp_path, capsys):
    plot = tmp_path / "samples.png"
    results, real, chosen = bs.main(["--model", str(tiny_export), "--dataset", str(pg19_tiny), "--num-openings", "4",
                                     "--new-tokens", "16", "--temperatures", "0.7", "1.0", "--top-ps", "0.95", "1.0",
                                     "--repetition-penalties", "1.0", "1.2", "--min-ps", "0", "0.1",
                                     "--settings-per-call", "8", "--plot", str(plot)])
    out = capsys.readouterr().out
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert lines[0]["bench"] == "samples" and lines[0]["openings"] == 4 and lines[0]["real"]["words"] > 20
    # greedy + 2 temperatures x (2 top-p x 2 penalties + min-p 0.1 with top-p 1 x 2 penalties)
    assert len(lines) == 1 + 1 + 2 * (4 + 2) == 1 + len(results)
    assert {r["min_p"] for r in results if r["do_sample"] and r["top_p"] < 1} == {None}
    for r in results:
        assert 0 <= r["non_word_rate"] <= 1 and 0 <= r["repeated_4gram_share"] <= 1 and r["words"] > 0
    assert "| real text |" in out and "chosen: " in out
    assert chosen is None or chosen["do_sample"]
    assert plot.stat().st_size > 10_000
    saved = tmp_path / "run.txt"
    saved.write_text(out)  # --results: the same table and choice from a saved run, without the model
    replayed = bs.main(["--results", str(saved)])
    assert replayed[2] == chosen and "| real text |" in capsys.readouterr().out


def test_the_bench_refuses_a_missing_dataset_before_loading_anything(tiny_export, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bs.main(["--model", str(tiny_export), "--dataset", str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2 and "no dataset at" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bs.main(["--model", str(tmp_path), "--dataset", str(tmp_path)])
    assert "no exported model at" in capsys.readouterr().err


def test_samples_mode_prints_the_three_openings_seeded(tiny_export, capsys):
    bs.main(["--samples", "--model", str(tiny_export), "--sample-tokens", "8", "--temperature", "0.8", "--top-p", "0.9"])
    first = capsys.readouterr().out
    bs.main(["--samples", "--model", str(tiny_export), "--sample-tokens", "8", "--temperature", "0.8", "--top-p", "0.9"])
    assert capsys.readouterr().out == first  # torch.manual_seed before each
    assert first.count("```text") == 3 and '"temperature": 0.8' in first and '"top_p": 0.9' in first
    assert bs.space_examples()[2] in first
