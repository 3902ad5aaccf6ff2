"""An exported folder works for a stranger: a fresh Python in which `victorian_gpt` cannot be imported."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT, run_isolated

STRANGER = r"""
import json, sys, threading
import torch
from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer,
                          pipeline)
folder = sys.argv[1] if len(sys.argv) > 1 else FOLDER
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
assert type(config).__name__ == "VictorianGPTConfig", type(config)
assert type(config).__module__.startswith("transformers_modules"), type(config).__module__
base = AutoModel.from_pretrained(folder, trust_remote_code=True)
assert type(base).__name__ == "VictorianGPTModel"
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained(folder)
inputs = tokenizer("It was a dark and stormy night", return_tensors="pt")
greedy = model.generate(**inputs, max_new_tokens=12, do_sample=False)
eager = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, attn_implementation="eager")
assert eager.config._attn_implementation == "eager"
with torch.no_grad():  # the same model whichever attention implementation computes it
    assert torch.allclose(eager(greedy).logits, model(greedy).logits, rtol=0, atol=1e-5)
assert greedy.shape[1] == inputs["input_ids"].shape[1] + 12 or greedy[0, -1].item() == tokenizer.eos_token_id, (greedy.tolist(), inputs["input_ids"].tolist(), tokenizer.eos_token_id)
torch.manual_seed(0)
sampled = model.generate(**inputs, max_new_tokens=12)  # generation_config.json defaults: sampling
generator = pipeline("text-generation", model=folder, trust_remote_code=True)
piped = generator("Reader, I married him", max_new_tokens=8, do_sample=False)[0]["generated_text"]
assert piped.startswith("Reader, I married him")
streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, timeout=60)
thread = threading.Thread(target=model.generate, kwargs=dict(**inputs, streamer=streamer, max_new_tokens=12,
                                                             do_sample=False))
thread.start()
pieces = list(streamer)
thread.join()
streamed = "".join(pieces)
expected = tokenizer.decode(greedy[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
assert streamed == expected, (streamed, expected)
print("\nRESULT " + json.dumps({"greedy": greedy[0].tolist(), "streamed_pieces": len(pieces), "pipeline": piped,
                  "transformers": __import__("transformers").__version__}))
"""


@pytest.fixture(scope="session")
def modern_tiny_export(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """An export of the modern recipe (rotary positions, RMSNorm, SwiGLU, QK-norm, untied head, nn.Linear, no biases).
    Its head starts at zero, so it gets random values, as training would give it: constant logits test nothing."""
    import torch
    from transformers import AutoTokenizer

    from victorian_gpt import VictorianGPTConfig, VictorianGPTForCausalLM
    from victorian_gpt.export import save_model_folder

    torch.manual_seed(0)
    model = VictorianGPTForCausalLM(VictorianGPTConfig.from_preset("modern-tiny"))
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 0.05)
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    return save_model_folder(model, tokenizer, tmp_path_factory.mktemp("export") / "modern-tiny-victorian-gpt")


@pytest.fixture(params=["gpt2", "modern"])
def any_export(request):
    """The GPT-2 recipe's export and the modern recipe's: both must serve strangers alike."""
    return request.getfixturevalue("tiny_export" if request.param == "gpt2" else "modern_tiny_export")


def test_exported_folder_loads_and_generates_without_our_package(any_export, tmp_path):
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
    assert report["streamed_pieces"] >= 2


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
    assert generation["do_sample"] is True and generation["temperature"] == 1.3 and generation["top_k"] == 50
    assert generation["top_p"] == 0.95 and generation["repetition_penalty"] == 1.2
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
