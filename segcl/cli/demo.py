"""``segcl demo``: the whole job on a generated few-label dataset, in about three minutes on 2 CPU
cores: labels alone against labels + unlabelled images (the semi-supervised recipe)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from segcl.cli import options as o
from segcl.cli.progress import RichProgress, console
from segcl.cli.progress import results as stdout

N_TRAIN, N_VAL, SIZE, STEPS = 96, 16, (64, 96), 150
#: the semi-supervised settings of the CPU recipe (one strong view, half-size unlabelled batch)
DEMO_SEMI = {"strong_views": 1, "batch_size": 8, "threshold": 0.8}

DEMO_EPILOG = """
[bold]Example[/bold]

  segcl demo --out segcl-demo
"""


app = typer.Typer()  # its commands join the root app (segcl.cli)


@app.command(epilog=DEMO_EPILOG)
def demo(
    out: o.Out = Path("segcl-demo"),
    encoder: o.Encoder = "resnet18",
    steps: Annotated[int, typer.Option(help="Fine-tuning steps of each arm.")] = STEPS,
    labeled: Annotated[int, typer.Option(help="Labelled training images (the other "
                                              f"{N_TRAIN - 8}+ stay unlabelled).")] = 8,
    seed: o.Seed = 0,
    device: o.Device = "auto",
    quiet: o.Quiet = False,
) -> None:
    """Generate a few-label dataset; fine-tune from random init with the labels alone and
    with segcl's semi-supervised recipe; evaluate and predict with the better model."""
    from segcl.config import DataConfig, FinetuneConfig, OptimConfig, SemiConfig
    from segcl.errors import ConfigError
    from segcl.fileio import check_target

    check_target(out, folder=True)
    if (out / "runs").exists():
        raise ConfigError(f"{out}: already holds a demo; choose another --out or remove it")
    if not 1 <= labeled < N_TRAIN:
        raise ConfigError(f"--labeled must be between 1 and {N_TRAIN - 1}, got {labeled}")
    data = out / "data"
    data_cfg = DataConfig(root=str(data), image_size=SIZE, labeled_count=labeled, workers=0)
    command = (f"segcl demo --out {out} --encoder {encoder} --steps {steps} "
               f"--labeled {labeled} --seed {seed}")

    def config(name: str, semi: SemiConfig) -> FinetuneConfig:
        return FinetuneConfig(
            data=data_cfg, optim=OptimConfig(name="adamw", lr=1e-3, warmup_steps=10),
            semi=semi, out=str(out / "runs" / name), encoder=encoder,
            decoder_kwargs={"decoder_channels": [128, 64, 32, 16]}, steps=steps,
            batch_size=8, val_every=max(1, steps // 8), seed=seed, device=device,
            command=command,
        )

    # both arms' options are checked before anything is written
    arms = {"labels only": config("labels-only", SemiConfig()),
            "semi-supervised": config("semi", SemiConfig(enabled=True, **DEMO_SEMI))}
    from segcl.data.synthetic import make_synthetic_dataset
    from segcl.engine.evaluate import evaluate
    from segcl.engine.finetune import finetune
    from segcl.engine.predict import predict

    make_synthetic_dataset(data, n_train=N_TRAIN, n_val=N_VAL, size=SIZE, seed=seed)
    console.print(f"[bold]1/4[/bold] generated a synthetic dataset in {data} ({N_TRAIN} "
                  f"train images, {labeled} of them labelled; {N_VAL} val)")
    console.print(f"[bold]2/4[/bold] {encoder} + U-Net from random init, "
                  f"{labeled} labelled images alone")
    runs = {"labels only": finetune(arms["labels only"], RichProgress(quiet))}
    console.print(f"[bold]3/4[/bold] the same + {N_TRAIN - labeled} unlabelled images "
                  "(finetune --semi)")
    runs["semi-supervised"] = finetune(arms["semi-supervised"], RichProgress(quiet))
    best = max(runs.values(), key=lambda r: r["best_miou"])
    metrics = evaluate(best["run_dir"], str(data), split="val", device=device, workers=0)
    console.print("[bold]4/4[/bold] predicting masks for the validation images")
    pred = predict(best["run_dir"], [data / "val" / "images"], out / "predictions",
                   device=device, overlay=True)
    for name, r in runs.items():
        stdout.print(f"val mIoU {r['best_miou'] * 100:6.2f}  {name}  ({r['run_dir']})")
    gain = (runs["semi-supervised"]["best_miou"] - runs["labels only"]["best_miou"]) * 100
    stdout.print(
        f"gain of the unlabelled images: {gain:+.2f} mIoU (this run, seed {seed})\n"
        f"\nbest: {best['run_dir']} (val mIoU {metrics['miou'] * 100:.2f}, pixel accuracy "
        f"{metrics['pixel_accuracy'] * 100:.2f})\n"
        f"  runs:        {out / 'runs'}  (config.yaml, metrics.jsonl, curves.png, best/)\n"
        f"  predictions: {out / 'predictions'}  ({len(pred.written)} masks + overlays)\n"
        f"  next:        segcl evaluate {best['run_dir']} {data}"
    )
