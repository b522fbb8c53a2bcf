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
from hub_server import FakeHub, client_env, dead_endpoint, write_checkpoint

WRITE_TOKEN = "hf_alice_write_0123456789"
READ_TOKEN = "hf_bob_read_0123456789"

DRIVER = r"""
import json, sys
from pathlib import Path
from segcl.errors import SegclError
args = json.loads(sys.argv[1])
try:
    if args["op"] == "push":
        from segcl.hub.remote import push
        r = push(Path(args["checkpoint"]), args["repo_id"], tag=args.get("tag"),
                 private=args.get("private", False))
        out = {"commit_sha": r.commit_sha, "changed": r.changed, "sha256": r.sha256,
               "tag": r.tag, "url": r.url, "hf_ref": r.hf_ref}
    else:
        from segcl.hub.refs import resolve_model_ref
        out = {"folder": str(resolve_model_ref(args["ref"], args.get("revision")))}
except SegclError as err:
    print(f"{type(err).__name__}: {err}", file=sys.stderr)
    sys.exit(2)
print(json.dumps(out))
"""


class Client:
    """Runs segcl's push / resolve in a fresh process against an endpoint."""

    def __init__(self, endpoint: str, hf_home: Path) -> None:
        self.endpoint = endpoint
        self.hf_home = hf_home

    def run(self, op: str, *, token: str | None = WRITE_TOKEN, offline: bool = False,
            endpoint: str | None = None, expect_error: bool = False,
            env: dict[str, str] | None = None, **args: Any) -> Any:
        environment = client_env(endpoint or self.endpoint, self.hf_home, token,
                                 offline=offline, **(env or {}))
        proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps({"op": op, **args})],
                              env=environment, capture_output=True, text=True, timeout=60)
        if expect_error:
            assert proc.returncode == 2, proc.stdout + proc.stderr
            assert "Traceback" not in proc.stderr, proc.stderr
            return proc.stderr.strip()
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def push(self, checkpoint: Path, repo_id: str, **kwargs: Any) -> dict[str, Any]:
        return self.run("push", checkpoint=str(checkpoint), repo_id=repo_id, **kwargs)

    def resolve(self, ref: str, **kwargs: Any) -> Path:
        return Path(self.run("resolve", ref=ref, **kwargs)["folder"])

    def resolve_error(self, ref: str, **kwargs: Any) -> str:
        return self.run("resolve", ref=ref, expect_error=True, **kwargs)


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

    by_sha = client.resolve(result["hf_ref"])
    assert by_sha.name == result["commit_sha"]
    assert sorted(p.name for p in by_sha.iterdir()) == ["README.md", "config.json",
                                                         "model.safetensors"]
    assert sha256_of(by_sha / "model.safetensors") == result["sha256"]
    assert client.resolve("hf://alice/camvid-unet@v1") == by_sha
    assert client.resolve("hf://alice/camvid-unet", revision="v1") == by_sha


def test_changed_push_makes_a_new_commit_and_identical_push_none(
    hub: FakeHub, client: Client, tmp_path: Path
) -> None:
    first = client.push(write_checkpoint(tmp_path / "a", seed=1), "alice/m")
    second = client.push(write_checkpoint(tmp_path / "b", seed=2), "alice/m")
    assert second["changed"] and second["commit_sha"] != first["commit_sha"]
    commits = hub.commit_count("alice/m")
    commit_posts = hub.state.count("POST", "/commit/main")

    again = client.push(tmp_path / "b", "alice/m")
    assert again["changed"] is False
    assert again["commit_sha"] == second["commit_sha"]
    assert hub.commit_count("alice/m") == commits
    assert hub.state.count("POST", "/commit/main") == commit_posts  # not even attempted

    old = client.resolve(f"hf://alice/m@{first['commit_sha']}")  # a pin never moves
    assert sha256_of(old / "model.safetensors") == sha256_of(tmp_path / "a/model.safetensors")
    latest = client.resolve("hf://alice/m")
    assert sha256_of(latest / "model.safetensors") == second["sha256"]


def test_existing_tag_is_never_moved(client: Client, tmp_path: Path) -> None:
    client.push(write_checkpoint(tmp_path / "a", seed=1), "alice/m", tag="v1")
    assert client.push(tmp_path / "a", "alice/m", tag="v1")["changed"] is False  # same commit: ok
    message = client.run("push", checkpoint=str(write_checkpoint(tmp_path / "b", seed=2)),
                         repo_id="alice/m", tag="v1", expect_error=True)
    assert "tag 'v1' already points at" in message


def test_offline_pull_is_served_from_the_cache(hub: FakeHub, client: Client,
                                               tmp_path: Path) -> None:
    pushed = client.push(write_checkpoint(tmp_path / "a"), "alice/m", tag="v1")
    pinned = f"hf://alice/m@{pushed['commit_sha']}"
    online = client.resolve(pinned)
    assert client.resolve("hf://alice/m@v1") == online
    requests_before = len(hub.state.requests)

    dead = dead_endpoint()
    assert client.resolve(pinned, offline=True, endpoint=dead) == online
    assert client.resolve("hf://alice/m@v1", offline=True, endpoint=dead) == online
    assert client.resolve(pinned, endpoint=dead) == online  # online mode, Hub unreachable
    assert len(hub.state.requests) == requests_before

    message = client.resolve_error("hf://alice/m@v2", offline=True, endpoint=dead)
    assert message.count("\n") == 0
    assert "HubError: pull alice/m@v2: not in the local cache" in message
    assert "offline mode is on (HF_HUB_OFFLINE=1)" in message
    message = client.resolve_error("hf://alice/other", endpoint=dead)
    assert "cannot be reached" in message or "cannot reach" in message


def test_registry_name_pulls_the_pinned_revision(hub: FakeHub, client: Client,
                                                 tmp_path: Path) -> None:
    first = client.push(write_checkpoint(tmp_path / "a", seed=1), "alice/m")
    client.push(write_checkpoint(tmp_path / "b", seed=2), "alice/m")  # main moves on
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

    folder = client.resolve("camvid-unet", env=env)
    assert folder.name == first["commit_sha"]
    assert sha256_of(folder / "model.safetensors") == first["sha256"]
    assert client.resolve("camvid-unet", env=env, offline=True, endpoint=dead_endpoint()) == folder

    message = client.resolve_error("camvid-bad", env=env)
    assert "sha256 mismatch for model.safetensors" in message
    assert "from the registry (checkpoints.yaml)" in message
    message = client.resolve_error("camvid-deeplab", env=env)
    assert "registry names: camvid-bad, camvid-unet" in message


def test_tampered_cache_is_refused(client: Client, tmp_path: Path) -> None:
    pushed = client.push(write_checkpoint(tmp_path / "a"), "alice/m")
    folder = client.resolve(f"hf://alice/m@{pushed['commit_sha']}")
    blob = (folder / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF  # flip one byte of the cached weights
    blob.write_bytes(bytes(data))

    for offline in (False, True):
        message = client.resolve_error(f"hf://alice/m@{pushed['commit_sha']}", offline=offline)
        assert "sha256 mismatch for model.safetensors" in message
        assert "from the Hub's LFS metadata" in message
        assert str(blob) in message and "delete it and pull again" in message


def test_auth_and_not_found_errors(hub: FakeHub, client: Client, tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "a")
    wrong = "hf_wrong_secret_987654321"
    message = client.run("push", checkpoint=str(ckpt), repo_id="alice/m", token=wrong,
                         expect_error=True)
    assert message.count("\n") == 0 and wrong not in message
    assert "authentication failed" in message and "the token was rejected" in message

    message = client.run("push", checkpoint=str(ckpt), repo_id="alice/m", token=READ_TOKEN,
                         expect_error=True)
    assert "permission denied" in message and READ_TOKEN not in message

    client.push(ckpt, "alice/private-m", private=True)
    message = client.resolve_error("hf://alice/private-m", token=READ_TOKEN)
    assert "repository not found" in message and "private" in message

    message = client.resolve_error("hf://alice/nope")
    assert message == (f"HubError: pull alice/nope: repository not found on {hub.url} "
                       "(or it is private and the token cannot read it)")
    client.push(ckpt, "alice/m")
    message = client.resolve_error("hf://alice/m@v9")
    assert "revision 'v9' not found" in message
    message = client.resolve_error(f"hf://alice/m@{'f' * 40}")
    assert "not found" in message
    message = client.resolve_error("hf://alice/m", token=wrong)  # not cached yet
    assert "authentication failed" in message and wrong not in message


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
    print(json.dumps({"sha256": r.sha256, "folder": str(folder), "again": push(Path(sys.argv[1]), repo).changed}))
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
