"""Exports serve strangers on every transformers release the package claims, not only the installed one.

The stranger script (tests/helpers/stranger.py: left-padded batches against each prompt alone, eager and SDPA,
cached and uncached, `set_attn_implementation`, pipeline, streaming) runs in a Python that cannot import this package,
once per other release in tests/transformers_releases.txt: the last 4.x release and the oldest supported 5.x. (The
installed release runs it in tests/test_remote_code.py.) `scripts/install_test_deps.sh` builds their environments,
.venvs/transformers-X.Y.Z.
"""

from __future__ import annotations

import json

import pytest

from helpers.isolation import REPO_ROOT, run_isolated
from helpers.stranger import STRANGER

pytestmark = pytest.mark.slow  # each test runs another transformers release's venv

RELEASES = [
    line.strip()
    for line in (REPO_ROOT / "tests" / "transformers_releases.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]


@pytest.fixture(scope="module")
def in_process_greedy():
    """Greedy tokens of the installed release, in this process, per export folder: what every release must match."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    memo = {}

    def greedy(folder):
        if folder not in memo:
            model = AutoModelForCausalLM.from_pretrained(folder)
            tokenizer = AutoTokenizer.from_pretrained(folder)
            inputs = tokenizer("It was a dark and stormy night", return_tensors="pt")
            window = model.config.n_positions
            memo[folder] = (model.generate(**inputs, max_new_tokens=12, do_sample=False)[0].tolist(),
                            model.generate(**inputs, max_new_tokens=window + 24, min_new_tokens=window + 24,
                                           do_sample=False)[0].tolist())
        return memo[folder]

    return greedy


@pytest.mark.parametrize("release", RELEASES)
def test_exports_serve_a_stranger_on_other_transformers_releases(release, tiny_export, modern_tiny_export,
                                                                  in_process_greedy, tmp_path):
    """Both recipes' exports, one after the other in one process of that release (one interpreter start per release)."""
    python = REPO_ROOT / ".venvs" / f"transformers-{release}" / "bin" / "python"
    if not python.exists():
        pytest.fail(f"{python} missing: run `bash scripts/install_test_deps.sh` first")
    folders = [str(tiny_export), str(modern_tiny_export)]
    script = f"STRANGER = {STRANGER!r}\nfor FOLDER in {folders!r}:\n    exec(STRANGER, {{'FOLDER': FOLDER, '__name__': '__main__'}})\n"
    result = run_isolated(script, cwd=tmp_path, python=str(python))
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads(part.splitlines()[0]) for part in result.stdout.split("RESULT ")[1:]]
    assert len(reports) == 2, result.stdout[-3000:]
    for folder, report in zip(folders, reports):
        assert report["transformers"] == release
        assert report["switched"], "set_attn_implementation is missing"
        greedy, past_window = in_process_greedy(folder)
        assert report["greedy"] == greedy, f"transformers {release} generates other tokens ({folder})"
        assert report["past_window"] == past_window, f"transformers {release}: other tokens past the context ({folder})"
