"""Publishing a style set to the Hub (the loopback Hub of tests/fakes/): each LoRA adapter to its own repo with its
card (`base_model`, `base_model_relation: adapter`, `library_name: peft`, its before/after bits per byte) and an
adapter_config.json naming the base on the Hub, then the Space over the base with `--lora-adapters` naming those
repos (the Space variable LORA_ADAPTERS). Bad input is refused in one line before anything is written.
"""

from __future__ import annotations

import json
import shutil

import pytest
from fakes.hub import running_hub
from helpers.exports import complete_export_for_hub
from helpers.lora import make_lora_adapter

pytestmark = pytest.mark.slow  # an HTTP server (the loopback Hub), adapters written and pushed

TOKEN = "hf_loopback_styles_token"
BASE = "victoria/tiny-victorian-gpt"
BEFORE = {"validation": {"bits_per_byte": 1.6000}, "general": {"bits_per_byte": 1.7000}}
AFTER = {"validation": {"bits_per_byte": 1.4400}, "general": {"bits_per_byte": 1.7085}}


@pytest.fixture(scope="module")
def hub():
    with running_hub(TOKEN) as server:
        yield server


@pytest.fixture
def online(hub, monkeypatch):
    """push and push-space in this process, at the loopback Hub (conftest forces the Hub offline)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)  # weights take the LFS batch API
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return hub


def adapter_export(tiny_export, folder, seed: int):
    """A LoRA adapter as training exports it (`lora_export: adapter`): peft's files and a training_summary.json whose
    fine-tuning section names the local base folder it was trained from, with its before/after figures."""
    make_lora_adapter(tiny_export, folder, seed=seed)
    summary = {"model_config": json.loads((tiny_export / "config.json").read_text()), "dataset": "/books/dickens-txt",
               "eval": {"validation": {"bits_per_byte": 1.44}}, "books_seen": 4, "tokens_seen": 147456, "steps": 18,
               "finetuning": {"base_model": str(tiny_export), "revision": None, "finetuning_type": "lora",
                              "base_model_relation": "adapter",
                              "lora": {"r": 4, "alpha": 8.0, "dropout": 0.0, "export": "adapter",
                                       "target_modules": ["c_attn", "c_fc", "c_proj"]},
                              "trainable_parameters": 16384, "total_parameters": 157440,
                              "dataset": "/books/dickens-txt", "general_dataset": "/data/pg19-sample",
                              "general_split": "test", "before": BEFORE, "after": AFTER}}
    (folder / "training_summary.json").write_text(json.dumps(summary))
    return folder


@pytest.fixture(scope="module")
def style_set(tiny_export, tmp_path_factory):
    folder = tmp_path_factory.mktemp("style-set")
    base = folder / "base"
    shutil.copytree(tiny_export, base)
    complete_export_for_hub(base)
    return base, {name: adapter_export(tiny_export, folder / name, seed) for seed, name in ((1, "dickens"),
                                                                                             (2, "hardy"))}


def test_a_style_set_is_published_adapters_first_then_the_space(online, style_set, tmp_path, capsys):
    from huggingface_hub import ModelCard, SpaceCard

    from hub.publish import push_main, push_space_main

    hub, (base, adapters) = online, style_set
    assert push_main([str(base), "--repo-id", BASE]) == 0
    capsys.readouterr()

    # an adapter trained from a local folder cannot name its base on the Hub by itself: refused before any request
    before = len(hub.requests)
    assert push_main([str(adapters["dickens"]), "--repo-id", "victoria/dickens-lora"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a LoRA adapter" in err and "--base-model" in err
    assert len(hub.requests) == before

    for name, folder in adapters.items():
        local = (folder / "adapter_config.json").read_text()
        assert push_main([str(folder), "--repo-id", f"victoria/{name}-lora", "--base-model", BASE]) == 0
        (commit,) = hub.api_commits("model", f"victoria/{name}-lora")
        assert set(commit.files) >= {"README.md", "adapter_config.json", "adapter_model.safetensors",
                                     "tokenizer.json", "training_summary.json"}
        card = ModelCard(commit.files["README.md"].decode())
        assert (card.data.base_model, card.data.base_model_relation, card.data.library_name) == (
            BASE, "adapter", "peft")
        assert "| held-out books (validation) | 1.6000 | 1.4400 | -10.0 % |" in card.text
        assert f"victorian-gpt serve {BASE} --trust-remote-code --lora-adapters {name}-lora=victoria/{name}-lora@main" \
            in card.text  # served as a style
        # the base by its Hub id, not the folder training read it from; nothing else changed, the folder untouched
        assert json.loads(commit.files["adapter_config.json"]) == dict(json.loads(local), base_model_name_or_path=BASE)
        assert json.loads(local)["base_model_name_or_path"] != BASE and (folder / "adapter_config.json").read_text() == local
        assert commit.files["adapter_model.safetensors"] == (folder / "adapter_model.safetensors").read_bytes()
    hardy_commit = hub.repos[("model", "victoria/hardy-lora")].branches["main"]

    space_dir = tmp_path / "space"
    space_dir.mkdir()
    (space_dir / "app.py").write_text("import gradio\n")
    (space_dir / "requirements.txt").write_text("torch\n")
    styles = f"dickens=victoria/dickens-lora,hardy=victoria/hardy-lora@{hardy_commit}"
    assert push_space_main(["--repo-id", "victoria/styles-demo", "--model-id", BASE, "--space-dir", str(space_dir),
                            "--lora-adapters", styles]) == 0
    space = hub.repos[("space", "victoria/styles-demo")]
    assert space.variables == {"MODEL_ID": BASE, "LORA_ADAPTERS": styles}
    (commit,) = hub.api_commits("space", "victoria/styles-demo")
    assert SpaceCard(commit.files["README.md"].decode()).data.models == [BASE, "victoria/dickens-lora",
                                                                          "victoria/hardy-lora"]


@pytest.mark.parametrize("styles, message", [
    ("dickens", "expected NAME=USER/REPO[@REVISION], got 'dickens'"),
    ("none=victoria/dickens-lora", "bad style name 'none'"),
    ("dickens=victoria/a,dickens=victoria/b", "style 'dickens' is given twice"),
    ("dickens=victoria/never-pushed", "style dickens: victoria/never-pushed not found on the Hub"),
    ("dickens=victoria/dickens-lora@0123456789abcdef0123456789abcdef01234567", "has no revision"),
    (f"plain={BASE}", f"style plain: {BASE} is not a LoRA adapter"),
    ("other=victoria/other-lora", "names victoria/another-model as its base, not --model-id"),
])
def test_push_space_refuses_styles_that_are_not_adapters_of_the_model(online, style_set, tmp_path, styles,
                                                                      message, capsys):
    from hub.publish import push_main, push_space_main

    hub, (base, adapters) = online, style_set
    for repo, folder, base_model in ((BASE, base, None), ("victoria/dickens-lora", adapters["dickens"], BASE),
                                     ("victoria/other-lora", adapters["hardy"], "victoria/another-model")):
        if ("model", repo) not in hub.repos:
            assert push_main([str(folder), "--repo-id", repo, *(["--base-model", base_model] if base_model
                                                                  else [])]) == 0
    space_dir = tmp_path / "space"
    space_dir.mkdir()
    (space_dir / "app.py").write_text("import gradio\n")
    (space_dir / "requirements.txt").write_text("torch\n")
    capsys.readouterr()
    assert push_space_main(["--repo-id", "victoria/refused-demo", "--model-id", BASE, "--space-dir", str(space_dir),
                            "--lora-adapters", styles]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert ("space", "victoria/refused-demo") not in hub.repos
