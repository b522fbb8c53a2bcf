"""``segcl demo``: the whole job on a generated dataset, in about two minutes on 2 CPU cores."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from segcl.cli import options as o
from segcl.cli.progress import RichProgress, console

DEMO_EPILOG = """
[bold]Example[/bold]

  segcl demo --out segcl-demo
"""


def register(app: typer.Typer) -> None:
    @app.command(epilog=DEMO_EPILOG)
    def demo(
        out: o.Out = Path("segcl-demo"),
        encoder: o.Encoder = "resnet18",
        epochs: Annotated[int, typer.Option(help="Fine-tuning epochs.")] = 12,
        seed: o.Seed = 0,
        device: o.Device = "auto",
        quiet: o.Quiet = False,
    ) -> None:
        """Generate a small synthetic dataset, fine-tune, evaluate and predict on it."""
        from segcl.config import DataConfig, FinetuneConfig, OptimConfig
        from segcl.data.synthetic import make_synthetic_dataset
        from segcl.engine.evaluate import evaluate
        from segcl.engine.finetune import finetune
        from segcl.engine.predict import predict
        from segcl.errors import ConfigError

        if (out / "runs").exists():
            raise ConfigError(f"{out}: already holds a demo; choose another --out or remove it")
        data = make_synthetic_dataset(out / "data", n_train=64, n_val=16, size=(96, 128),
                                      seed=seed)
        console.print(f"[bold]1/3[/bold] generated a synthetic dataset in {data}")
        cfg = FinetuneConfig(
            data=DataConfig(root=str(data), image_size=(96, 128), workers=0),
            optim=OptimConfig(name="adamw", lr=1e-3, weight_decay=1e-4, warmup_steps=10),
            out=str(out / "runs" / "finetune"), encoder=encoder,
            decoder_kwargs={"decoder_channels": [128, 64, 32, 16]},
            epochs=epochs, batch_size=8, val_every=4, seed=seed, device=device,
            command=f"segcl demo --out {out} --encoder {encoder} --epochs {epochs} --seed {seed}",
        )
        console.print(f"[bold]2/3[/bold] fine-tuning {encoder} + U-Net from random init")
        result = finetune(cfg, RichProgress(quiet))
        metrics = evaluate(result["run_dir"], str(data), split="val", device=device, workers=0)
        console.print("[bold]3/3[/bold] predicting masks for the validation images")
        pred = predict(result["run_dir"], [data / "val" / "images"], out / "predictions",
                       device=device, overlay=True)
        console.print(
            f"\nval mIoU {metrics['miou'] * 100:.2f} (pixel accuracy "
            f"{metrics['pixel_accuracy'] * 100:.2f})\n"
            f"  run:         {result['run_dir']}  (config.yaml, metrics.jsonl, curves.png, best/)\n"
            f"  predictions: {out / 'predictions'}  ({len(pred.written)} masks + overlays)\n"
            f"  next:        segcl evaluate {result['run_dir']} {data}"
        )
