"""Publishing to the Hub and downloading from it, over HTTP, the way users do.

The Hub here is `fakes.hub.LoopbackHub`, a Hub-protocol server on 127.0.0.1 (one per module) that records every
request and what each commit carried, so the tests can assert what `victorian-gpt push` actually sent. The CLI runs as
a subprocess with `HF_ENDPOINT` pointing at it; the downloads run in a stranger's process that cannot import
`victorian_gpt`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fakes.hub import running_hub
from helpers.exports import HUB_EXPORT_EVAL, complete_export_for_hub
from helpers.isolation import REPO_ROOT, run_isolated

# Every test here talks to the module's loopback Hub (an HTTP server) or runs the CLI in a subprocess.
pytestmark = pytest.mark.slow

TOKEN = "hf_loopback_test_token"
REPO_ID = "victoria/tiny-victorian-gpt"
EXPECTED_MODEL_FILES = {
    "README.md",
    "config.json",
    "configuration_victorian_gpt.py",
    "generation_config.json",
    "loss_curve.png",
    "model.safetensors",
    "modeling_victorian_gpt.py",
    "tokenizer.json",
    "tokenizer_config.json",
    "training_summary.json",
}


# --------------------------------------------------------------------------------------------------- the Hub
@pytest.fixture(scope="module")
def hub():
    with running_hub(TOKEN) as server:
        yield server


def run_cli(args: list[str], endpoint: str, token: str | None = TOKEN, console_script: bool = True):
    """`victorian-gpt ARGS` in a subprocess with HF_ENDPOINT at the loopback Hub (the test process itself is forced
    offline). `console_script=False` calls the same subcommand function without the dispatcher's heavy imports."""
    # HF_HUB_DISABLE_XET: large files take the LFS batch API (which LoopbackHub serves) instead of Xet storage.
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1"}
    env.pop("HF_TOKEN", None)
    if token is not None:
        env["HF_TOKEN"] = token
    if console_script:
        command = [sys.executable, "-m", "victorian_gpt.cli", *args]
    else:
        module, function = {"push": ("publish", "push_main"), "push-space": ("publish", "push_space_main")}[args[0]]
        code = f"import sys; from hub.{module} import {function}; sys.exit({function}(sys.argv[1:]))"
        command = [sys.executable, "-c", code, *args[1:]]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


# --------------------------------------------------------------------------------------------------- refusals
def _no_token(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-here"))


@pytest.mark.parametrize(
    "case, expected",
    [
        ("pickle", "refusing to upload pickled weights (pytorch_model.bin)"),
        ("checkpoint", "refusing to upload pickled weights (optimizer.pt)"),
        ("missing", "missing tokenizer.json"),
        ("bad_repo_id", "invalid --repo-id 'victoria/not a name'"),
        ("no_namespace", "expected USER/NAME"),
        ("no_token", "no Hugging Face token"),
        ("not_a_folder", "is not a folder"),
    ],
)
def test_push_refuses_bad_input_before_any_request(case, expected, hub, hub_export, monkeypatch, tmp_path, capsys):
    from hub.publish import push_main

    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    export, repo_id = hub_export, "victoria/refused"
    if case == "pickle":
        (export / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    elif case == "checkpoint":
        (export / "optimizer.pt").write_bytes(b"\x80\x04pickle")
    elif case == "missing":
        (export / "tokenizer.json").unlink()
    elif case == "bad_repo_id":
        repo_id = "victoria/not a name"
    elif case == "no_namespace":
        repo_id = "refused"
    elif case == "no_token":
        _no_token(monkeypatch, tmp_path)
    elif case == "not_a_folder":
        export = tmp_path / "nowhere"
    before = len(hub.requests)
    files_before = sorted(p.name for p in hub_export.iterdir())

    assert push_main([str(export), "--repo-id", repo_id]) == 2
    assert expected in capsys.readouterr().err
    assert len(hub.requests) == before, "a refused push must not talk to the Hub"
    assert ("model", repo_id) not in hub.repos
    assert sorted(p.name for p in hub_export.iterdir()) == files_before, "a refused push must not touch the export"


# --------------------------------------------------------------------------------------------------- push + download
@pytest.fixture(scope="module")
def pushed(hub, tmp_path_factory, tiny_export):
    """`victorian-gpt push` of a complete export to the loopback Hub's main branch (later tests download it)."""
    export = tmp_path_factory.mktemp("push") / "tiny-victorian-gpt"
    shutil.copytree(tiny_export, export)
    complete_export_for_hub(export)
    before = len(hub.requests)
    result = run_cli(["push", str(export), "--repo-id", REPO_ID, "--commit-message", "Tiny VictorianGPT"], hub.url)
    assert result.returncode == 0, result.stderr
    return export, result, hub.requests[before:]


def test_push_uploads_the_export_in_one_commit(hub, pushed):
    from huggingface_hub import ModelCard

    export, result, requests = pushed
    repo = hub.repos[("model", REPO_ID)]
    commits = hub.api_commits("model", REPO_ID)
    assert len(commits) == 1, "the export must arrive in one commit"
    commit = commits[0]
    assert repo.branches["main"] == commit.oid and commit.message == "Tiny VictorianGPT" and not repo.private
    weights_sha256 = hashlib.sha256((export / "model.safetensors").read_bytes()).hexdigest()
    assert [r for r in requests if r[0] in ("POST", "PUT")] == [
        ("POST", "/api/repos/create"),
        ("POST", "/api/validate-yaml"),  # the Hub checks the card's metadata before any file goes up
        ("POST", f"/api/models/{REPO_ID}/preupload/main"),
        ("POST", f"/{REPO_ID}.git/info/lfs/objects/batch"),  # the weights go to LFS storage first
        ("PUT", f"/lfs-storage/{weights_sha256}"),
        ("POST", f"/lfs-verify/{weights_sha256}"),
        ("POST", f"/api/models/{REPO_ID}/commit/main"),  # then one commit references them
    ]
    assert set(commit.sent) == EXPECTED_MODEL_FILES
    assert commit.sent["model.safetensors"] == "lfsFile" and commit.sent["config.json"] == "file"
    assert set(commit.files) == EXPECTED_MODEL_FILES | {".gitattributes"}
    assert not [p for p in commit.files if p.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl"))]
    for name in EXPECTED_MODEL_FILES - {"README.md"}:
        assert commit.files[name] == (export / name).read_bytes(), name
    assert json.loads(commit.files["config.json"])["auto_map"]["AutoModelForCausalLM"].startswith("modeling_victorian_gpt.")
    # The export had no README: push built the card, naming the repo, and left the folder untouched.
    assert not (export / "README.md").exists()
    card = ModelCard(commit.files["README.md"].decode())
    assert card.data.pipeline_tag == "text-generation" and "custom_code" in card.data.tags
    assert {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results} == {
        (split, metric): HUB_EXPORT_EVAL[split][metric] for split in ("validation", "test") for metric in ("perplexity", "bits_per_byte")
    }
    assert f'repo_id = "{REPO_ID}"' in card.text
    assert f"{hub.url}/{REPO_ID}/commit/{commit.oid}" in result.stdout.splitlines()


def test_push_to_a_new_branch_and_again_to_an_existing_repo(hub, pushed, tmp_path):
    export, _, _ = pushed
    changed = tmp_path / "changed"
    shutil.copytree(export, changed)
    generation = json.loads((changed / "generation_config.json").read_text())
    (changed / "generation_config.json").write_text(json.dumps({**generation, "temperature": 0.7}, indent=2))
    main_before = hub.repos[("model", REPO_ID)].branches["main"]
    # A card written beforehand (here pinning main's commit in its snippet) is published as written.
    from hub.card import main as card_main

    assert card_main([str(changed), "--repo-id", REPO_ID, "--revision", main_before]) == 0

    result = run_cli(["push", str(changed), "--repo-id", REPO_ID, "--revision", "cooler", "--token", TOKEN], hub.url,
                     token=None, console_script=False)
    assert result.returncode == 0, result.stderr
    repo = hub.repos[("model", REPO_ID)]
    assert repo.branches["main"] == main_before, "a push to a branch leaves main alone"
    head = repo.commits[repo.branches["cooler"]]
    assert head.parent == main_before, "the new branch starts from main"
    assert json.loads(head.files["generation_config.json"])["temperature"] == 0.7
    assert head.files["README.md"] == (changed / "README.md").read_bytes()
    assert f'revision = "{main_before}"' in head.files["README.md"].decode()
    assert "| `temperature` | 0.7 |" in head.files["README.md"].decode()
    # Unchanged files are not sent again (the Hub's preupload answers their blob ids): only the two changes.
    assert set(head.sent) == {"README.md", "generation_config.json"}
    assert set(head.files) == set(repo.commits[main_before].files)
    assert f"{hub.url}/{REPO_ID}/commit/{head.oid}" in result.stdout


def test_push_with_a_wrong_token_fails_cleanly(hub, hub_export):
    result = run_cli(["push", str(hub_export), "--repo-id", "victoria/other"], hub.url, "hf_wrong", console_script=False)
    assert result.returncode == 1
    assert "the Hub refused the upload" in result.stderr and "Traceback" not in result.stderr
    assert ("model", "victoria/other") not in hub.repos


def test_push_to_an_unreachable_hub_fails_cleanly(hub_export):
    result = run_cli(["push", str(hub_export), "--repo-id", "victoria/other"], "http://127.0.0.1:9", console_script=False)
    assert result.returncode == 1
    assert "cannot reach the Hub at http://127.0.0.1:9" in result.stderr and "Traceback" not in result.stderr


STRANGER_ONLINE = r"""
import os, re, sys
import torch
from huggingface_hub import hf_hub_download, snapshot_download
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

repo_id, pinned = sys.argv[1], sys.argv[2]
snapshot = snapshot_download(repo_id)  # what `hf download` does: fills the cache, refs/main -> commit

# Run the card's own usage snippets, with `revision` pinned to the published commit as the card asks.
card = open(hf_hub_download(repo_id, "README.md")).read()
blocks = re.findall(r"```python\n(.*?)```", card, re.S)
assert len(blocks) == 2, blocks
for block in blocks:
    assert 'revision = "main"' in block
    exec(block.replace('revision = "main"', f'revision = "{pinned}"'), {})
print("SNIPPETS OK")

model = AutoModelForCausalLM.from_pretrained(repo_id, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
weights = load_file(os.path.join(snapshot, "model.safetensors"))
assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
tokenizer = AutoTokenizer.from_pretrained(repo_id)
print("MODEL", type(model).__name__, "TOKENIZER", type(tokenizer).__name__)
"""

STRANGER_OFFLINE = r"""
import sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

repo_id = sys.argv[1]
model = AutoModelForCausalLM.from_pretrained(repo_id, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained(repo_id)
inputs = tokenizer("It was the best of times,", return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
assert out.shape[1] == inputs["input_ids"].shape[1] + 12, out.shape
generator = pipeline("text-generation", model=repo_id, trust_remote_code=True)
torch.manual_seed(0)
sampled = generator("My dear Watson,", max_new_tokens=12)[0]["generated_text"]  # the card's defaults: sampling
assert sampled.startswith("My dear Watson,"), sampled
# Greedy through the pipeline is the model's own greedy continuation (a sampled one may end at once on EOS).
greedy = model.generate(**tokenizer("My dear Watson,", return_tensors="pt"), max_new_tokens=12, do_sample=False)
expected = tokenizer.decode(greedy[0], skip_special_tokens=True)
text = generator("My dear Watson,", max_new_tokens=12, do_sample=False)[0]["generated_text"]
assert text == expected and len(text) > len("My dear Watson,"), (text, expected)
print("OFFLINE OK", repr(text))
"""


def test_a_stranger_downloads_and_generates_over_http_then_offline(hub, pushed, tmp_path):
    """The user's path: download from the Hub over HTTP, run the card's snippets, then load from the cache offline
    (`HF_HUB_OFFLINE=1`) in a fresh process, by repo id, with `trust_remote_code=True`."""
    cache = tmp_path / "hub-cache"
    commit = hub.api_commits("model", REPO_ID)[0]
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(cache), "HF_TOKEN": ""}
    online = run_isolated(STRANGER_ONLINE.replace("sys.argv[1], sys.argv[2]", f"{REPO_ID!r}, {commit.oid!r}"), tmp_path, env)
    assert online.returncode == 0, online.stderr[-3000:]
    assert "SNIPPETS OK" in online.stdout and "MODEL VictorianGPTForCausalLM" in online.stdout
    assert any(path.endswith("/resolve/main/model.safetensors") or path.endswith(f"/resolve/{commit.oid}/model.safetensors") for _, path in hub.requests)

    # The cache is laid out exactly as snapshot_download leaves it.
    repo_cache = cache / f"models--{REPO_ID.replace('/', '--')}"
    assert (repo_cache / "refs" / "main").read_text() == commit.oid
    snapshot = repo_cache / "snapshots" / commit.oid
    assert {p.name for p in snapshot.iterdir()} >= EXPECTED_MODEL_FILES | {".gitattributes"}
    weights = snapshot / "model.safetensors"
    assert weights.is_symlink() and weights.resolve().parent == repo_cache / "blobs"
    assert weights.resolve().name == hashlib.sha256(commit.files["model.safetensors"]).hexdigest()  # LFS blob name

    requests_before = len(hub.requests)
    offline_env = {**env, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens there
    offline = run_isolated(STRANGER_OFFLINE.replace("sys.argv[1]", repr(REPO_ID)), tmp_path, offline_env)
    assert offline.returncode == 0, offline.stderr[-3000:]
    assert "OFFLINE OK" in offline.stdout
    assert len(hub.requests) == requests_before


# --------------------------------------------------------------------------------------------------- the Space
SPACE_README = """---
title: Victorian GPT demo
emoji: 🎩
colorFrom: gray
colorTo: yellow
sdk: gradio
sdk_version: 5.0.0
app_file: app.py
models:
- someone/else
pinned: false
---

Write like it is 1899.
"""


def _space_folder(folder: Path) -> Path:
    folder.mkdir()
    (folder / "app.py").write_text("import os\nMODEL_ID = os.environ['MODEL_ID']\n")
    (folder / "textgen.py").write_text("# helpers the app imports\n")
    (folder / "requirements.txt").write_text("torch\ntransformers\n")
    (folder / "README.md").write_text(SPACE_README)
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\x00")
    return folder


def test_push_space_uploads_the_app_with_metadata_naming_model_and_dataset(hub, pushed, tmp_path):
    from huggingface_hub import SpaceCard

    space_id = "victoria/tiny-victorian-gpt-demo"
    space_dir = _space_folder(tmp_path / "space")
    result = run_cli(["push-space", "--repo-id", space_id, "--model-id", REPO_ID, "--space-dir", str(space_dir),
                      "--private"], hub.url, console_script=False)
    assert result.returncode == 0, result.stderr

    space = hub.repos[("space", space_id)]
    assert space.sdk == "gradio" and space.private
    commits = hub.api_commits("space", space_id)
    assert len(commits) == 1
    files = commits[0].files
    assert set(files) == {".gitattributes", "README.md", "app.py", "textgen.py", "requirements.txt"}
    assert files["app.py"] == (space_dir / "app.py").read_bytes()
    card = SpaceCard(files["README.md"].decode())
    assert card.data.models == [REPO_ID], "the Space names the model it serves"
    assert card.data.datasets == ["emozilla/pg19"], "and the dataset from the model's card"
    assert (card.data.sdk, card.data.app_file, card.data.title, card.data.get("emoji")) == (
        "gradio", "app.py", "Victorian GPT demo", "🎩"
    ), "the app's own metadata is kept"
    assert "Write like it is 1899." in card.text
    assert space.variables == {"MODEL_ID": REPO_ID}
    assert f"{hub.url}/spaces/{space_id}/commit/{commits[0].oid}" in result.stdout


def test_push_space_refuses_a_missing_model_or_app(hub, tmp_path):
    space_dir = _space_folder(tmp_path / "space")
    result = run_cli(["push-space", "--repo-id", "victoria/demo", "--model-id", "victoria/never-pushed",
                      "--space-dir", str(space_dir)], hub.url, console_script=False)
    assert result.returncode == 2 and "model victoria/never-pushed not found on the Hub" in result.stderr
    assert ("space", "victoria/demo") not in hub.repos

    (space_dir / "app.py").unlink()
    result = run_cli(["push-space", "--repo-id", "victoria/demo", "--model-id", REPO_ID,
                      "--space-dir", str(space_dir)], hub.url, console_script=False)
    assert result.returncode == 2 and "has no app.py" in result.stderr
    assert ("space", "victoria/demo") not in hub.repos


def test_push_space_publishes_the_projects_spaces_app(hub, pushed):
    """Without --space-dir the Space is this repository's spaces_app/, its own README metadata filled in, with copies
    of the engine (serving/textgen/ as textgen/) and of victorian_gpt/utils/ beside app.py: the whole bundle, nothing
    else."""
    from huggingface_hub import SpaceCard

    space_id = "victoria/the-real-demo"
    result = run_cli(["push-space", "--repo-id", space_id, "--model-id", REPO_ID], hub.url, console_script=False)
    assert result.returncode == 0, result.stderr
    (commit,) = hub.api_commits("space", space_id)
    app_dir = REPO_ROOT / "spaces_app"

    def files_of(folder, prefix=""):
        return {prefix + p.relative_to(folder).as_posix(): p for p in folder.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts}

    on_disk = {**files_of(app_dir), **files_of(REPO_ROOT / "serving" / "textgen", "textgen/"),
               **files_of(REPO_ROOT / "victorian_gpt" / "utils", "victorian_gpt/utils/")}
    assert set(commit.sent) == set(on_disk)
    assert {"app.py", "requirements.txt", "README.md", "textgen/engine.py", "victorian_gpt/utils/hub.py"} <= set(on_disk)
    for name in set(on_disk) - {"README.md"}:
        assert commit.files[name] == on_disk[name].read_bytes(), name
    ours, theirs = SpaceCard(commit.files["README.md"].decode()), SpaceCard.load(app_dir / "README.md")
    assert ours.data.models == [REPO_ID] and ours.data.datasets == ["emozilla/pg19"]
    assert {k: v for k, v in ours.data.to_dict().items() if k not in ("models", "datasets")} == {
        k: v for k, v in theirs.data.to_dict().items() if k not in ("models", "datasets")
    }
    assert ours.text == theirs.text
    assert hub.repos[("space", space_id)].variables == {"MODEL_ID": REPO_ID}


# --------------------------------------------------------------------------------------------------- native folders
NATIVE_REPO_ID = f"{REPO_ID}-hf"  # its own repo: engines and the Hub's widgets read a repo's main branch
EXPECTED_NATIVE_FILES = {"README.md", "config.json", "generation_config.json", "loss_curve.png", "model.safetensors",
                         "tokenizer.json", "tokenizer_config.json", "training_summary.json"}


def _run_convert(hub_url: str, cache: Path, code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_ENDPOINT": hub_url, "HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(cache),
           "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": ""}
    return subprocess.run([sys.executable, "-c", "import sys\nfrom victorian_gpt.conversion.cli import main\n" + code],
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def native_pushed(hub, pushed, tmp_path_factory):
    """`victorian-gpt convert REPO_ID@commit --to transformers` from the loopback Hub, then `victorian-gpt push` of
    the native folder to its own repo."""
    root = tmp_path_factory.mktemp("native")
    commit = hub.api_commits("model", REPO_ID)[0]
    native = root / "tiny-victorian-gpt-hf"
    converted = _run_convert(hub.url, root / "cache", (
        f"print('STATUS', main([{REPO_ID!r}, '--to', 'transformers', '--output', {str(native)!r}, "
        f"'--revision', {commit.oid!r}]))\n"
        # a repo or a revision the Hub does not have: one line each, nothing written
        f"print('STATUS', main(['victoria/never-published', '--to', 'transformers', '--output', {str(root / 'x')!r}]))\n"
        f"print('STATUS', main([{REPO_ID!r}, '--to', 'gguf', '--output', {str(root / 'x.gguf')!r}, "
        f"'--revision', 'no-such-branch']))\n"
    ))
    assert converted.returncode == 0, converted.stderr[-3000:]
    result = run_cli(["push", str(native), "--repo-id", NATIVE_REPO_ID, "--source-repo", REPO_ID], hub.url)
    assert result.returncode == 0, result.stderr
    return native, converted, result, root


def test_convert_reads_a_hub_repo_at_a_revision_and_refuses_missing_ones(native_pushed):
    native, converted, _, root = native_pushed
    assert [line for line in converted.stdout.splitlines() if line.startswith("STATUS")] == ["STATUS 0", "STATUS 2", "STATUS 2"]
    errors = [line for line in converted.stderr.splitlines() if line.startswith("victorian-gpt convert: error:")]
    assert errors == [
        "victorian-gpt convert: error: Hub repo victoria/never-published is not a repository on the Hub (or it is "
        "private: log in with `hf auth login`)",
        f"victorian-gpt convert: error: Hub repo {REPO_ID} has no revision 'no-such-branch' on the Hub",
    ], converted.stderr
    assert not (root / "x").exists() and not (root / "x.gguf").exists()
    assert json.loads((native / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]


def test_push_publishes_a_native_folder_with_its_card(hub, native_pushed):
    from huggingface_hub import ModelCard

    native, _, result, _ = native_pushed
    (commit,) = hub.api_commits("model", NATIVE_REPO_ID)
    assert set(commit.sent) == EXPECTED_NATIVE_FILES
    assert not [p for p in commit.files if p.endswith(".py")], "a native repo carries no code"
    assert "auto_map" not in json.loads(commit.files["config.json"])
    for name in EXPECTED_NATIVE_FILES - {"README.md"}:
        assert commit.files[name] == (native / name).read_bytes(), name
    card = ModelCard(commit.files["README.md"].decode())
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert "gpt2" in card.data.tags and "custom_code" not in card.data.tags
    assert {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results} == {
        (split, metric): HUB_EXPORT_EVAL[split][metric] for split in ("validation", "test")
        for metric in ("perplexity", "bits_per_byte")
    }, "the same weights: the training run's evaluation carries over"
    assert "**`GPT2LMHeadModel`**" in card.text and "trust_remote_code" in card.text
    for engine in ("vLLM", "Text Generation Inference", "llama.cpp", "MLX"):
        assert engine in card.text, engine
    assert f"https://huggingface.co/{REPO_ID}" in card.text, "the card names the remote-code repo it came from"
    assert "position_ids" in card.text, "the left-padding note"
    assert f"{hub.url}/{NATIVE_REPO_ID}/commit/{commit.oid}" in result.stdout.splitlines()


NATIVE_STRANGER = r"""
import re, sys
from huggingface_hub import hf_hub_download
from transformers import AutoModelForCausalLM, AutoTokenizer

repo_id = sys.argv[1]
card = open(hf_hub_download(repo_id, "README.md")).read()
(block,) = re.findall(r"```python\n(.*?)```", card, re.S)
exec(block, {})  # the card's own snippet, with no trust_remote_code anywhere
model = AutoModelForCausalLM.from_pretrained(repo_id)
assert type(model).__name__ == "GPT2LMHeadModel" and type(model).__module__.startswith("transformers.models.gpt2")
tokenizer = AutoTokenizer.from_pretrained(repo_id)
print("NATIVE OK", type(model).__name__, type(tokenizer).__name__)
"""


def test_a_stranger_runs_the_native_repo_without_remote_code(hub, native_pushed, tmp_path):
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_TOKEN": ""}
    stranger = run_isolated(NATIVE_STRANGER.replace("sys.argv[1]", repr(NATIVE_REPO_ID)), tmp_path, env)
    assert stranger.returncode == 0, stranger.stderr[-3000:]
    assert "NATIVE OK GPT2LMHeadModel" in stranger.stdout


def test_push_refuses_a_native_folder_with_code_or_missing_files(hub, native_pushed, tmp_path, monkeypatch, capsys):
    from hub.publish import push_main

    native, *_ = native_pushed
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    for case, expected in (("code", "is a native folder but holds Python files (modeling_victorian_gpt.py)"),
                           ("missing", "is not a complete native folder: missing generation_config.json")):
        folder = tmp_path / case
        shutil.copytree(native, folder)
        if case == "code":
            (folder / "modeling_victorian_gpt.py").write_text("# remote code\n")
        else:
            (folder / "generation_config.json").unlink()
        before = len(hub.requests)
        assert push_main([str(folder), "--repo-id", "victoria/refused-native"]) == 2
        assert expected in capsys.readouterr().err
        assert len(hub.requests) == before and ("model", "victoria/refused-native") not in hub.repos
