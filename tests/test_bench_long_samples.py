"""bench/bench_long_samples.py: the per-quarter measures on hand-made token sequences (a loop in one quarter, an
earlier quarter written again, a word cut by a quarter boundary), where a loop starts, and the bench end to end on a
tiny export through the engine, past its 128-token context."""

from __future__ import annotations

import importlib.util
import itertools
import json
import string
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_long_samples", REPO / "bench" / "bench_long_samples.py")
bl = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bl)

# token i is " <word i>": distinct words of letters only (the measures split words at digits)
WORDS = ["".join(p) for p in itertools.product(string.ascii_lowercase, repeat=2)]


def decode(ids):
    # -1: a piece that ends the word before it; -2: a full stop
    return "".join(" " + WORDS[i] if i >= 0 else {-1: "xy", -2: "."}[i] for i in ids)


def continuation(ids, quarter):
    return {"index": 0, "ids": ids, "text": decode(ids), "offsets": bl.quarter_offsets(decode, ids, quarter)}


def test_quarters_are_measured_on_their_own_words():
    q1, q2 = list(range(8)), list(range(8, 16))
    q3 = [16, 17, 18, 19] * 2  # a loop inside the third quarter
    q4 = list(range(7)) + [-2]  # the first quarter written again (seven of its words), a full stop
    c = continuation(q1 + q2 + q3 + q4, 8)
    assert c["offsets"] == [0, 24, 48, 72]
    parts = bl.split_words(c["text"], c["offsets"])
    assert [len(p) for p in parts] == [8, 8, 8, 7]
    assert parts[2] == [WORDS[i] for i in q3]

    quarters = bl.measure_quarters([c], set(WORDS))
    # within a quarter: only the third repeats (abcd bcda cdab dabc abcd: one 4-gram of five), span 4
    assert [q["repeated_4gram_share"] for q in quarters] == [0.0, 0.0, pytest.approx(1 / 5), 0.0]
    assert [q["longest_repeated_span"] for q in quarters] == [0, 0, 4, 0]
    # against everything before: the third quarter's loop (1 of its 8 4-grams), the fourth quarter's every 4-gram
    assert [q["repeats_earlier_4gram_share"] for q in quarters] == [0.0, 0.0, pytest.approx(1 / 8), 1.0]
    assert [q["words"] for q in quarters] == [8, 8, 8, 7]
    assert quarters[2]["distinct_2"] == pytest.approx(4 / 7)

    whole = bl.measure_all([c], set(WORDS))
    assert whole["longest_repeated_span"] == 7  # the first quarter, again in the fourth
    assert len(whole["quarters"]) == 4


def test_a_word_belongs_to_the_quarter_it_starts_in_and_a_cut_last_word_is_left_out():
    ids = [0, 1, 2, -1, 3, 4, 5, -1]  # " aa ab acxy ad ae afxy": "acxy" starts in the first quarter of 3 tokens
    c = continuation(ids, 3)
    assert c["offsets"] == [0, 9, 17]
    assert bl.split_words(c["text"], c["offsets"]) == [["aa", "ab", "acxy"], ["ad", "ae"], []]  # "afxy" may be cut
    quarters = bl.measure_quarters([c], {"aa", "ab", "ad", "ae"})
    assert [q["non_word_rate"] for q in quarters] == [pytest.approx(1 / 3), 0.0, 0.0]


def test_the_rule_needs_every_quarter_within_the_real_range():
    def figures(rep4, span, quarters):
        return {"repeated_4gram_share": rep4, "repeated_4gram_share_se": 0.001, "longest_repeated_span": span,
                "longest_repeated_span_se": 0.1, "quarters": quarters}

    real_q = figures(0.002, 2.0, None)
    real = figures(0.004, 3.0, [real_q] * 4)

    def result(name, non_words, last_quarter_span):
        r = figures(0.004, 3.0, [real_q] * 3 + [figures(0.002, last_quarter_span, None)])
        return {**r, "name": name, "do_sample": True, "non_word_rate": non_words, "distinct_2": 0.9}

    drifting, steady = result("drifting", 0.001, 9.0), result("steady", 0.004, 2.1)
    assert not bl.holds(drifting, real, 2.0) and bl.holds(steady, real, 2.0)  # whole figures alike, the last differs
    assert bl.choose([drifting, steady], real, 2.0)["name"] == "steady"
    assert bl.choose([drifting], real, 2.0) is None


def test_where_a_loop_starts():
    ids = list(range(20)) + [30, 31, 32, 33, 34, 35] * 3 + [-2]  # a six-word loop from token 20, again from 26
    c = continuation(ids, 10)
    length, first, second = bl.longest_repeat(bl.located_words(c["text"])[0])
    assert (length, first, second) == (12, 20, 26)
    loop = bl.loop_report(c, decode, real_span_max=3)
    assert loop["repeat_token"] == 26 and loop["span_words"] == 12
    assert bl.loop_report(c, decode, real_span_max=12) is None  # no longer than the real text's


def test_the_settings_are_the_exports_defaults_then_the_grid():
    defaults = {"temperature": 0.5, "top_k": 50, "top_p": 0.9, "repetition_penalty": 1.2}
    args = SimpleNamespace(temperatures=[0.5, 0.7], top_ps=None, repetition_penaltys=[1.2, 1.1],
                           frequency_penaltys=None)
    settings = bl.settings_grid(defaults, args)
    assert [(s["name"], s["temperature"], s["repetition_penalty"]) for s in settings] == [
        ("defaults", 0.5, 1.2), ("grid", 0.5, 1.1), ("grid", 0.7, 1.2), ("grid", 0.7, 1.1)]
    assert all(s["top_k"] == 50 and s["top_p"] == 0.9 for s in settings)
    assert bl.request_parameters(settings[0], 100, 7) == {
        "max_new_tokens": 100, "min_new_tokens": 100, "do_sample": True, "temperature": 0.5, "top_k": 50,
        "top_p": 0.9, "repetition_penalty": 1.2, "seed": 7}


def test_the_bench_runs_through_the_engine_past_the_window(tiny_export, pg19_tiny, tmp_path, capsys):
    plot = tmp_path / "long.png"
    results, real, _chosen = bl.main(["--model", str(tiny_export), "--dataset", str(pg19_tiny), "--openings", "2",
                                      "--new-tokens", "120", "--quarter-tokens", "30", "--plot", str(plot)])
    out = capsys.readouterr().out
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    header = lines[0]
    assert header["bench"] == "long_samples" and header["context"] == 128 and header["openings"] == 2
    defaults = json.loads((tiny_export / "generation_config.json").read_text())
    assert [r["name"] for r in results] == ["defaults"]
    assert all(results[0][k] == defaults[k] for k in ("temperature", "top_k", "top_p", "repetition_penalty"))
    for r in [real, *results]:
        assert len(r["quarters"]) == 4
        # the quarters share out the whole continuation's words (a word cut by the end is left out of both)
        assert sum(q["words"] for q in r["quarters"]) == r["words"]
    assert results[0]["shifts"] >= 1  # a 20-word opening and 120 new tokens go past the 128-token context
    assert len(results[0]["examples"]) == 2 and all(e["text"] for e in results[0]["examples"])
    assert "| *real text* |" in out and "chosen:" in out and plot.stat().st_size > 0
    replayed = bl.main(["--results", str(_saved(tmp_path, out))])
    assert replayed[1] == real and replayed[0][0]["non_word_rate"] == results[0]["non_word_rate"]


def _saved(tmp_path, out):
    saved = tmp_path / "run.txt"
    saved.write_text(out)
    return saved


def test_the_bench_refuses_a_missing_dataset_before_loading_anything(tiny_export, tmp_path, capsys):
    with pytest.raises(SystemExit):
        bl.main(["--model", str(tiny_export), "--dataset", str(tmp_path / "nowhere")])
    assert "no dataset at" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bl.main(["--model", str(tmp_path), "--dataset", str(tmp_path)])
    assert "no exported model" in capsys.readouterr().err
