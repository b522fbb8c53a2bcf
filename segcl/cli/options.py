"""Shared option aliases so a flag is spelled the same in every command."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from segcl.config import DataConfig, check_choice, check_device
from segcl.errors import ConfigError

T = TypeVar("T")


def parse_size(text: str, option: str = "--image-size") -> tuple[int, int]:
    """``"192x256"`` (height x width) or ``"256"`` (square) -> ``(h, w)``."""
    try:
        parts = [int(p) for p in text.lower().replace(",", "x").split("x")]
    except ValueError as err:
        raise ConfigError(f"{option} must look like 192x256 (height x width), got '{text}'") \
            from err
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) <= 0:
        raise ConfigError(f"{option} must look like 192x256 (height x width), got '{text}'")
    return parts[0], parts[1]


def command_line() -> str:
    """The command as typed, for the run's config and model card."""
    return "segcl " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def parse_classes(text: str | None) -> list[str] | None:
    """``"sky,road,car"`` -> ``["sky", "road", "car"]``."""
    if not text:
        return None
    return [c.strip() for c in text.split(",") if c.strip()]


def choice(key: str) -> Callable[[Any], Any]:
    """The callback of a choice option: its value is checked against the config's vocabulary
    ``key`` (``"Class.field"`` in :data:`segcl.config.CHOICES`) as soon as it is parsed, so an
    unknown name is one ``Error:`` line before any heavy import (commands without a config,
    like ``evaluate``, get the same check)."""

    def check(value: Any) -> Any:
        if value is not None:
            check_choice(key, value)
        return value

    return check


Data = Annotated[Path, typer.Argument(help="Dataset folder (layouts: folder, camvid, voc, "
                                            "cityscapes, pet; see --layout).")]
Out = Annotated[Path, typer.Option("--out", "-o", help="Output folder.")]
Encoder = Annotated[str, typer.Option(help="Any timm model name, e.g. resnet18, convnext_tiny.")]
Decoder = Annotated[str, typer.Option(
    help="Decoder: unet, deeplabv3plus, fpn (Panoptic FPN semantic head) or segformer "
         "(SegFormer's all-MLP head).", callback=choice("FinetuneConfig.decoder"))]
ImageSize = Annotated[str, typer.Option(help="Training/inference size HxW, e.g. 192x256.")]
Layout = Annotated[str, typer.Option(help="Dataset layout: auto, folder, camvid, voc, "
                                          "cityscapes, pet.", callback=choice("DataConfig.layout"))]
Seed = Annotated[int, typer.Option(help="Seed for the labelled subset, augmentation and init.")]
LabeledFraction = Annotated[
    float | None, typer.Option(help="Use this fraction of the training labels (nested subsets: "
                                    "1/8 lies inside 1/4 for the same seed).")]
LabeledCount = Annotated[int | None, typer.Option(help="Use this many labelled training images.")]
Classes = Annotated[str | None, typer.Option(help="Comma-separated class names (folder datasets "
                                                  "without dataset.yaml).")]
IgnoreIndex = Annotated[int | None, typer.Option(help="Label value to ignore (default: the "
                                                      "dataset's, 255 for folders).")]
def device(value: str) -> str:
    """The callback of ``--device``: its spelling is checked as soon as it is parsed."""
    check_device(value)
    return value


Device = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.", callback=device)]
Workers = Annotated[int, typer.Option(min=0, help="Data-loading worker processes.")]
BatchSize = Annotated[int, typer.Option(min=1, help="Images per batch.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the final result.")]
Amp = Annotated[bool, typer.Option(help="Mixed precision on CUDA (bf16, or fp16 + grad "
                                        "scaling); ignored on CPU.")]
EvalMode = Annotated[str, typer.Option(
    "--mode", help="Inference policy for image sizes: 'resize' resizes each image to the "
                   "model's training size and upsamples the logits to the original size; "
                   "'slide' keeps the original resolution and averages overlapping windows of "
                   "the training size.", callback=choice("FinetuneConfig.eval_mode"))]
TTA = Annotated[str | None, typer.Option(
    "--tta", help="Test-time augmentation, averaged in probability space (softmax of each view, "
                  "then the mean): 'flip' (horizontal), 'scales=0.75,1,1.25' (the network input "
                  "resized by each factor, in (0, 4]) or both, 'flip,scales=0.75,1,1.25' (6 "
                  "forward passes per image). Default: none.")]
Optimizer = Annotated[str, typer.Option(help="sgd or adamw.", callback=choice("OptimConfig.name"))]
LearningRate = Annotated[float, typer.Option(help="Peak learning rate.")]
WeightDecay = Annotated[float, typer.Option(help="Weight decay (not on norms/biases).")]
WarmupSteps = Annotated[int, typer.Option(help="Linear warm-up steps before cosine decay.")]
EncoderWeights = Annotated[str | None, typer.Option(
    help="Start the encoder from pretrained weights: 'imagenet' (timm's default weights of "
         "--encoder, e.g. resnet18.a1_in1k), 'imagenet:TAG' (any timm pretrained tag, e.g. "
         "imagenet:augreg_in21k), a .safetensors file, hf://user/name or hf-hub:user/name. "
         "Hub weights (safetensors only) are downloaded once into the Hugging Face cache; "
         "offline they must be there already.")]
Cache = Annotated[str, typer.Option(
    help="Keep decoded images in memory: auto (when they fit 1/8 of the memory, at most "
         "4 GiB), on or off. Same results either way.", callback=choice("DataConfig.cache"))]
Unlabeled = Annotated[Path | None, typer.Option(help="Extra folder of unlabelled images.")]
Resume = Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint "
                                           "(its saved config.yaml is used).")]
CheckpointEvery = Annotated[str | None, typer.Option(
    help="Also save the resumable last/ checkpoint every N steps (500) or seconds (90s), "
         "mid-epoch.")]
Logger = Annotated[str, typer.Option(
    "--logger", help="Where the scalars go, comma-separated: jsonl (metrics.jsonl, always "
                     "written), tensorboard (RUN/tensorboard), mlflow (MLFLOW_TRACKING_URI), "
                     "wandb (offline unless WANDB_MODE); e.g. jsonl,tensorboard,mlflow. The "
                     "last three are extras: pip install 'segcl\\[tensorboard]'.")]
Overwrite = Annotated[bool, typer.Option(
    "--overwrite", help="Clear the run files already in --out and start again.")]


def data_config(
    data: Path | None,
    layout: str,
    image_size: str,
    labeled_fraction: float | None,
    labeled_count: int | None,
    classes: str | None,
    ignore_index: int | None,
    workers: int,
    unlabeled: Path | None,
    cache: str = "auto",
) -> DataConfig:
    """The :class:`DataConfig` of the shared data options of ``finetune`` and ``pretrain``."""
    if data is None:
        raise ConfigError("missing DATA argument (the dataset folder)")
    # absolute paths: config.yaml must mean the same data from any working directory (--resume)
    return DataConfig(root=str(data.resolve()), layout=layout, image_size=parse_size(image_size),
                      labeled_fraction=labeled_fraction, labeled_count=labeled_count,
                      classes=parse_classes(classes), ignore_index=ignore_index,
                      workers=workers, cache=cache,
                      unlabeled=str(unlabeled.resolve()) if unlabeled else None)


def saved_config(cls: type[T], out: Path, resume: bool, overwrite: bool = False,
                 steps: int | None = None, ctx: typer.Context | None = None) -> T | None:
    """With ``--resume``, the run's saved ``config.yaml``; ``steps`` (``--steps``), when given,
    sets the run's new total (the learning-rate schedule follows it). Any other option given
    to the command (``ctx``, its ``typer.Context``) is ignored, with one warning naming them.

    ``--out`` is the run: the saved config's own ``out`` never redirects it (a copied run
    continues in the copy); it is checked first (a file, or a path below one, is refused).
    ``--overwrite`` excludes ``--resume``; the old run is cleared by :func:`overwrite_run`, once
    the new configuration has been built and checked.
    """
    import dataclasses

    from segcl.config import load_yaml
    from segcl.fileio import check_target

    check_target(out, folder=True)

    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    if resume:
        if not (out / "config.yaml").is_file():
            raise ConfigError(f"{out}: nothing to resume (no config.yaml of a run there)")
        saved = load_yaml(cls, out / "config.yaml")
        if not saved.data.root:  # type: ignore[attr-defined]
            raise ConfigError(f"{out / 'config.yaml'}: no 'data.root' (the run's dataset "
                              "folder)")
        ignored = given_options(ctx, keep={"out", "resume", "steps", "quiet"})
        if ignored:
            import warnings

            warnings.warn(f"--resume continues with {out / 'config.yaml'}; ignored: "
                          + ", ".join(ignored), stacklevel=2)
        changes: dict[str, object] = {"out": str(out)}
        if steps is not None:
            changes["steps"] = steps
        return dataclasses.replace(saved, **changes)
    return None


def given_options(ctx: typer.Context | None, keep: set[str]) -> list[str]:
    """The options and arguments of the command in ``ctx`` (a ``typer.Context``, or None) that
    the user gave, on the command line or through the environment, by their command-line
    spelling, except the parameters named in ``keep``."""
    if ctx is None:
        return []
    return [p.opts[0] if p.param_type_name == "option" else (p.name or "").upper()
            for p in ctx.command.params
            if p.name not in keep and getattr(ctx.get_parameter_source(p.name or ""), "name",
                                              None) in ("COMMANDLINE", "ENVIRONMENT")]


def overwrite_run(out: Path, overwrite: bool) -> None:
    """With ``--overwrite``, clear the run files in ``out``. Commands call it after their
    config is checked, so that a refused option never costs the run it would have replaced."""
    if overwrite and out.is_dir():
        from segcl.engine.rundir import clear_run  # imports torch: only when needed

        clear_run(out)
