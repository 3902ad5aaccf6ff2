"""Publishing to the Hub and downloading from it, over HTTP, the way users do.

`LoopbackHub` is a small Hub-protocol server on 127.0.0.1: the endpoints `HfApi.create_repo`, `create_branch`,
`create_commit` (validate-yaml, preupload, the LFS batch API for weights, commit), `add_space_variable`,
`repo_info` and `list_repo_tree` call, and the `resolve` file downloads that `hf_hub_download` /
`snapshot_download` / `from_pretrained` use. It keeps git-like history (commits with parents, branches, blob ids =
git blob sha1, LFS objects by sha256) and records every request and what each commit carried, so the tests can
assert what `victorian-gpt push` actually sent. The CLI runs as a subprocess with
`HF_ENDPOINT` pointing at it; the downloads run in a stranger's process that cannot import `victorian_gpt`.

(`olah`, a self-hosted Hub mirror, was tried first: it serves local git repos read-only, has no upload endpoints,
and answers a missing folder with `401 RepoNotFound`, which makes `AutoTokenizer.from_pretrained` fail.)
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

from conftest import HUB_EXPORT_EVAL, complete_export_for_hub, run_isolated

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


# --------------------------------------------------------------------------------------------------- the server
def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    parent: str | None
    message: str
    files: dict[str, bytes]  # the whole tree at this commit
    sent: dict[str, str]  # path -> how the /commit request carried it: "file" (inline) or "lfsFile" (LFS pointer)


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    sdk: str | None
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        oid = self.branches.get(revision, revision)
        return self.commits.get(oid)

    def commit(self, branch: str, message: str, files: dict[str, bytes], sent: dict[str, str]) -> Commit:
        parent = self.branches.get(branch)
        tree = dict(self.commits[parent].files) if parent else {}
        tree.update(files)
        digest = hashlib.sha1(f"{parent}\n{message}\n".encode())
        for path in sorted(tree):
            digest.update(f"{path} {git_blob_id(tree[path])}\n".encode())
        commit = Commit(digest.hexdigest(), parent, message, tree, sent)
        self.commits[commit.oid] = commit
        self.branches[branch] = commit.oid
        return commit


class LoopbackHub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, token: str):
        super().__init__(("127.0.0.1", 0), _HubHandler)
        self.token = token
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.lfs: dict[str, bytes] = {}  # sha256 -> content, uploaded through the LFS batch API
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def api_commits(self, repo_type: str, repo_id: str) -> list[Commit]:
        return [c for c in self.repos[(repo_type, repo_id)].commits.values() if c.sent]


_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_REPO = r"(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)"
_ROUTES = [
    ("POST", re.compile(r"/api/repos/create"), "create_repo"),
    ("POST", re.compile(r"/api/validate-yaml"), "validate_yaml"),
    ("POST", re.compile(rf"/api/{_REPO}/branch/(?P<rev>[^/]+)"), "create_branch"),
    ("POST", re.compile(rf"/api/{_REPO}/preupload/(?P<rev>[^/]+)"), "preupload"),
    ("POST", re.compile(rf"/api/{_REPO}/commit/(?P<rev>[^/]+)"), "commit"),
    ("POST", re.compile(r"/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch"), "lfs_batch"),
    ("PUT", re.compile(r"/lfs-storage/(?P<oid>[0-9a-f]{64})"), "lfs_put"),
    ("POST", re.compile(r"/lfs-verify/(?P<oid>[0-9a-f]{64})"), "lfs_verify"),
    ("POST", re.compile(r"/api/spaces/(?P<repo>[^/]+/[^/]+)/variables"), "add_variable"),
    ("GET", re.compile(rf"/api/{_REPO}(?:/revision/(?P<rev>[^/]+))?"), "repo_info"),
    ("GET", re.compile(rf"/api/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?"), "tree"),
    ("GET", re.compile(r"/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)"), "resolve"),
]


class _HubHandler(BaseHTTPRequestHandler):
    server: LoopbackHub

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    # ---- plumbing
    def _dispatch(self, method: str):
        url = urlsplit(self.path)
        path = unquote(url.path)
        self.query = parse_qs(url.query)
        self.body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method in ("POST", "PUT") else b""
        with self.server.lock:
            self.server.requests.append((method, path))
            for route_method, pattern, name in _ROUTES:
                match = pattern.fullmatch(path)
                if match and (route_method == method or (route_method == "GET" and method == "HEAD")):
                    params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    if "type" in params:
                        params["type"] = _TYPES[params["type"]]
                    return getattr(self, name)(**params)
            self._error(404, "NotFound", f"no route for {method} {path}")

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data, status: int = 200):
        self._send(status, json.dumps(data).encode())

    def _error(self, status: int, code: str, message: str, headers: dict | None = None):
        self._send(status, json.dumps({"error": message}).encode(), {"X-Error-Code": code, "X-Error-Message": message, **(headers or {})})

    def _authorized(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {self.server.token}"

    def _repo(self, type: str, repo: str, write: bool = False) -> Repo | None:
        found = self.server.repos.get((type, repo))
        if (write or (found and found.private)) and not self._authorized():
            self._error(401, "RepoNotFound", "Invalid credentials in Authorization header")
            return None
        if found is None:
            self._error(404, "RepoNotFound", f"Repository {repo} not found")
        return found

    def _commit_at(self, repo: Repo, rev: str) -> Commit | None:
        commit = repo.resolve(rev)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return commit

    def _prefix(self, repo_type: str) -> str:
        return "" if repo_type == "model" else f"{repo_type}s/"

    # ---- write endpoints
    def create_repo(self):
        if not self._authorized():
            return self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
        payload = json.loads(self.body)
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload['organization']}/{payload['name']}"
        url = f"{self.server.url}/{self._prefix(repo_type)}{repo_id}"
        if (repo_type, repo_id) in self.server.repos:
            return self._json({"error": "You already created this repo", "url": url}, 409)
        repo = Repo(repo_type, repo_id, payload.get("visibility") == "private", payload.get("sdk"))
        repo.commit("main", "initial commit", {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}, sent={})
        self.server.repos[(repo_type, repo_id)] = repo
        self._json({"url": url, "name": repo_id})

    def validate_yaml(self):
        """Parse the README's metadata as the Hub's validator would: YAML, then the repo type's card-data schema."""
        from huggingface_hub import ModelCard, SpaceCard

        payload = json.loads(self.body)
        card_class = SpaceCard if payload.get("repoType") == "space" else ModelCard
        try:
            card = card_class(payload["content"])
            if not card.data.to_dict():
                raise ValueError("empty metadata")
        except Exception as error:  # any parse failure is the caller's error, reported as the Hub does
            return self._json({"errors": [{"message": str(error)}]}, 400)
        self._json({"errors": [], "warnings": []})

    def create_branch(self, type, repo, rev):
        if (r := self._repo(type, repo, write=True)) is None:
            return
        if rev in r.branches:
            return self._error(409, "Conflict", "Reference already exists")
        start = json.loads(self.body or b"{}").get("startingPoint") or "main"
        if (commit := self._commit_at(r, start)) is not None:
            r.branches[rev] = commit.oid
            self._json({})

    def preupload(self, type, repo, rev):
        if (r := self._repo(type, repo, write=True)) is None or (commit := self._commit_at(r, rev)) is None:
            return
        files = json.loads(self.body)["files"]
        self._json(
            {
                "files": [
                    {
                        "path": f["path"],
                        # As on the Hub, .gitattributes decides: weights go through LFS, the rest inline.
                        "uploadMode": "lfs" if _is_lfs(f["path"]) else "regular",
                        "shouldIgnore": False,
                        "oid": _oid(f["path"], commit.files[f["path"]]) if f["path"] in commit.files else None,
                    }
                    for f in files
                ]
            }
        )

    def commit(self, type, repo, rev):
        if (r := self._repo(type, repo, write=True)) is None or self._commit_at(r, rev) is None:
            return
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        header, files, sent = lines[0]["value"], {}, {}
        for item in lines[1:]:
            key, value = item["key"], item["value"]
            if key == "file" and value.get("encoding") == "base64":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile" and value["oid"] in self.server.lfs:
                files[value["path"]] = self.server.lfs[value["oid"]]
            else:
                return self._error(400, "BadRequest", f"cannot commit {key} {value.get('path')}")
            sent[value["path"]] = key
        commit = r.commit(rev, header["summary"], files, sent)
        self._json({"success": True, "commitOid": commit.oid, "commitUrl": f"{self.server.url}/{self._prefix(r.repo_type)}{r.repo_id}/commit/{commit.oid}"})

    def lfs_batch(self, repo, type="model"):
        if self._repo(type, repo, write=True) is None:
            return
        objects = []
        for obj in json.loads(self.body)["objects"]:
            actions = None
            if obj["oid"] not in self.server.lfs:  # already stored: nothing to upload
                actions = {
                    "upload": {"href": f"{self.server.url}/lfs-storage/{obj['oid']}"},
                    "verify": {"href": f"{self.server.url}/lfs-verify/{obj['oid']}"},
                }
            objects.append({"oid": obj["oid"], "size": obj["size"], **({"actions": actions} if actions else {})})
        self._json({"transfer": "basic", "objects": objects})

    def lfs_put(self, oid):
        if hashlib.sha256(self.body).hexdigest() != oid:
            return self._error(400, "BadRequest", "content does not match its sha256")
        self.server.lfs[oid] = self.body
        self._send(200)

    def lfs_verify(self, oid):
        payload = json.loads(self.body)
        if len(self.server.lfs.get(oid, b"")) != payload["size"] or not self._authorized():
            return self._error(404, "NotFound", f"LFS object {oid} not uploaded")
        self._json({})

    def add_variable(self, repo):
        if (r := self._repo("space", repo, write=True)) is None:
            return
        payload = json.loads(self.body)
        r.variables[payload["key"]] = payload["value"]
        self._json({k: {"value": v} for k, v in r.variables.items()})

    # ---- read endpoints
    def repo_info(self, type, repo, rev="main"):
        if (r := self._repo(type, repo)) is None or (commit := self._commit_at(r, rev)) is None:
            return
        card = {}
        if "README.md" in commit.files:
            match = re.match(r"---\n(.*?)\n---", commit.files["README.md"].decode(), re.S)
            card = yaml.safe_load(match.group(1)) if match else {}
        self._json(
            {
                "id": r.repo_id,
                "sha": commit.oid,
                "private": r.private,
                "sdk": r.sdk,
                "cardData": card,
                "tags": card.get("tags", []),
                "siblings": [{"rfilename": p} for p in sorted(commit.files)],
            }
        )

    def tree(self, type, repo, rev, path=""):
        if (r := self._repo(type, repo)) is None or (commit := self._commit_at(r, rev)) is None:
            return
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        recursive = self.query.get("recursive", ["false"])[0].lower() == "true"
        entries, dirs = [], set()
        for name, data in sorted(commit.files.items()):
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix):]
            if "/" in rest and not recursive:
                dirs.add(prefix + rest.split("/")[0])
            else:
                entry = {"type": "file", "oid": git_blob_id(data), "size": len(data), "path": name}
                if _is_lfs(name):
                    entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                entries.append(entry)
        if prefix and not entries and not dirs:
            return self._error(404, "EntryNotFound", f"{path} does not exist on {rev}", {"X-Repo-Commit": commit.oid})
        self._json([{"type": "directory", "oid": "0" * 40, "size": 0, "path": d} for d in sorted(dirs)] + entries)

    def resolve(self, repo, rev, path, type="model"):
        if (r := self._repo(type, repo)) is None or (commit := self._commit_at(r, rev)) is None:
            return
        if path not in commit.files:
            return self._error(404, "EntryNotFound", f"{path} does not exist on {rev}", {"X-Repo-Commit": commit.oid})
        data = commit.files[path]
        # The Hub's ETag for an LFS file is its sha256 (the cache names the blob by it), else the git blob id.
        self._send(200, data, {"X-Repo-Commit": commit.oid, "ETag": f'"{_oid(path, data)}"'}, "application/octet-stream")


def _is_lfs(path: str) -> bool:
    return path.endswith(".safetensors")  # what the repos' initial .gitattributes sends to LFS


def _oid(path: str, data: bytes) -> str:
    return hashlib.sha256(data).hexdigest() if _is_lfs(path) else git_blob_id(data)


@pytest.fixture(scope="module")
def hub():
    server = LoopbackHub(TOKEN)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


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

    from conftest import REPO_ROOT

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
