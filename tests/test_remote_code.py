"""An exported folder works for a stranger: a fresh Python in which `victorian_gpt` cannot be imported."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest

from helpers.isolation import REPO_ROOT, run_isolated
from helpers.stranger import STRANGER
from victorian_gpt.modeling_victorian_gpt import GENERATION_DEFAULTS


@pytest.fixture(params=["gpt2", "modern"])
def any_export(request):
    """The GPT-2 recipe's export and the modern recipe's: both must serve strangers alike."""
    return request.getfixturevalue("tiny_export" if request.param == "gpt2" else "modern_tiny_export")


def test_exported_folder_loads_and_generates_without_our_package(any_export, tmp_path):
    """The stranger script on the installed transformers (tests/test_transformers_releases.py runs it on the others)."""
    tiny_export = any_export
    result = run_isolated(f"FOLDER = {str(tiny_export)!r}\n" + STRANGER, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # (AutoTokenizer without trust_remote_code asks on stdin whether to run the config's code; with no terminal
    # the answer is no and it falls back to the plain config, so its prompt text may precede our line.)
    report = json.loads(result.stdout.rsplit("RESULT ", 1)[1])
    # the same greedy tokens as our in-process model
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_export)
    tokenizer = AutoTokenizer.from_pretrained(tiny_export)
    inputs = tokenizer("It was a dark and stormy night", return_tensors="pt")
    ours = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert report["greedy"] == ours[0].tolist()
    window = model.config.n_positions  # and past the context, where the context shifts: the same tokens
    past = model.generate(**inputs, max_new_tokens=window + 24, min_new_tokens=window + 24, do_sample=False)
    assert report["past_window"] == past[0].tolist()
    assert report["streamed_pieces"] >= 2
    assert report["switched"], "set_attn_implementation is missing"


def test_remote_code_files_import_only_torch_transformers_and_each_other():
    allowed = {"torch", "transformers"} | set(sys.stdlib_module_names)  # what every Python that runs transformers has
    for name in ("configuration_victorian_gpt.py", "modeling_victorian_gpt.py"):
        tree = ast.parse((REPO_ROOT / "victorian_gpt" / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: only the sibling configuration module
                    assert node.module == "configuration_victorian_gpt", f"{name}: relative import {node.module}"
                    continue
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert roots <= allowed, f"{name} imports {roots - allowed}: breaks trust_remote_code on the Hub"


def test_export_folder_contents(tiny_export):
    files = {p.name for p in Path(tiny_export).iterdir()}
    assert {"config.json", "model.safetensors", "configuration_victorian_gpt.py", "modeling_victorian_gpt.py",
            "tokenizer.json", "tokenizer_config.json", "generation_config.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    generation = json.loads((Path(tiny_export) / "generation_config.json").read_text())
    assert {name: generation[name] for name in GENERATION_DEFAULTS} == GENERATION_DEFAULTS
    assert (generation["bos_token_id"], generation["eos_token_id"], generation["pad_token_id"]) == (0, 0, 1)
    tokenizer_config = json.loads((Path(tiny_export) / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"  # loadable by transformers 4.x too
    assert tokenizer_config["model_max_length"] == 128  # clipped to the model's context


def test_export_has_ordinary_permissions(tiny_export):
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(Path(tiny_export).stat().st_mode) == 0o777 & ~umask
    for path in Path(tiny_export).iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path.name
