"""``segcl finetune``: supervised training (optionally semi-supervised or with an auxiliary
contrast) of a segmentation model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from segcl.cli import options as o
from segcl.cli.progress import RichProgress, results

FINETUNE_EPILOG = """
[bold]Examples[/bold]

  segcl finetune data/camvid --layout camvid --labeled-fraction 0.125 --out runs/camvid-ce

  # 1/8 of the masks, the other images unlabelled: online semi-supervised (UniMatch)
  segcl finetune data/camvid --layout camvid --labeled-fraction 0.125 --semi --out runs/camvid-semi

  # the same with a mean teacher: an EMA of the weights gives the pseudo-labels (and is kept)
  segcl finetune data/camvid --layout camvid --labeled-fraction 0.125 --semi --ema 0.99 \\
      --semi-teacher ema --out runs/camvid-semi-ema

  # class-wise thresholds that rise as the model learns, lower for rare classes (FreeMatch)
  segcl finetune data/camvid --layout camvid --labeled-fraction 0.125 --semi \
      --semi-threshold-mode adaptive --out runs/camvid-semi-adaptive

  segcl finetune data/camvid --init runs/camvid-supcon --lr 0.007 --out runs/camvid-ft

  # a plain ViT at any input size, with SegFormer's all-MLP decoder
  segcl finetune data/camvid --encoder vit_small_patch16_224 --decoder segformer \\
      --image-size 360x480 --optimizer adamw --lr 0.0002 --out runs/camvid-vit

  # start from timm's ImageNet weights (any timm tag: --encoder-weights imagenet:augreg_in21k)
  segcl finetune data/camvid --encoder resnet50 --encoder-weights imagenet --out runs/camvid-in1k

  segcl finetune --resume --out runs/camvid-ce

  # validate every epoch, stop after 5 validations without a better val mIoU
  segcl finetune data/camvid --layout camvid --epochs 200 --patience 5 --out runs/camvid-es

  # rare classes: Dice + cross-entropy with median-frequency class weights, or focal + OHEM
  segcl finetune data/camvid --layout camvid --labeled-fraction 0.125 --loss ce+dice \\
      --class-weights auto --out runs/camvid-dice
  segcl finetune data/camvid --layout camvid --loss focal --ohem --out runs/camvid-focal

  # TensorBoard and MLflow next to metrics.jsonl (pip install 'segcl\\[tensorboard,mlflow]')
  segcl finetune data/camvid --layout camvid --logger jsonl,tensorboard,mlflow --out runs/camvid
  tensorboard --logdir runs/camvid

  # 4 GPUs (--batch-size is per process); cross-image contrast with the memory bank
  torchrun --nproc_per_node 4 -m segcl finetune data/camvid --contrast cross-image \\
      --memory-bank --out runs/camvid-ddp
"""


app = typer.Typer()  # its commands join the root app (segcl.cli)


@app.command(epilog=FINETUNE_EPILOG)
def finetune(
    ctx: typer.Context,
    data: Annotated[Path | None, typer.Argument(help="Dataset folder (not needed with "
                                                      "--resume).")] = None,
    out: o.Out = Path("runs/finetune"),
    encoder: o.Encoder = "resnet18",
    decoder: o.Decoder = "unet",
    image_size: o.ImageSize = "192x256",
    layout: o.Layout = "auto",
    labeled_fraction: o.LabeledFraction = None,
    labeled_count: o.LabeledCount = None,
    classes: o.Classes = None,
    ignore_index: o.IgnoreIndex = None,
    epochs: Annotated[int, typer.Option(help="Training epochs over the labelled set.")] = 30,
    steps: Annotated[int | None, typer.Option(help="Total optimiser steps (overrides "
                                                   "--epochs; with --resume, sets the "
                                                   "run's new total).")] = None,
    batch_size: o.BatchSize = 8,
    optimizer: o.Optimizer = "sgd",
    lr: o.LearningRate = 0.01,
    weight_decay: o.WeightDecay = 1e-4,
    warmup_steps: o.WarmupSteps = 50,
    val_every: Annotated[int, typer.Option(help="Validate every N epochs.")] = 1,
    patience: Annotated[int | None, typer.Option(
        help="Early stopping: stop after N validations in a row without a higher val mIoU "
             "(0 or unset: off). best/ keeps the best model; the stop is logged in "
             "metrics.jsonl.")] = None,
    init: Annotated[str | None, typer.Option(help="Start from a checkpoint: run dir, "
                                                  "checkpoint folder, hf://repo or registry "
                                                  "name.")] = None,
    init_parts: Annotated[str, typer.Option(help="auto (encoder + decoder when it matches),"
                                                 " encoder, or all.")] = "auto",
    encoder_weights: o.EncoderWeights = None,
    contrast: Annotated[str | None, typer.Option(
        help="Auxiliary loss: 'cross-image' pixel contrast (Wang et al. 2021).")] = None,
    contrast_weight: Annotated[float, typer.Option(help="Weight lambda of the auxiliary "
                                                        "contrast.")] = 0.1,
    contrast_warmup: Annotated[int, typer.Option(help="Steps with contrast weight 0.")] = 0,
    memory_bank: Annotated[bool, typer.Option(help="Pixel and region queues for the "
                                                   "cross-image contrast.")] = False,
    pseudo_labels: Annotated[str | None, typer.Option(
        help="Teacher model: pseudo-label the unlabelled images (the rest of the training "
             "split, plus --unlabeled) and train on them too.")] = None,
    unlabeled: o.Unlabeled = None,
    semi: Annotated[bool, typer.Option(
        "--semi", help="Online semi-supervised training on the unlabelled images (UniMatch: "
                       "weak-view pseudo-labels train CutMixed strong views).")] = False,
    semi_threshold: Annotated[float, typer.Option(help="Pseudo-label confidence "
                                                       "threshold (the cap of the class "
                                                       "thresholds in adaptive mode).")] = 0.95,
    semi_threshold_mode: Annotated[str, typer.Option(
        help="fixed: --semi-threshold for every pixel; adaptive: FreeMatch's class-wise "
             "thresholds, moving averages of the model's confidence that start at 1/classes, "
             "rise as it learns and are lower for rarely predicted classes (capped at "
             "--semi-threshold).", callback=o.choice("SemiConfig.threshold_mode"))] = "fixed",
    semi_threshold_momentum: Annotated[float, typer.Option(
        help="Momentum of the adaptive thresholds' moving averages, in [0, 1).")] = 0.999,
    semi_weight: Annotated[float, typer.Option(help="Weight of the unlabelled loss.")] = 1.0,
    semi_views: Annotated[int, typer.Option(help="Strong views per unlabelled image.")] = 2,
    semi_fp: Annotated[bool, typer.Option(help="UniMatch feature-perturbation "
                                               "branch.")] = True,
    semi_cutmix: Annotated[float, typer.Option(help="CutMix probability per strong "
                                                    "view.")] = 0.5,
    semi_warmup: Annotated[int, typer.Option(help="Supervised-only steps before the "
                                                  "unlabelled loss.")] = 0,
    semi_shared_forward: Annotated[bool, typer.Option(
        "--semi-shared-forward", help="Weak views share the labelled images' forward and "
        "batch-norm statistics (UniMatch).")] = False,
    unlabeled_batch_size: Annotated[int | None, typer.Option(
        help="Unlabelled images per step (default: --batch-size).")] = None,
    semi_teacher: Annotated[str, typer.Option(
        help="Where --semi's pseudo-labels come from: student (the model being trained, "
             "as UniMatch) or ema (the moving average of its weights, a mean teacher; "
             "needs --ema).")] = "student",
    ema: Annotated[float | None, typer.Option(
        help="Keep an exponential moving average of the weights with this decay (e.g. "
             "0.99, warmed up from 0); the average is what is validated, kept and "
             "exported.")] = None,
    loss: Annotated[str, typer.Option(
        help="Supervised loss of the labelled images: ce (cross-entropy), dice (soft Dice, "
             "V-Net), focal (Lin et al.) or ce+dice (their sum).")] = "ce",
    class_weights: Annotated[str | None, typer.Option(
        help="Class weights of the loss: 'auto' (median-frequency balancing over the "
             "labelled images, as SegNet) or one number per class, e.g. 1,1,2.5,4.")] = None,
    ohem: Annotated[bool, typer.Option(
        "--ohem", help="Online hard example mining: the pixel-wise loss counts only pixels "
                       "whose true-class probability is below --ohem-threshold, and at least "
                       "the --ohem-min-kept hardest per image.")] = False,
    ohem_threshold: Annotated[float, typer.Option(help="OHEM probability "
                                                       "threshold.")] = 0.7,
    ohem_min_kept: Annotated[int, typer.Option(
        help="OHEM: pixels kept at least, per image (about a fifth of a 192x256 crop, as "
             "mmseg's 100000 of 512x1024; scale it with --image-size).")] = 10000,
    focal_gamma: Annotated[float, typer.Option(help="Focusing parameter gamma of --loss "
                                                    "focal.")] = 2.0,
    logger: o.Logger = "jsonl",
    log_images: Annotated[int, typer.Option(
        help="Validation images (with true and predicted masks) the loggers show at each "
             "validation; 0: none.")] = 4,
    brightness: Annotated[float, typer.Option(help="Brightness jitter strength.")] = 0.0,
    contrast_jitter: Annotated[float, typer.Option(help="Contrast jitter strength.")] = 0.0,
    eval_mode: o.EvalMode = "resize",
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
    """Train a segmentation model on (a labelled subset of) a dataset."""
    from segcl.config import (
        ContrastConfig,
        FinetuneConfig,
        LossConfig,
        OptimConfig,
        SemiConfig,
    )
    from segcl.errors import ConfigError

    cfg = o.saved_config(FinetuneConfig, out, resume, overwrite, steps, ctx)
    if cfg is None:
        cfg = FinetuneConfig(
            checkpoint_every=checkpoint_every,
            data=o.data_config(data, layout, image_size, labeled_fraction, labeled_count,
                               classes, ignore_index, workers, unlabeled, cache),
            optim=OptimConfig(name=optimizer, lr=lr, weight_decay=weight_decay,
                              warmup_steps=warmup_steps),
            contrast=ContrastConfig(enabled=contrast is not None, weight=contrast_weight,
                                    warmup_steps=contrast_warmup, memory_bank=memory_bank),
            semi=SemiConfig(enabled=semi, threshold=semi_threshold, weight=semi_weight,
                            strong_views=semi_views, feature_perturbation=semi_fp,
                            cutmix=semi_cutmix, warmup_steps=semi_warmup,
                            batch_size=unlabeled_batch_size,
                            shared_forward=semi_shared_forward, teacher=semi_teacher,
                            threshold_mode=semi_threshold_mode,
                            threshold_momentum=semi_threshold_momentum),
            loss=LossConfig(name=loss, class_weights=class_weights, ohem=ohem,
                            ohem_threshold=ohem_threshold, ohem_min_kept=ohem_min_kept,
                            focal_gamma=focal_gamma),
            loggers=logger, log_images=log_images,
            out=str(out), encoder=encoder, decoder=decoder, init=init, init_parts=init_parts,
            encoder_weights=encoder_weights, pseudo_labels=pseudo_labels, epochs=epochs,
            steps=steps, batch_size=batch_size, val_every=val_every, patience=patience,
            eval_mode=eval_mode, ema=ema,
            brightness=brightness, contrast_jitter=contrast_jitter, amp=amp, device=device,
            seed=seed, command=o.command_line(),
        )
        if contrast not in (None, "cross-image"):
            raise ConfigError(f"unknown --contrast '{contrast}'; the choice is cross-image")
    o.overwrite_run(out, overwrite)
    from segcl.engine.finetune import finetune as run_finetune  # torch: after the checks

    result = run_finetune(cfg, RichProgress(quiet), resume=resume)
    if result.get("rank", 0) != 0:  # under torchrun only rank 0 reports
        return
    stopped = f" (early stop at step {result['steps']})" if result["stopped_early"] else ""
    results.print(
        f"best val mIoU {result['best_miou'] * 100:.2f} at step {result['best_step']}"
        f"{stopped}; run saved in {result['run_dir']}"
    )
