"""--encoder-weights: timm's pretrained weights by tag (from a Hugging Face cache the tests build
themselves, or from the loopback Hub stand-in), a safetensors file; clear errors otherwise.

No test reaches the network: the in-process tests run offline against a cache laid out as
huggingface_hub lays it out (``models--org--name/{refs/main, snapshots/<commit>/file}``), and the
download test talks to tests/hub_server.py on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from segcl.errors import CheckpointError, ConfigError, HubError
from segcl.models import create_model
from segcl.models.weights import load_encoder_weights
from tests.conftest import run_cli
from tests.hub_server import FakeHub, client_env, dead_endpoint


def test_timm_state_dict_loads_into_encoder(tmp_path) -> None:
    torch.manual_seed(1)
    source = timm.create_model("test_resnet", pretrained=False)  # a full classifier model
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    model = create_model("test_resnet", "unet", 3)
    loaded = load_encoder_weights(model.encoder, str(tmp_path / "w.safetensors"))
    assert loaded.tensors > 0 and loaded.repo_id is None and len(loaded.sha256) == 64
    own = model.encoder.model.state_dict()
    for k, v in source.state_dict().items():
        if k in own:
            assert torch.equal(own[k], v), k


def test_segcl_checkpoint_weights_are_accepted(tmp_path) -> None:
    src = create_model("test_resnet", "unet", 3)
    save_file(src.state_dict(), str(tmp_path / "m.safetensors"))
    dst = create_model("test_resnet", "unet", 5)
    load_encoder_weights(dst.encoder, str(tmp_path / "m.safetensors"))
    for k, v in src.encoder.state_dict().items():
        assert torch.equal(dst.encoder.state_dict()[k], v), k


def test_wrong_weights_are_refused(tmp_path) -> None:
    other = timm.create_model("test_convnext", pretrained=False)
    save_file(other.state_dict(), str(tmp_path / "w.safetensors"))
    model = create_model("test_resnet", "unet", 3)
    with pytest.raises(CheckpointError, match="test_resnet"):
        load_encoder_weights(model.encoder, str(tmp_path / "w.safetensors"))
    with pytest.raises(ConfigError, match="not found"):
        load_encoder_weights(model.encoder, str(tmp_path / "missing.safetensors"))


def test_hub_weights_offline_name_what_failed(monkeypatch, tmp_path) -> None:
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    model = create_model("test_resnet", "unet", 3)
    with pytest.raises(HubError, match=r"timm/resnet18\.a1_in1k"):
        load_encoder_weights(model.encoder, "hf-hub:timm/resnet18.a1_in1k")


# -- timm's pretrained weights by tag: --encoder-weights imagenet[:TAG] ----------------------------
COMMIT = "5f1e2d3c4b5a69788796a5b4c3d2e1f0a1b2c3d4"


def hf_cache(cache: Path, repo_id: str, files: dict[str, bytes], commit: str = COMMIT) -> Path:
    """Lay files out as huggingface_hub's cache does; returns the snapshot folder."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name, content in files.items():
        (snapshot / name).write_bytes(content)
    return snapshot


def timm_weights(arch: str, seed: int = 0) -> tuple[dict[str, torch.Tensor], bytes]:
    """A full timm classifier's state dict (as timm publishes it) and its safetensors bytes."""
    from safetensors.torch import save

    torch.manual_seed(seed)
    state = timm.create_model(arch, pretrained=False).state_dict()
    return state, save(state)


@pytest.fixture
def offline_cache(monkeypatch, tmp_path) -> Path:
    """An empty Hugging Face cache, offline mode on."""
    import huggingface_hub.constants as c

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_imagenet_loads_timm_default_tag_from_the_cache(offline_cache) -> None:
    state, blob = timm_weights("test_resnet")
    snapshot = hf_cache(offline_cache, "timm/test_resnet.r160_in1k", {"model.safetensors": blob})
    model = create_model("test_resnet", "unet", 3)
    loaded = load_encoder_weights(model.encoder, "imagenet")
    own = model.encoder.model.state_dict()
    assert loaded.tensors == len(own)
    assert all(torch.equal(own[k], state[k]) for k in own)
    assert loaded.timm_name == "test_resnet.r160_in1k"
    assert loaded.repo_id == "timm/test_resnet.r160_in1k" and loaded.revision == COMMIT
    assert loaded.filename == "model.safetensors"
    file_bytes = (snapshot / "model.safetensors").read_bytes()
    assert loaded.sha256 == hashlib.sha256(file_bytes).hexdigest()
    # an explicit tag, and the pretrained flag of the model, go through the same loader
    tagged = create_model("test_resnet", "unet", 3)
    assert load_encoder_weights(tagged.encoder, "imagenet:r160_in1k").timm_name == loaded.timm_name
    flagged = create_model("test_resnet", "unet", 3, pretrained_encoder=True)
    assert all(torch.equal(flagged.encoder.model.state_dict()[k], v) for k, v in own.items())


def test_imagenet_weights_of_a_vit_go_through_timm_filters(offline_cache) -> None:
    # features_only ViTs wrap the model (keys gain a "model." prefix): timm builds the extractor
    state, blob = timm_weights("test_vit", seed=3)
    hf_cache(offline_cache, "timm/test_vit.r160_in1k", {"model.safetensors": blob})
    model = create_model("test_vit", "unet", 2)
    load_encoder_weights(model.encoder, "imagenet")
    own = model.encoder.model.state_dict()
    assert torch.equal(own["model.patch_embed.proj.weight"], state["patch_embed.proj.weight"])


def test_offline_without_the_weights_is_one_clear_error(offline_cache) -> None:
    model = create_model("test_resnet", "unet", 3)
    with pytest.raises(HubError) as info:
        load_encoder_weights(model.encoder, "imagenet")
    message = str(info.value)
    assert message.startswith("cannot download timm/test_resnet.r160_in1k/model.safetensors")
    assert "HF_HUB_OFFLINE=1" in message and "\n" not in message
    assert "copy the weights into the Hugging Face cache" in message
    assert "pass a .safetensors file" in message
    # a cache holding only the pickle file is never read: safetensors or nothing
    hf_cache(offline_cache, "timm/test_resnet.r160_in1k", {"pytorch_model.bin": b"not read"})
    with pytest.raises(HubError, match="cannot download"):
        load_encoder_weights(model.encoder, "imagenet")


def test_unknown_tags_are_refused_before_any_work(offline_cache) -> None:
    from segcl.config import FinetuneConfig, PretrainConfig

    with pytest.raises(ConfigError, match=r"no 'nope' weights for 'test_resnet' \(its tags: "
                                          r"r160_in1k\)"):
        FinetuneConfig(encoder="test_resnet", encoder_weights="imagenet:nope")
    with pytest.raises(ConfigError, match="no 'nope' weights"):
        PretrainConfig(encoder="test_resnet", encoder_weights="imagenet:nope")
    with pytest.raises(ConfigError, match="contradicts the tag"):
        FinetuneConfig(encoder="resnet18.a1_in1k", encoder_weights="imagenet:a2_in1k")
    FinetuneConfig(encoder="resnet18.a1_in1k", encoder_weights="imagenet")  # the name's tag
    FinetuneConfig(encoder="test_resnet", encoder_weights="weights.safetensors")  # loaded later


def test_normalisation_follows_the_tag() -> None:
    from segcl.data import IMAGENET_MEAN
    from segcl.engine.data_setup import normalization

    assert normalization("vit_small_patch16_224", "imagenet:augreg_in21k")[0] == (0.5, 0.5, 0.5)
    assert normalization("vit_small_patch16_224", "imagenet:dino")[0] == tuple(IMAGENET_MEAN)


def test_finetune_records_the_weights_and_fails_offline_in_one_line(
        synthetic_data, tmp_path) -> None:
    _, blob = timm_weights("test_resnet")
    hf_home = tmp_path / "hf"
    hf_cache(hf_home / "hub", "timm/test_resnet.r160_in1k", {"model.safetensors": blob})
    args = ["finetune", str(synthetic_data), "--encoder", "test_resnet", "--encoder-weights",
            "imagenet", "--image-size", "48x64", "--steps", "2", "--batch-size", "2",
            "--workers", "0", "--warmup-steps", "1", "--quiet"]
    env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    run_cli(*args, "--out", str(tmp_path / "run"), env=env, check=True)
    config = json.loads((tmp_path / "run" / "best" / "config.json").read_text())
    weights = config["encoder_weights"]
    assert weights["source"] == "imagenet" and weights["timm_name"] == "test_resnet.r160_in1k"
    assert weights["repo_id"] == "timm/test_resnet.r160_in1k" and weights["revision"] == COMMIT
    assert config["data"]["mean"] == [0.5, 0.5, 0.5]  # the tag's normalisation
    card = (tmp_path / "run" / "best" / "README.md").read_text()
    assert f"imagenet (timm/test_resnet.r160_in1k@{COMMIT[:12]})" in card

    env = {"HF_HOME": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"}
    proc = run_cli(*args, "--out", str(tmp_path / "run2"), env=env)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("Error: cannot download timm/test_resnet.r160_in1k/model.safetensors")
    assert "copy the weights into the Hugging Face cache" in err


UPLOAD = r"""
import sys
from huggingface_hub import HfApi
api = HfApi()
api.create_repo(sys.argv[1], exist_ok=True)
api.upload_file(path_or_fileobj=sys.argv[3], path_in_repo=sys.argv[2], repo_id=sys.argv[1])
"""

LOAD = r"""
import json
from segcl.errors import SegclError
from segcl.models import create_model
from segcl.models.weights import load_encoder_weights
from tests.conftest import run_cli
from tests.hub_server import FakeHub, client_env, dead_endpoint
try:
    print(json.dumps(load_encoder_weights(create_model("test_resnet", "unet", 2).encoder,
                                          "imagenet").to_dict()))
except SegclError as err:
    print(json.dumps({"error": str(err)}))
"""


def test_download_once_then_offline_from_the_cache(tmp_path) -> None:
    """Over real HTTP (the loopback Hub stand-in): the first use downloads into HF_HOME, later
    runs offline are served from it; a repository with only a pickle file is refused."""
    token = "hf_timm_write_token_0123"
    _, blob = timm_weights("test_resnet")
    (tmp_path / "model.safetensors").write_bytes(blob)
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickled weights are never downloaded")
    hf_home = tmp_path / "hf"

    def run(code: str, *args: str, endpoint: str, offline: bool = False) -> dict:
        env = client_env(endpoint, hf_home, token, offline=offline)
        proc = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.strip().splitlines()
        return json.loads(lines[-1]) if lines else {}

    with FakeHub(tokens={token: ("timm", "write")}) as hub:
        run(UPLOAD, "timm/test_resnet.r160_in1k", "model.safetensors",
            str(tmp_path / "model.safetensors"), endpoint=hub.url)
        first = run(LOAD, endpoint=hub.url)
        assert first.get("revision") == hub.head("timm/test_resnet.r160_in1k"), first
        assert first["sha256"] == hashlib.sha256(blob).hexdigest()
    again = run(LOAD, endpoint=dead_endpoint(), offline=True)
    assert again == first

    hf_home = tmp_path / "hf-pickle"
    with FakeHub(tokens={token: ("timm", "write")}) as hub:  # a repository with a pickle only
        run(UPLOAD, "timm/test_resnet.r160_in1k", "pytorch_model.bin",
            str(tmp_path / "pytorch_model.bin"), endpoint=hub.url)
        refused = run(LOAD, endpoint=hub.url)
    assert "has no such file (segcl reads safetensors only)" in refused["error"]
    assert not list(hf_home.rglob("pytorch_model.bin"))


def test_pretrain_net_records_the_weights(offline_cache) -> None:
    from segcl.config import PretrainConfig
    from segcl.engine.pretrain import build_net
    from segcl.models import ModelConfig

    state, blob = timm_weights("test_resnet", seed=5)
    hf_cache(offline_cache, "timm/test_resnet.r160_in1k", {"model.safetensors": blob})
    cfg = PretrainConfig(method="simclr", encoder="test_resnet", encoder_weights="imagenet")
    net = build_net(cfg, ModelConfig(encoder="test_resnet", num_classes=0), ["global"], 255,
                    gather=False)
    assert net.encoder_weights["timm_name"] == "test_resnet.r160_in1k"
    assert net.encoder_weights["revision"] == COMMIT
    assert torch.equal(net.encoder.model.state_dict()["conv1.0.weight"], state["conv1.0.weight"])
