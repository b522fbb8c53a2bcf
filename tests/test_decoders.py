"""Every registered decoder: trains, round-trips through a checkpoint, feeds the methods' heads
and is reachable from the command line (``--decoder``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from segcl.checkpoint import CheckpointConfig, save_checkpoint
from segcl.cli import options
from segcl.config import ContrastConfig, DataConfig, FinetuneConfig, SemiConfig
from segcl.engine.checkpoint import load_model
from segcl.models import DECODERS, FPNDecoder, SegFormerDecoder, create_model
from tests.conftest import run_cli


def _batch(n: int = 2, size: tuple[int, int] = (64, 80)) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels by quadrant (0 top left, 1 top right and bottom left, 2 bottom right), each class
    with its own colour plus noise: learnable in a few steps."""
    g = torch.Generator().manual_seed(0)
    y = torch.zeros(n, *size, dtype=torch.long)
    y[:, size[0] // 2:, :] = 1
    y[:, :, size[1] // 2:] += 1
    colours = torch.tensor([[-1.0, 0.0, 1.0], [0.0, 1.0, -1.0], [1.0, -1.0, 0.0]])
    x = colours[y].permute(0, 3, 1, 2) + 0.3 * torch.randn(n, 3, *size, generator=g)
    return x, y


@pytest.mark.parametrize("decoder", sorted(DECODERS))
def test_a_short_training_run_reduces_the_loss(decoder: str) -> None:
    torch.manual_seed(0)
    model = create_model("test_resnet", decoder, num_classes=3).train()
    x, y = _batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("decoder", sorted(DECODERS))
def test_checkpoint_round_trip(decoder: str, tmp_path: Path) -> None:
    from segcl.data.info import DatasetInfo

    torch.manual_seed(0)
    model = create_model("test_vit", decoder, num_classes=3).eval()
    info = DatasetInfo(classes=["a", "b", "c"])
    config = CheckpointConfig.create(model.config.to_dict(), info, (0.5,) * 3, (0.25,) * 3,
                                     (48, 64), method="finetune")
    folder = save_checkpoint(tmp_path / "best", model.state_dict(), config)
    saved = json.loads((folder / "config.json").read_text())["model"]
    assert saved["decoder"] == decoder and saved["pyramid"] is True
    loaded, _ = load_model(folder)
    assert type(loaded.decoder) is DECODERS[decoder]
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_fpn_follows_the_paper_and_segformer_fuses_four_levels() -> None:
    strides, channels = [2, 4, 8, 16, 32], [8, 16, 24, 32, 40]
    fpn = FPNDecoder(channels, strides)
    assert fpn.levels == [1, 2, 3, 4]  # P2-P5
    assert [len(stages) for stages in fpn.semantic] == [1, 1, 2, 3]  # conv-GN-ReLU-2x stages
    assert (fpn.out_channels, fpn.out_stride) == (128, 4)
    assert all(lat.out_channels == 256 for lat in fpn.lateral)
    seg = SegFormerDecoder(channels, strides)
    assert [lin.in_channels for lin in seg.linear] == [16, 24, 32, 40]
    assert seg.fuse[0].in_channels == 4 * 256 and (seg.out_channels, seg.out_stride) == (256, 4)


@pytest.mark.parametrize("decoder", ["fpn", "segformer"])
def test_finetune_methods_train_on_the_decoder_features(decoder: str, synthetic_data: Path,
                                                        tmp_path: Path) -> None:
    """UniMatch's feature-perturbation branch re-runs the decoder and the cross-image contrast
    head reads its features: both work with the new decoders."""
    from segcl.engine.finetune import finetune

    cfg = FinetuneConfig(
        data=DataConfig(root=str(synthetic_data), image_size=(48, 64), labeled_count=4,
                        workers=0),
        encoder="test_resnet", decoder=decoder, out=str(tmp_path / "run"), steps=1,
        batch_size=2, log_every=1, device="cpu",
        semi=SemiConfig(enabled=True, threshold=0.0, strong_views=1),
        contrast=ContrastConfig(enabled=True, max_views=5))
    finetune(cfg)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
               .splitlines()]
    train = next(r for r in records if "split" not in r)
    assert math.isfinite(train["loss_u_fp"]) and math.isfinite(train["contrast"])


def test_help_names_every_decoder() -> None:
    text = options.Decoder.__metadata__[0].help
    assert all(name in text for name in DECODERS)


def test_cli_trains_and_pretrains_with_the_new_decoders(synthetic_data: Path,
                                                        tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from segcl.cli import app

    runner = CliRunner()
    common = ["--encoder", "test_resnet", "--image-size", "40x56", "--steps", "2",
              "--batch-size", "2", "--workers", "0", "--device", "cpu", "--quiet"]
    result = runner.invoke(app, ["pretrain", str(synthetic_data), "--method", "supcon",
                                 "--decoder", "segformer", "--out", str(tmp_path / "pre"),
                                 *common])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["finetune", str(synthetic_data), "--decoder", "segformer",
                                 "--init", str(tmp_path / "pre"), "--out", str(tmp_path / "ft"),
                                 *common])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "ft" / "best" / "config.json").read_text())
    assert config["model"]["decoder"] == "segformer"
    result = runner.invoke(app, ["finetune", str(synthetic_data), "--decoder", "fpn", "--out",
                                 str(tmp_path / "fpn"), *common])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "fpn" / "best" / "config.json").read_text())["model"][
        "decoder"] == "fpn"


def test_an_unknown_decoder_is_one_error_line(synthetic_data: Path, tmp_path: Path) -> None:
    proc = run_cli("finetune", str(synthetic_data), "--encoder", "test_resnet", "--decoder",
                   "upernet-xl", "--workers", "0", "--out", str(tmp_path / "bad"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and "--decoder" in lines[0]
    assert "'upernet-xl'" in lines[0] and "fpn" in lines[0] and "segformer" in lines[0]
