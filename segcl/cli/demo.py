"""``segcl demo``: the whole job on a generated dataset, in about two minutes on 2 CPU cores."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from segcl.cli import options as o
from segcl.cli.progress import RichProgress, console
from segcl.cli.progress import results as stdout

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
        pretrain: Annotated[bool, typer.Option(
            help="Also pre-train with label-based pixel contrast (supcon) and fine-tune from it, "
                 "to compare with and without pre-training.")] = True,
        seed: o.Seed = 0,
        device: o.Device = "auto",
        quiet: o.Quiet = False,
    ) -> None:
        """Generate a synthetic dataset; pre-train, fine-tune, evaluate and predict on it."""
        from segcl.config import DataConfig, FinetuneConfig, OptimConfig, PretrainConfig
        from segcl.data.synthetic import make_synthetic_dataset
        from segcl.engine.evaluate import evaluate
        from segcl.engine.finetune import finetune
        from segcl.engine.predict import predict
        from segcl.engine.pretrain import pretrain as run_pretrain
        from segcl.errors import ConfigError

        if (out / "runs").exists():
            raise ConfigError(f"{out}: already holds a demo; choose another --out or remove it")
        size = (96, 128)
        data = make_synthetic_dataset(out / "data", n_train=64, n_val=16, size=size, seed=seed)
        data_cfg = DataConfig(root=str(data), image_size=size, labeled_count=16, workers=0)
        console.print(f"[bold]1/4[/bold] generated a synthetic dataset in {data} "
                      f"(64 train images, 16 of them labelled; 16 val)")
        decoder_kwargs = {"decoder_channels": [128, 64, 32, 16]}
        command = f"segcl demo --out {out} --encoder {encoder} --epochs {epochs} --seed {seed}"

        def fine_tune(name: str, init: str | None) -> dict:
            cfg = FinetuneConfig(
                data=data_cfg, optim=OptimConfig(name="adamw", lr=1e-3, warmup_steps=10),
                out=str(out / "runs" / name), encoder=encoder, decoder_kwargs=decoder_kwargs,
                init=init, epochs=epochs * 4, batch_size=8, val_every=epochs, seed=seed,
                device=device, command=command,
            )
            return finetune(cfg, RichProgress(quiet))

        console.print(f"[bold]2/4[/bold] fine-tuning {encoder} + U-Net from random init")
        scratch = fine_tune("finetune", None)
        runs = {"random init": scratch}
        if pretrain:
            console.print("[bold]3/4[/bold] supcon pre-training on the labelled images, "
                          "then fine-tuning from it")
            pre = PretrainConfig(
                data=data_cfg, out=str(out / "runs" / "supcon"), method="supcon",
                encoder=encoder, decoder_kwargs=decoder_kwargs, grid=(24, 32),
                # AdamW as in fine-tuning: 48 steps of SGD at lr 0.1 left an encoder that
                # fine-tuned far worse (see CHANGELOG)
                optim=OptimConfig(name="adamw", lr=1e-3, warmup_steps=5),
                steps=epochs * 4, batch_size=8, seed=seed, device=device, command=command,
            )
            run_pretrain(pre, RichProgress(quiet))
            runs["supcon pre-training"] = fine_tune("supcon-finetune", pre.out)
        best = max(runs.values(), key=lambda r: r["best_miou"])
        metrics = evaluate(best["run_dir"], str(data), split="val", device=device, workers=0)
        console.print("[bold]4/4[/bold] predicting masks for the validation images")
        pred = predict(best["run_dir"], [data / "val" / "images"], out / "predictions",
                       device=device, overlay=True)
        for name, r in runs.items():
            stdout.print(f"val mIoU {r['best_miou'] * 100:6.2f}  {name}  ({r['run_dir']})")
        stdout.print(
            f"\nbest: {best['run_dir']} (val mIoU {metrics['miou'] * 100:.2f}, pixel accuracy "
            f"{metrics['pixel_accuracy'] * 100:.2f})\n"
            f"  runs:        {out / 'runs'}  (config.yaml, metrics.jsonl, curves.png, best/)\n"
            f"  predictions: {out / 'predictions'}  ({len(pred.written)} masks + overlays)\n"
            f"  next:        segcl evaluate {best['run_dir']} {data}"
        )
