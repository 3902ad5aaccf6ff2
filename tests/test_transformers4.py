"""Exports also serve users on the last transformers 4.x release (4.57.6): load, generate, pipeline, stream.

`scripts/install_test_deps.sh` builds `.venv-transformers4` (system packages + transformers 4.57.6).
"""

from __future__ import annotations

import json

import pytest
from test_remote_code import STRANGER, any_export, modern_tiny_export  # noqa: F401 (fixtures)

from conftest import REPO_ROOT, run_isolated

PYTHON4 = REPO_ROOT / ".venv-transformers4" / "bin" / "python"


def test_export_loads_and_generates_on_transformers_4(any_export, tmp_path):
    tiny_export = any_export
    if not PYTHON4.exists():
        pytest.fail(f"{PYTHON4} missing: run `bash scripts/install_test_deps.sh` first")
    result = run_isolated(f"FOLDER = {str(tiny_export)!r}\n" + STRANGER, cwd=tmp_path, python=str(PYTHON4))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.rsplit("RESULT ", 1)[1])
    assert report["transformers"] == "4.57.6"

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_export)
    tokenizer = AutoTokenizer.from_pretrained(tiny_export)
    inputs = tokenizer("It was a dark and stormy night", return_tensors="pt")
    ours = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert report["greedy"] == ours[0].tolist(), "transformers 4.x generates other tokens than 5.x"
