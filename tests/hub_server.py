"""A small stand-in of the Hugging Face Hub's HTTP interface, for tests (standard library only).

It speaks enough of the Hub's protocol for the *unmodified* ``huggingface_hub`` client to push and
pull a model repository over real HTTP on 127.0.0.1:

- ``POST /api/repos/create``: create a repository (initial commit: .gitattributes)
- ``GET  /api/models/{repo}[/revision/{rev}]``: model info with the commit ``sha``, ``siblings``
- ``POST /api/validate-yaml``: model card front matter check (the YAML must parse)
- ``POST /api/models/{repo}/preupload/{rev}``: upload mode (``lfs`` / ``regular``), remote oid
- ``POST /{repo}.git/info/lfs/objects/batch``: LFS batch API, ``basic`` transfer, signed PUT
- ``PUT  /_lfs/{key}``: the signed upload target (checks the sha256 and the size)
- ``POST /{repo}.git/info/lfs/objects/verify``: LFS verify action
- ``POST /api/models/{repo}/commit/{rev}``: ndjson commit (file / lfsFile / deletedFile)
- ``POST /api/models/{repo}/tag/{rev}``: create a tag (409 when it exists)
- ``GET  /api/models/{repo}/refs``: branches and tags
- ``POST /api/models/{repo}/paths-info/{rev}``: file metadata, with ``lfs.oid`` = sha256
- ``HEAD|GET /{repo}/resolve/{rev}/{path}``: file content with the ``ETag``,
  ``X-Repo-Commit``, ``X-Linked-Etag`` and ``X-Linked-Size`` headers
- ``GET  /api/whoami-v2``: the token's user

Errors carry the headers the client maps to its exceptions: ``X-Error-Code: RepoNotFound`` /
``RevisionNotFound`` / ``EntryNotFound`` (404) and, for an unknown token, a 401 with
``X-Error-Message: Invalid credentials in Authorization header``.

What it does NOT cover: the Xet storage protocol (clients must run with ``HF_HUB_DISABLE_XET=1``),
multipart LFS uploads, pagination of listings, gated repositories, organisations, pull requests,
branches other than ``main``, and CDN redirects (LFS content is served directly, not via a 302 to a
signed URL). Real Hub behaviour in those areas is only exercised by the opt-in real-Hub test.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import socket
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

LFS_PATTERNS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".zip", ".gz")
REGULAR_MAX_SIZE = 10 * 1024 * 1024
GITATTRIBUTES = "".join(
    f"*{ext} filter=lfs diff=lfs merge=lfs -text\n" for ext in LFS_PATTERNS
).encode()
INVALID_TOKEN_MESSAGE = "Invalid credentials in Authorization header"
REPO_ROOT = Path(__file__).resolve().parents[1]


def git_blob_sha1(content: bytes) -> str:
    """Git object id of a blob (what the Hub reports as ``oid`` of a regular file)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The Git LFS pointer file stored in git in place of an LFS file."""
    text = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"
    return text.encode()


@dataclass
class StoredFile:
    """One file of a commit: regular content, or a reference to an LFS object."""

    size: int
    content: bytes | None = None  # regular files
    sha256: str | None = None  # LFS files

    @property
    def is_lfs(self) -> bool:
        return self.sha256 is not None

    @property
    def git_oid(self) -> str:
        if self.is_lfs:
            return git_blob_sha1(lfs_pointer(self.sha256 or "", self.size))
        return git_blob_sha1(self.content or b"")


@dataclass
class Commit:
    """An immutable snapshot of a repository."""

    sha: str
    parent: str | None
    message: str
    files: dict[str, StoredFile]
    date: str


@dataclass
class Repo:
    """A model repository: its commits, its ``main`` branch and its tags."""

    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        """Commit for a branch, a tag or a full commit sha; ``None`` when unknown."""
        sha = self.branches.get(revision) or self.tags.get(revision)
        if sha is None and re.fullmatch(r"[0-9a-f]{40}", revision):
            sha = revision
        return self.commits.get(sha) if sha else None


class HubState:
    """Everything the stand-in knows; shared by the request handler threads under one lock."""

    def __init__(self, tokens: dict[str, tuple[str, str]]) -> None:
        self.tokens = tokens  # token -> (user name, "read" | "write")
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.pending_uploads: dict[str, tuple[str, int]] = {}  # signed key -> (oid, size)
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self.lock = threading.Lock()
        self._counter = 0

    def new_commit(self, repo: Repo, files: dict[str, StoredFile], message: str) -> Commit:
        """Add a commit on ``main`` and return it."""
        self._counter += 1
        parent = repo.branches.get("main")
        digest = hashlib.sha1(
            json.dumps(
                [repo.repo_id, parent, message, self._counter,
                 sorted((p, f.git_oid) for p, f in files.items())]
            ).encode()
        ).hexdigest()
        date = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        commit = Commit(sha=digest, parent=parent, message=message, files=files, date=date)
        repo.commits[digest] = commit
        repo.branches["main"] = digest
        return commit

    def count(self, method: str, path_fragment: str) -> int:
        """How many requests with ``method`` had ``path_fragment`` in their path."""
        with self.lock:
            return sum(1 for m, p in self.requests if m == method and path_fragment in p)


class HubError(Exception):
    """An HTTP error response of the stand-in."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


class Handler(BaseHTTPRequestHandler):
    """Routes one request to the Hub endpoint it imitates."""

    protocol_version = "HTTP/1.1"
    server: HubHTTPServer

    # -- plumbing ---------------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json", head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, payload: Any) -> None:
        self._send(status, json.dumps(payload).encode())

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        body = self._read_body()
        state = self.server.state
        with state.lock:
            state.requests.append((method, url.path))
        try:
            self._route(method, url.path, url.query, body)
        except HubError as err:
            headers = dict(err.headers)
            if err.code:
                headers["X-Error-Code"] = err.code
            headers["X-Error-Message"] = err.message
            self._send(err.status, json.dumps({"error": err.message}).encode(), headers,
                       head=method == "HEAD")

    # -- authentication ---------------------------------------------------------------------------
    def _user(self) -> tuple[str, str] | None:
        """(user, role) of the bearer token; ``None`` without one; 401 for an unknown one."""
        auth = self.headers.get("Authorization") or ""
        if not auth.lower().startswith("bearer "):
            return None
        token = auth.split(" ", 1)[1].strip()
        if token not in self.server.state.tokens:
            raise HubError(401, INVALID_TOKEN_MESSAGE)
        return self.server.state.tokens[token]

    def _require_write(self, namespace: str) -> str:
        user = self._user()
        if user is None:
            raise HubError(401, "You must be authenticated to access this resource.")
        name, role = user
        if role != "write" or name != namespace:
            raise HubError(403, f"You don't have the rights to write to '{namespace}'")
        return name

    def _repo(self, repo_id: str) -> Repo:
        """The repository, or RepoNotFound (also for a private one the caller may not read)."""
        user = self._user()
        repo = self.server.state.repos.get(repo_id)
        readable = repo is not None and (
            not repo.private or (user is not None and user[0] == repo_id.split("/")[0])
        )
        if repo is None or not readable:
            status = 401 if user is None else 404
            raise HubError(status, "Repository not found", "RepoNotFound")
        return repo

    @staticmethod
    def _commit(repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    # -- routing ----------------------------------------------------------------------------------
    def _route(self, method: str, path: str, query: str, body: bytes) -> None:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        state = self.server.state
        if method == "GET" and path == "/api/whoami-v2":
            user = self._user()
            if user is None:
                raise HubError(401, "Unauthorized")
            self._json(200, {"type": "user", "name": user[0],
                             "auth": {"accessToken": {"role": user[1]}}})
            return
        if method == "POST" and path == "/api/repos/create":
            self._create_repo(json.loads(body or b"{}"))
            return
        if method == "POST" and path == "/api/validate-yaml":
            self._validate_yaml(json.loads(body or b"{}"))
            return
        if method == "PUT" and len(parts) == 2 and parts[0] == "_lfs":
            self._lfs_put(parts[1], body)
            return
        if len(parts) >= 4 and parts[0] == "api" and parts[1] == "models":
            repo_id = f"{parts[2]}/{parts[3]}"
            rest = parts[4:]
            with state.lock:
                self._api_models(method, repo_id, rest, body)
            return
        is_lfs = len(parts) == 6 and parts[1].endswith(".git")
        if is_lfs and parts[2:5] == ["info", "lfs", "objects"]:
            repo_id = f"{parts[0]}/{parts[1][:-4]}"
            with state.lock:
                self._lfs(parts[5], repo_id, json.loads(body or b"{}"))
            return
        if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            repo_id = f"{parts[0]}/{parts[1]}"
            with state.lock:
                self._resolve(method, repo_id, parts[3], "/".join(parts[4:]))
            return
        raise HubError(404, f"Not found: {method} {path}")

    # -- endpoints --------------------------------------------------------------------------------
    def _create_repo(self, payload: dict[str, Any]) -> None:
        namespace = payload.get("organization")
        name = payload.get("name")
        if namespace is None:
            user = self._user()
            namespace = user[0] if user else None
        if not namespace or not name:
            raise HubError(400, "name and namespace are required")
        self._require_write(namespace)
        repo_id = f"{namespace}/{name}"
        state = self.server.state
        url = f"{self.server.base_url}/{repo_id}"
        with state.lock:
            if repo_id in state.repos:
                self._json(409, {"error": "You already created this model repo", "url": url})
                return
            private = bool(payload.get("private")) or payload.get("visibility") == "private"
            repo = Repo(repo_id=repo_id, private=private)
            state.repos[repo_id] = repo
            state.new_commit(
                repo,
                {".gitattributes": StoredFile(size=len(GITATTRIBUTES), content=GITATTRIBUTES)},
                "initial commit",
            )
        self._json(200, {"url": url, "name": repo_id, "id": secrets.token_hex(12)})

    def _validate_yaml(self, payload: dict[str, Any]) -> None:
        content = str(payload.get("content", ""))
        match = re.match(r"^---\n(.*?)\n---", content, re.S)
        if match:
            try:
                meta = yaml.safe_load(match.group(1))
            except yaml.YAMLError as exc:
                self._json(400, {"errors": [{"message": f"YAML error: {exc}"}]})
                return
            if meta is not None and not isinstance(meta, dict):
                self._json(400, {"errors": [{"message": "metadata must be a mapping"}]})
                return
        self._json(200, {"errors": [], "warnings": []})

    def _api_models(self, method: str, repo_id: str, rest: list[str], body: bytes) -> None:
        if method == "GET" and not rest:
            self._model_info(self._repo(repo_id), "main")
        elif method == "GET" and len(rest) == 2 and rest[0] == "revision":
            self._model_info(self._repo(repo_id), rest[1])
        elif method == "GET" and rest == ["refs"]:
            repo = self._repo(repo_id)
            self._json(200, {
                "branches": [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": s}
                             for n, s in repo.branches.items()],
                "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": s}
                         for n, s in repo.tags.items()],
                "converts": [],
                "pullRequests": [],
            })
        elif method == "POST" and len(rest) == 2 and rest[0] == "preupload":
            self._preupload(repo_id, rest[1], json.loads(body or b"{}"))
        elif method == "POST" and len(rest) == 2 and rest[0] == "commit":
            self._commit_endpoint(repo_id, rest[1], body)
        elif method == "POST" and len(rest) == 2 and rest[0] == "tag":
            self._tag(repo_id, rest[1], json.loads(body or b"{}"))
        elif method == "POST" and len(rest) == 2 and rest[0] == "paths-info":
            self._paths_info(repo_id, rest[1], body)
        else:
            raise HubError(404, f"Not found: {method} /api/models/{repo_id}/{'/'.join(rest)}")

    def _model_info(self, repo: Repo, revision: str) -> None:
        commit = self._commit(repo, revision)
        self._json(200, {
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.sha,
            "private": repo.private,
            "lastModified": commit.date,
            "siblings": [{"rfilename": p} for p in sorted(commit.files)],
        })

    def _preupload(self, repo_id: str, revision: str, payload: dict[str, Any]) -> None:
        repo = self._repo(repo_id)
        self._require_write(repo_id.split("/")[0])
        commit = self._commit(repo, revision)
        files = []
        for item in payload.get("files", []):
            path, size = item["path"], int(item["size"])
            lfs = path.endswith(LFS_PATTERNS) or size > REGULAR_MAX_SIZE
            entry: dict[str, Any] = {"path": path, "uploadMode": "lfs" if lfs else "regular",
                                     "shouldIgnore": False}
            existing = commit.files.get(path)
            if existing is not None:
                entry["oid"] = existing.sha256 if existing.is_lfs else existing.git_oid
            files.append(entry)
        self._json(200, {"files": files, "commitOid": commit.sha})

    def _lfs(self, action: str, repo_id: str, payload: dict[str, Any]) -> None:
        state = self.server.state
        repo = self._repo(repo_id)
        self._require_write(repo.repo_id.split("/")[0])
        base = self.server.base_url
        if action == "verify":
            oid = payload.get("oid")
            if oid not in state.lfs_objects:
                raise HubError(404, f"LFS object {oid} not found")
            self._json(200, {"success": True})
            return
        if action != "batch" or payload.get("operation") != "upload":
            raise HubError(400, "only LFS upload batches are supported")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            if oid in state.lfs_objects:
                objects.append({"oid": oid, "size": size})
                continue
            key = secrets.token_urlsafe(16)
            state.pending_uploads[key] = (oid, size)
            objects.append({
                "oid": oid,
                "size": size,
                "authenticated": True,
                "actions": {
                    "upload": {"href": f"{base}/_lfs/{key}"},
                    "verify": {"href": f"{base}/{repo_id}.git/info/lfs/objects/verify"},
                },
            })
        self._json(200, {"transfer": "basic", "objects": objects})

    def _lfs_put(self, key: str, body: bytes) -> None:
        state = self.server.state
        with state.lock:
            pending = state.pending_uploads.pop(key, None)
            if pending is None:
                raise HubError(403, "unknown or used upload URL")
            oid, size = pending
            if len(body) != size or hashlib.sha256(body).hexdigest() != oid:
                raise HubError(400, "uploaded content does not match the announced oid/size")
            state.lfs_objects[oid] = body
        self._send(200)

    def _commit_endpoint(self, repo_id: str, revision: str, body: bytes) -> None:
        state = self.server.state
        repo = self._repo(repo_id)
        self._require_write(repo_id.split("/")[0])
        if revision != "main":
            raise HubError(400, "the stand-in only commits to 'main'")
        head = self._commit(repo, revision)
        files = dict(head.files)
        message = "commit"
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                message = value.get("summary") or message
                parent = value.get("parentCommit")
                if parent is not None and parent != head.sha:
                    raise HubError(412, f"parent commit {parent} is not the head of main")
            elif key == "file":
                content = base64.b64decode(value["content"])
                files[value["path"]] = StoredFile(size=len(content), content=content)
            elif key == "lfsFile":
                oid = value["oid"]
                if oid not in state.lfs_objects:
                    raise HubError(422, f"LFS object {oid} was not uploaded")
                files[value["path"]] = StoredFile(size=len(state.lfs_objects[oid]), sha256=oid)
            elif key == "deletedFile":
                if value["path"] not in files:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                del files[value["path"]]
            else:
                raise HubError(400, f"unsupported commit operation {key}")
        commit = state.new_commit(repo, files, message)
        self._json(200, {
            "success": True,
            "commitOid": commit.sha,
            "commitUrl": f"{self.server.base_url}/{repo_id}/commit/{commit.sha}",
            "pullRequestUrl": None,
        })

    def _tag(self, repo_id: str, revision: str, payload: dict[str, Any]) -> None:
        repo = self._repo(repo_id)
        self._require_write(repo_id.split("/")[0])
        commit = self._commit(repo, revision)
        tag = str(payload.get("tag", ""))
        if not tag:
            raise HubError(400, "tag name is required")
        if tag in repo.tags or tag in repo.branches:
            raise HubError(409, f"Tag {tag} already exists")
        repo.tags[tag] = commit.sha
        self._json(200, {"success": True})

    def _paths_info(self, repo_id: str, revision: str, body: bytes) -> None:
        repo = self._repo(repo_id)
        commit = self._commit(repo, revision)
        form = parse_qs(body.decode())
        out = []
        for path in form.get("paths", []):
            stored = commit.files.get(path)
            if stored is None:
                continue
            info: dict[str, Any] = {"type": "file", "path": path, "size": stored.size,
                                    "oid": stored.git_oid}
            if stored.is_lfs:
                info["lfs"] = {"oid": stored.sha256, "size": stored.size,
                               "pointerSize": len(lfs_pointer(stored.sha256 or "", stored.size))}
            out.append(info)
        self._json(200, out)

    def _resolve(self, method: str, repo_id: str, revision: str, path: str) -> None:
        state = self.server.state
        repo = self._repo(repo_id)
        commit = self._commit(repo, revision)
        stored = commit.files.get(path)
        if stored is None:
            raise HubError(404, "Entry not found", "EntryNotFound",
                           headers={"X-Repo-Commit": commit.sha})
        headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{stored.git_oid}"',
                   "Accept-Ranges": "bytes"}
        if stored.is_lfs:
            content = state.lfs_objects[stored.sha256 or ""]
            headers["X-Linked-Etag"] = f'"{stored.sha256}"'
            headers["X-Linked-Size"] = str(stored.size)
        else:
            content = stored.content or b""
        status = 200
        range_header = self.headers.get("Range")
        match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        if match and method == "GET":
            start = int(match.group(1))
            headers["Content-Range"] = f"bytes {start}-{len(content) - 1}/{len(content)}"
            content, status = content[start:], 206
        self._send(status, content, headers, content_type="application/octet-stream",
                   head=method == "HEAD")


class HubHTTPServer(ThreadingHTTPServer):
    """The HTTP server; ``state`` holds the repositories, ``base_url`` its address."""

    daemon_threads = True

    def __init__(self, state: HubState) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.state = state
        self.base_url = f"http://127.0.0.1:{self.server_address[1]}"


class FakeHub:
    """Context manager: a running stand-in on a random loopback port.

    >>> with FakeHub(tokens={"hf_w": ("alice", "write")}) as hub:
    ...     hub.url  # doctest: +SKIP
    """

    def __init__(self, tokens: dict[str, tuple[str, str]]) -> None:
        self.state = HubState(tokens)
        self._server: HubHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "FakeHub is not running"
        return self._server.base_url

    def __enter__(self) -> FakeHub:
        self._server = HubHTTPServer(self.state)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def commit_count(self, repo_id: str) -> int:
        """Number of commits of a repository (the initial .gitattributes commit included)."""
        with self.state.lock:
            return len(self.state.repos[repo_id].commits)

    def head(self, repo_id: str) -> str:
        """Commit sha of ``main``."""
        with self.state.lock:
            return self.state.repos[repo_id].branches["main"]


# -- helpers shared by the hub tests -------------------------------------------------------------
def write_checkpoint(folder: Path, seed: int = 0, **config: Any) -> Path:
    """Write a small checkpoint folder by hand: model.safetensors, config.json, README.md.

    The weights are a few random arrays saved with ``safetensors.numpy`` (the same file format
    the torch writer produces); ``config`` entries override the defaults of ``config.json``.
    """
    import numpy as np
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    save_file({"encoder.conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
               "classifier.bias": rng.standard_normal(3).astype(np.float32)},
              str(folder / "model.safetensors"))
    document = {
        "segcl_version": "0.1.0", "method": "finetune", "dataset": "camvid",
        "command": "segcl finetune data/camvid --out runs/test",
        "model": {"encoder": "resnet18", "decoder": "unet", "num_classes": 3},
        "data": {"classes": ["sky", "road", "car"], "ignore_index": 3,
                 "palette": [[0, 0, 255], [128, 64, 128], [64, 0, 128]],
                 "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                 "image_size": [192, 256]},
        "metrics": {"val": {"miou": 0.41, "pixel_accuracy": 0.8}},
    }
    document.update(config)
    (folder / "config.json").write_text(json.dumps(document, indent=2))
    (folder / "README.md").write_text("stale card that push must regenerate\n")
    return folder


def client_env(endpoint: str, hf_home: Path, token: str | None, *, offline: bool = False,
               **extra: str) -> dict[str, str]:
    """Environment of a huggingface_hub client process talking to ``endpoint``.

    huggingface_hub reads these variables when it is imported, hence a fresh process per client.
    """
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGING_FACE_", "SEGCL_"))}
    env.update({
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(hf_home),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "PYTHONPATH": str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    })
    if token is not None:
        env["HF_TOKEN"] = token
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    env.update(extra)
    return env


def dead_endpoint() -> str:
    """An http:// address on which nothing listens."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
