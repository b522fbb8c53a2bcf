"""Push and pull over real HTTP against a loopback stand-in of the Hugging Face Hub.

The real Hub cannot be reached from the test machines, so ``tests/hub_server.py`` imitates the
part of its HTTP interface that the *unmodified* ``huggingface_hub`` client uses to push (create
repo, preupload, LFS batch + basic upload, ndjson commit, tags) and to pull (resolve with the
ETag / X-Repo-Commit / X-Linked-Etag headers, paths-info, refs, 404s with X-Error-Code). Each
client runs in a fresh process with ``HF_ENDPOINT``, ``HF_HOME=<tmp>``, ``HF_TOKEN`` and
``HF_HUB_DISABLE_XET=1``, because huggingface_hub reads them at import time.

Not covered by the stand-in (only by ``test_real_hub_round_trip``, opt-in via
``SEGCL_REAL_HUB_TOKEN``): the Xet storage protocol, multipart LFS uploads, pagination, gated
repositories, organisations, and CDN redirects of LFS downloads (the stand-in serves the content
directly instead of answering 302 to a signed URL).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.hub_server import FakeHub, client_env, dead_endpoint, write_checkpoint

WRITE_TOKEN = "hf_alice_write_0123456789"
READ_TOKEN = "hf_bob_read_0123456789"

DRIVER = r"""
import json, sys
from pathlib import Path
from segcl.errors import SegclError
results = []
for op in json.loads(sys.argv[1]):
    try:
        if op["op"] == "push":
            from segcl.hub.remote import push
            r = push(Path(op["checkpoint"]), op["repo_id"], tag=op.get("tag"),
                     private=op.get("private", False))
            out = {"commit_sha": r.commit_sha, "changed": r.changed, "sha256": r.sha256,
                   "tag": r.tag, "url": r.url, "hf_ref": r.hf_ref}
        else:
            from segcl.hub.refs import resolve_model_ref
            out = str(resolve_model_ref(op["ref"], op.get("revision")))
        results.append({"ok": out})
    except SegclError as err:
        results.append({"error": f"{type(err).__name__}: {err}"})
print(json.dumps(results))
"""


class Client:
    """Runs segcl's push / resolve_model_ref in a fresh process against an endpoint.

    Several operations can share one process (``many``); each returns its result, or the
    ``"ErrorClass: message"`` of the SegclError it raised.
    """

    def __init__(self, endpoint: str, hf_home: Path) -> None:
        self.endpoint = endpoint
        self.hf_home = hf_home

    def many(self, ops: list[dict[str, Any]], *, token: str | None = WRITE_TOKEN,
             offline: bool = False, endpoint: str | None = None,
             env: dict[str, str] | None = None) -> list[Any]:
        environment = client_env(endpoint or self.endpoint, self.hf_home, token,
                                 offline=offline, **(env or {}))
        proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(ops)],
                              env=environment, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        results = json.loads(proc.stdout.strip().splitlines()[-1])
        return [r.get("ok", r.get("error")) for r in results]

    def push(self, checkpoint: Path, repo_id: str, **kwargs: Any) -> Any:
        op = {"op": "push", "checkpoint": str(checkpoint), "repo_id": repo_id}
        env = {k: kwargs.pop(k) for k in ("token", "env") if k in kwargs}
        return self.many([{**op, **kwargs}], **env)[0]

    def resolve(self, ref: str, revision: str | None = None, **kwargs: Any) -> Any:
        """The folder (a Path), or the error message (a str)."""
        result = self.many([{"op": "resolve", "ref": ref, "revision": revision}], **kwargs)[0]
        return Path(result) if not result.startswith(("HubError", "ConfigError",
                                                      "CheckpointError")) else result

    def resolve_all(self, refs: list[str], **kwargs: Any) -> list[Any]:
        """Several references resolved in one process (same environment)."""
        results = self.many([{"op": "resolve", "ref": r} for r in refs], **kwargs)
        return [r if r.startswith(("HubError", "ConfigError")) else Path(r) for r in results]


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub(tokens={WRITE_TOKEN: ("alice", "write"), READ_TOKEN: ("bob", "read")}) as server:
        yield server


@pytest.fixture
def client(hub: FakeHub, tmp_path: Path) -> Client:
    return Client(hub.url, tmp_path / "hf_home")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_on_hub(hub: FakeHub, repo_id: str, revision: str = "main") -> dict[str, bytes]:
    with hub.state.lock:
        commit = hub.state.repos[repo_id].resolve(revision)
        assert commit is not None
        return {path: (f.content if not f.is_lfs else hub.state.lfs_objects[f.sha256 or ""])
                or b"" for path, f in commit.files.items()}


def test_push_then_pull_by_sha_and_by_tag(hub: FakeHub, client: Client, tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "runs" / "a" / "best")
    result = client.push(tmp_path / "runs" / "a", "alice/camvid-unet", tag="v1")

    assert result["changed"] is True
    assert len(result["commit_sha"]) == 40 and result["commit_sha"] == hub.head("alice/camvid-unet")
    assert result["sha256"] == sha256_of(ckpt / "model.safetensors")
    assert result["hf_ref"] == f"hf://alice/camvid-unet@{result['commit_sha']}"
    remote = files_on_hub(hub, "alice/camvid-unet")
    assert set(remote) == {".gitattributes", "model.safetensors", "config.json", "README.md"}
    assert remote["model.safetensors"] == (ckpt / "model.safetensors").read_bytes()
    assert remote["config.json"] == (ckpt / "config.json").read_bytes()
    card = remote["README.md"].decode()
    assert card.startswith("---\n") and "library_name: segcl" in card  # regenerated, not stale
    assert "stale card" not in card

    by_sha, by_tag, by_option = client.many([
        {"op": "resolve", "ref": result["hf_ref"]},
        {"op": "resolve", "ref": "hf://alice/camvid-unet@v1"},
        {"op": "resolve", "ref": "hf://alice/camvid-unet", "revision": "v1"},
    ])
    folder = Path(by_sha)
    assert folder.name == result["commit_sha"]
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json",
                                                        "model.safetensors"]
    assert sha256_of(folder / "model.safetensors") == result["sha256"]
    assert by_tag == by_option == by_sha


def test_changed_push_makes_a_new_commit_and_identical_push_none(
    hub: FakeHub, client: Client, tmp_path: Path
) -> None:
    first, second = client.many([
        {"op": "push", "checkpoint": str(write_checkpoint(tmp_path / "a", seed=1)),
         "repo_id": "alice/m"},
        {"op": "push", "checkpoint": str(write_checkpoint(tmp_path / "b", seed=2)),
         "repo_id": "alice/m"},
    ])
    assert second["changed"] and second["commit_sha"] != first["commit_sha"]
    commits = hub.commit_count("alice/m")
    commit_posts = hub.state.count("POST", "/commit/main")

    again = client.push(tmp_path / "b", "alice/m")
    assert again["changed"] is False
    assert again["commit_sha"] == second["commit_sha"]
    assert hub.commit_count("alice/m") == commits
    assert hub.state.count("POST", "/commit/main") == commit_posts  # not even attempted

    old, latest = client.resolve_all([f"hf://alice/m@{first['commit_sha']}", "hf://alice/m"])
    assert sha256_of(old / "model.safetensors") == first["sha256"]  # a pin never moves
    assert sha256_of(latest / "model.safetensors") == second["sha256"]


def test_existing_tag_is_never_moved(client: Client, tmp_path: Path) -> None:
    a, b = write_checkpoint(tmp_path / "a", seed=1), write_checkpoint(tmp_path / "b", seed=2)
    first, same, moved = client.many([
        {"op": "push", "checkpoint": str(a), "repo_id": "alice/m", "tag": "v1"},
        {"op": "push", "checkpoint": str(a), "repo_id": "alice/m", "tag": "v1"},
        {"op": "push", "checkpoint": str(b), "repo_id": "alice/m", "tag": "v1"},
    ])
    assert same["changed"] is False and same["commit_sha"] == first["commit_sha"]
    assert moved == (f"HubError: push alice/m: tag 'v1' already points at "
                     f"{first['commit_sha'][:12]}; choose a new tag (tags are never moved)")


def test_offline_pull_is_served_from_the_cache(hub: FakeHub, client: Client,
                                               tmp_path: Path) -> None:
    pushed = client.push(write_checkpoint(tmp_path / "a"), "alice/m", tag="v1")
    pinned = f"hf://alice/m@{pushed['commit_sha']}"
    online, by_tag = client.resolve_all([pinned, "hf://alice/m@v1"])
    assert online == by_tag
    requests_before = len(hub.state.requests)

    dead = dead_endpoint()
    from_cache = client.resolve_all([pinned, "hf://alice/m@v1", "hf://alice/m@v2"],
                                    offline=True, endpoint=dead)
    assert from_cache[:2] == [online, online]
    assert from_cache[2] == (
        f"HubError: pull alice/m@v2: config.json is not in the local cache "
        f"({client.hf_home / 'hub'}) and offline mode is on (HF_HUB_OFFLINE=1)"
    )
    assert client.resolve(pinned, endpoint=dead) == online  # online mode, Hub unreachable
    assert len(hub.state.requests) == requests_before

    (online / "model.safetensors").unlink()  # a cached snapshot that lost its weights
    message = client.resolve(pinned, offline=True, endpoint=dead)
    assert message == (
        f"HubError: pull alice/m@{pushed['commit_sha']}: model.safetensors is not in the local "
        f"cache ({client.hf_home / 'hub'}) and offline mode is on (HF_HUB_OFFLINE=1)"
    )


def test_registry_name_pulls_the_pinned_revision(hub: FakeHub, client: Client,
                                                 tmp_path: Path) -> None:
    first, _ = client.many([
        {"op": "push", "checkpoint": str(write_checkpoint(tmp_path / "a", seed=1)),
         "repo_id": "alice/m"},
        {"op": "push", "checkpoint": str(write_checkpoint(tmp_path / "b", seed=2)),
         "repo_id": "alice/m"},  # main moves on
    ])
    registry = tmp_path / "checkpoints.yaml"
    entry = {
        "repo_id": "alice/m", "revision": first["commit_sha"], "sha256": first["sha256"],
        "published": True, "encoder": "resnet18", "decoder": "unet", "method": "finetune",
        "dataset": "camvid", "classes": ["sky", "road", "car"], "image_size": [192, 256],
        "metrics": {"val": {"miou": 0.41}}, "recipe": ["segcl finetune {data} --out {out}"],
    }
    bad = dict(entry, sha256="0" * 64)
    registry.write_text(yaml.safe_dump({"checkpoints": {"camvid-unet": entry, "camvid-bad": bad}}))
    env = {"SEGCL_REGISTRY": str(registry)}

    folder, mismatch, unknown = client.resolve_all(["camvid-unet", "camvid-bad", "camvid-x"],
                                                   env=env)
    assert folder.name == first["commit_sha"]
    assert sha256_of(folder / "model.safetensors") == first["sha256"]
    assert "sha256 mismatch for model.safetensors" in mismatch
    assert "from the registry (checkpoints.yaml)" in mismatch
    assert "registry names: camvid-bad, camvid-unet" in unknown
    offline = client.resolve("camvid-unet", env=env, offline=True, endpoint=dead_endpoint())
    assert offline == folder


def test_tampered_cache_is_refused(client: Client, tmp_path: Path) -> None:
    pushed, folder = client.many([
        {"op": "push", "checkpoint": str(write_checkpoint(tmp_path / "a")), "repo_id": "alice/m"},
        {"op": "resolve", "ref": "hf://alice/m"},
    ])
    pinned = f"hf://alice/m@{pushed['commit_sha']}"
    folder = Path(folder)
    blob = (folder / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF  # flip one byte of the cached weights
    blob.write_bytes(bytes(data))

    for offline in (False, True):
        message = client.resolve(pinned, offline=offline)
        assert message.startswith(f"HubError: pull alice/m@{pushed['commit_sha'][:12]}: "
                                  "sha256 mismatch for model.safetensors")
        assert "from the Hub's LFS metadata" in message
        assert str(blob) in message and "delete it and pull again" in message


def test_auth_and_not_found_errors(hub: FakeHub, client: Client, tmp_path: Path) -> None:
    ckpt = str(write_checkpoint(tmp_path / "a"))
    wrong = "hf_wrong_secret_987654321"
    push_op = {"op": "push", "checkpoint": ckpt, "repo_id": "alice/m"}
    bad_push, bad_pull = client.many([push_op, {"op": "resolve", "ref": "hf://alice/m"}],
                                     token=wrong)
    for message in (bad_push, bad_pull):
        assert "authentication failed" in message and "the token was rejected" in message
        assert wrong not in message and "\n" not in message

    client.many([push_op, {**push_op, "repo_id": "alice/private-m", "private": True}])
    denied, hidden = client.many([push_op, {"op": "resolve", "ref": "hf://alice/private-m"}],
                                 token=READ_TOKEN)
    assert "permission denied" in denied and READ_TOKEN not in denied
    assert "repository not found" in hidden and "private" in hidden

    missing_repo, missing_tag, missing_sha = client.resolve_all(
        ["hf://alice/nope", "hf://alice/m@v9", f"hf://alice/m@{'f' * 40}"])
    assert missing_repo == (f"HubError: pull alice/nope: repository not found on {hub.url} "
                            "(or it is private and the token cannot read it)")
    assert missing_tag == ("HubError: pull alice/m: revision 'v9' not found (check the tag, "
                           "branch or commit sha)")
    assert f"revision '{'f' * 40}' not found" in missing_sha


@pytest.mark.skipif(not os.environ.get("SEGCL_REAL_HUB_TOKEN"),
                    reason="opt-in: set SEGCL_REAL_HUB_TOKEN (a write token) to test the real Hub")
def test_real_hub_round_trip(tmp_path: Path) -> None:
    """Push to and pull from huggingface.co (Xet, CDN redirects and all), then delete the repo."""
    token = os.environ["SEGCL_REAL_HUB_TOKEN"]
    endpoint = os.environ.get("SEGCL_REAL_HUB_ENDPOINT", "https://huggingface.co")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "SEGCL_"))}
    env.update(HF_TOKEN=token, HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf_home"))
    ckpt = write_checkpoint(tmp_path / "a")
    code = r"""
import json, sys
from pathlib import Path
from huggingface_hub import HfApi
from segcl.hub.remote import push, pull
api = HfApi()
repo = f"{api.whoami()['name']}/segcl-test-{sys.argv[2]}"
try:
    r = push(Path(sys.argv[1]), repo, private=True, tag="v1")
    folder = pull(repo, r.commit_sha, sha256=r.sha256)
    again = push(Path(sys.argv[1]), repo).changed
    print(json.dumps({"sha256": r.sha256, "folder": str(folder), "again": again}))
finally:
    api.delete_repo(repo, missing_ok=True)
"""
    proc = subprocess.run([sys.executable, "-c", code, str(ckpt), uuid.uuid4().hex[:8]],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["sha256"] == sha256_of(ckpt / "model.safetensors")
    assert sha256_of(Path(out["folder"]) / "model.safetensors") == out["sha256"]
    assert out["again"] is False
