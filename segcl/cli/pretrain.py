"""``segcl pretrain``: contrastive pre-training with a registered method (:mod:`segcl.methods`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from segcl import methods
from segcl.cli import options as o
from segcl.cli.progress import RichProgress, results

PRETRAIN_EPILOG = """
[bold]Examples[/bold]

  segcl pretrain data/camvid --method supcon --labeled-fraction 0.125 --out runs/camvid-supcon

  segcl pretrain data/camvid --method multiscale --losses global,local,pixel \\
      --labeled-fraction 0.125 --out runs/camvid-ms

  segcl pretrain data/camvid --method simclr --epochs 200 --batch-size 32 --out runs/camvid-simclr

  segcl pretrain data/camvid --method moco --queue-size 256 --out runs/camvid-moco

  segcl pretrain data/camvid --method supcon --encoder resnet50 --encoder-weights imagenet \\
      --labeled-fraction 0.125 --out runs/camvid-supcon-in1k

  segcl pretrain data/camvid --method supcon --variant batch --max-pixels 10000 \\
      --grid 65x65 --out runs/camvid-supcon-batch

  segcl pretrain data/camvid --method supcon --labeled-fraction 0.125 \\
      --pseudo-labels runs/camvid-ce --out runs/camvid-supcon-pl

  torchrun --nproc_per_node 4 -m segcl pretrain data/camvid --method simclr --out runs/camvid-simclr

  segcl pretrain --resume --out runs/camvid-supcon

  segcl pretrain data/camvid --method simclr --logger tensorboard --out runs/camvid-simclr

Then fine-tune from the result: segcl finetune data/camvid --init runs/camvid-supcon --lr 0.007
"""


def parse_losses(text: str) -> list[str]:
    """``"global,local"`` -> ``["global", "local"]``."""
    return [t.strip().lower() for t in text.split(",") if t.strip()]


def parse_grid(text: str | None) -> tuple[int, int] | None:
    """``"65x65"`` -> ``(65, 65)``; empty / ``native`` -> None (the decoder's resolution)."""
    if not text or text.lower() == "native":
        return None
    return o.parse_size(text, "--grid")


app = typer.Typer()  # its commands join the root app (segcl.cli)


@app.command(epilog=PRETRAIN_EPILOG)
def pretrain(
    ctx: typer.Context,
    data: Annotated[Path | None, typer.Argument(help="Dataset folder (not needed with "
                                                      "--resume).")] = None,
    method: Annotated[str, typer.Option(
        help=f"Pre-training method: {methods.describe('pretrain')}")] = "supcon",
    out: o.Out = Path("runs/pretrain"),
    encoder: o.Encoder = "resnet18",
    decoder: o.Decoder = "unet",
    losses: Annotated[str, typer.Option(help="Loss terms, for a method that combines "
                                             "them: a subset of global,local,pixel.")
                      ] = "global,local,pixel",
    variant: Annotated[str, typer.Option(help="Pixel contrast per image (single) or over the "
                                              "batch (batch).")] = "single",
    image_size: o.ImageSize = "192x256",
    layout: o.Layout = "auto",
    labeled_fraction: o.LabeledFraction = None,
    labeled_count: o.LabeledCount = None,
    classes: o.Classes = None,
    ignore_index: o.IgnoreIndex = None,
    epochs: Annotated[int, typer.Option(help="Training epochs over the images.")] = 100,
    steps: Annotated[int | None, typer.Option(help="Total optimiser steps (overrides "
                                                   "--epochs; with --resume, sets the "
                                                   "run's new total).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per batch and process.")] = 8,
    optimizer: o.Optimizer = "sgd",
    lr: o.LearningRate = 0.1,
    weight_decay: o.WeightDecay = 4e-5,
    warmup_steps: o.WarmupSteps = 50,
    temperature: Annotated[float | None, typer.Option(
        help="Temperature of every term (default: 0.1 global/local, 0.07 pixel; moco "
             "0.2).")] = None,
    grid: Annotated[str | None, typer.Option(
        help="Resize pixel embeddings to HxW before the pixel loss (paper: 65x65); default: "
             "the decoder's native resolution.")] = None,
    max_pixels: Annotated[int | None, typer.Option(
        help="Random valid pixels per batch for --variant batch.")] = None,
    strength: Annotated[float, typer.Option(help="Colour distortion strength of the second "
                                                 "view.")] = 0.5,
    queue_size: Annotated[int, typer.Option(
        help="moco: keys of earlier batches kept as negatives (keep it below the number of "
             "images).")] = 256,
    key_momentum: Annotated[float, typer.Option(
        help="moco: momentum of the key encoder's moving average of the weights.")] = 0.99,
    encoder_weights: o.EncoderWeights = None,
    pseudo_labels: Annotated[str | None, typer.Option(
        help="Teacher model: pseudo-label the unlabelled images and add them to the pixel "
             "term.")] = None,
    unlabeled: o.Unlabeled = None,
    logger: o.Logger = "jsonl",
    seed: o.Seed = 0,
    workers: o.Workers = 2,
    cache: o.Cache = "auto",
    device: o.Device = "auto",
    amp: o.Amp = True,
    resume: o.Resume = False,
    overwrite: o.Overwrite = False,
    checkpoint_every: o.CheckpointEvery = None,
    quiet: o.Quiet = False,
) -> None:
    """Contrastive pre-training of an encoder (and decoder) for later fine-tuning."""
    from segcl.config import OptimConfig, PretrainConfig

    cfg = o.saved_config(PretrainConfig, out, resume, overwrite, steps, ctx)
    if cfg is None:
        cfg = PretrainConfig(
            checkpoint_every=checkpoint_every,
            data=o.data_config(data, layout, image_size, labeled_fraction, labeled_count,
                               classes, ignore_index, workers, unlabeled, cache),
            optim=OptimConfig(name=optimizer, lr=lr, weight_decay=weight_decay,
                              warmup_steps=warmup_steps),
            out=str(out), method=method, encoder=encoder, decoder=decoder,
            encoder_weights=encoder_weights, losses=parse_losses(losses), variant=variant,
            temperature=temperature, grid=parse_grid(grid), max_pixels=max_pixels,
            strength=strength, queue_size=queue_size, key_momentum=key_momentum,
            pseudo_labels=pseudo_labels, epochs=epochs, steps=steps,
            batch_size=batch_size, amp=amp, device=device, seed=seed, loggers=logger,
            command=o.command_line(),
        )
    o.overwrite_run(out, overwrite)
    from segcl.engine.pretrain import pretrain as run_pretrain  # torch: after the checks

    result = run_pretrain(cfg, RichProgress(quiet), resume=resume)
    if result.get("rank", 0) != 0:  # under torchrun only rank 0 reports
        return
    loss = result["final_loss"]
    done = "nothing left to train" if loss is None else f"final loss {loss:.4f}"
    results.print(f"{result['method']} ({' + '.join(result['losses'])}): {done} after "
                  f"{result['steps']} steps; run saved in {result['run_dir']}")
