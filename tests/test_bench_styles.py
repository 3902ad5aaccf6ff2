"""bench/bench_styles.py end to end on a tiny export and two generated authors: one adapter each by the product's
command with fine-tuning's defaults, the matrix (the base row and each adapter on each author's validation book),
the goals judged from it, samples, the heatmap and the report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.synthetic_pg19 import write_txt_books

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # two fine-tuning subprocesses and twelve evaluations (~40 s)


def test_the_styles_bench_trains_one_adapter_per_author_and_fills_the_matrix(tmp_path, tiny_export, pg19_tiny):
    authors = tmp_path / "authors"
    for name in ("austen", "bronte"):
        write_txt_books(authors / name, length=8_000, layout={"train": 1, "validation": 1})
    out = tmp_path / "bench"
    command = [sys.executable, str(REPO / "bench" / "bench_styles.py"), "--model", str(tiny_export),
               "--authors-dir", str(authors), "--general", str(pg19_tiny), "--max-steps", "2",
               "--mixed-precision", "no", "--max-eval-blocks", "4", "--seeds", "0", "1", "--max-new-tokens", "8",
               "--output", str(out), "--plot", str(tmp_path / "styles.png"), "--report", str(tmp_path / "styles.md")]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    rows, verdict = lines[:-1], lines[-1]
    assert [r["adapter"] for r in rows] == ["austen", "bronte"]
    for row in rows:
        assert row["steps"] == 2 and row["budget"] == "2 steps"
        assert set(row["row"]) == {"austen", "bronte"} and all(v > 0 for v in row["row"].values())
        # the training run's own before/after on its author equals the matrix's base/diagonal in kind: both finite
        assert row["own_before"] > 0 and row["own_after"] > 0
        assert row["own_down_5pct"] == (row["own_change"] <= -0.05)
    assert set(verdict["goals"]) == {"austen", "bronte"} and isinstance(verdict["all_met"], bool)
    report = (tmp_path / "styles.md").read_text()
    assert "| base |" in report and "**" in report  # the diagonal is marked
    assert report.count("seed 0") == 3 and report.count("seed 1") == 3  # base and two adapters
    assert (tmp_path / "styles.png").stat().st_size > 10_000
    for name in ("austen", "bronte"):
        adapter = out / name / "model"
        assert (adapter / "adapter_config.json").is_file() and not (adapter / "config.json").exists()
        assert "has no 'test' split: the test evaluation is skipped" in (out / f"{name}.log").read_text()

    skipped = subprocess.run([*command[:command.index("--output")], "--output", str(out), "--skip-training"],
                             cwd=REPO, capture_output=True, text=True, check=False)
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    again = [json.loads(line) for line in skipped.stdout.splitlines()][:-1]
    assert [r["row"] for r in again] == [r["row"] for r in rows]  # the matrix is the adapters', not the run's
