"""`LoopbackHub`: a small Hub-protocol server on 127.0.0.1, for tests that publish and download over HTTP.

It serves the endpoints `HfApi.create_repo`, `create_branch`, `create_commit` (validate-yaml, preupload, the LFS
batch API for weights, commit), `add_space_variable`, `repo_info` and `list_repo_tree` call, and the `resolve` file
downloads that `hf_hub_download` / `snapshot_download` / `from_pretrained` use. It keeps git-like history (commits
with parents, branches, blob ids = git blob sha1, LFS objects by sha256) and records every request and what each
commit carried, so a test can assert what a client actually sent. Point a client at it with `HF_ENDPOINT=hub.url`
(and `HF_HUB_DISABLE_XET=1`, so large files take the LFS batch API it serves); writes need `token`.

Run it in a thread: `with running_hub(token) as server: ...` (or `server = LoopbackHub(token)`,
`threading.Thread(target=server.serve_forever, daemon=True)`, then `server.shutdown()` and `server.server_close()`).

(`olah`, a self-hosted Hub mirror, was tried first: it serves local git repos read-only, has no upload endpoints,
and answers a missing folder with `401 RepoNotFound`, which makes `AutoTokenizer.from_pretrained` fail.)
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml


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


@contextmanager
def running_hub(token: str):
    """A `LoopbackHub` serving in a thread of its own while the block runs."""
    server = LoopbackHub(token)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


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
