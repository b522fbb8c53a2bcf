"""``segcl evaluate`` and ``segcl predict``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from segcl.cli import options as o
from segcl.cli.progress import RichProgress, console, results

EVALUATE_EPILOG = """
[bold]Examples[/bold]

  segcl evaluate runs/camvid-ce data/camvid --layout camvid --json eval.json

  segcl evaluate hf://user/camvid-unet data/camvid --split val --mode slide

  # test-time augmentation: flips and three scales, probabilities averaged
  segcl evaluate runs/camvid-ce data/camvid --tta flip,scales=0.75,1,1.25
"""

PREDICT_EPILOG = """
[bold]Examples[/bold]

  segcl predict runs/camvid-ce photos/ --out masks/

  segcl predict camvid-resnet18-unet img1.jpg img2.jpg --out masks/ --overlay

  # RGB colour masks and float16 class probabilities next to the index masks, with TTA
  segcl predict runs/camvid-ce photos/ --out masks/ --color --save-probs --tta flip

  # read the probabilities back (C x H x W), one class plane without loading the rest
  python -c "import numpy as np; p = np.load('masks/img1_probs.npy', mmap_mode='r'); print(p[2])"

  # an exported model (segcl export), run by onnxruntime: same masks, no PyTorch model code
  segcl predict camvid.onnx photos/ --out masks/ --device cpu
"""

Model = Annotated[str, typer.Argument(help="Run directory, checkpoint folder, hf://user/name"
                                           "\\[@revision], a registry name, or an .onnx file "
                                           "from `segcl export` (run by onnxruntime).")]


def metrics_table(metrics: dict[str, Any]) -> Table:
    """Per-class IoU / F1 / precision / recall and the means, as a rich table."""
    tta = metrics.get("tta", "none")
    table = Table(title=f"{metrics.get('num_images', '?')} images"
                        + ("" if tta == "none" else f", test-time augmentation {tta}"))
    for col in ("class", "IoU", "F1/Dice", "precision", "recall"):
        table.add_column(col, justify="left" if col == "class" else "right")

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v * 100:.2f}"

    for i, name in enumerate(metrics["class_names"]):
        table.add_row(name, pct(metrics["iou"][i]), pct(metrics["f1"][i]),
                      pct(metrics["precision"][i]), pct(metrics["recall"][i]))
    table.add_section()
    table.add_row("[bold]mean", f"[bold]{pct(metrics['miou'])}", pct(metrics["mean_f1"]),
                  pct(metrics["mean_precision"]), pct(metrics["mean_recall"]))
    table.caption = (f"pixel accuracy {pct(metrics['pixel_accuracy'])}, "
                     f"mean accuracy {pct(metrics['mean_accuracy'])}")
    return table


app = typer.Typer()  # its commands join the root app (segcl.cli)


@app.command(epilog=EVALUATE_EPILOG)
def evaluate(
    model: Model,
    data: o.Data,
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "val",
    layout: o.Layout = "auto",
    mode: o.EvalMode = "resize",
    batch_size: o.BatchSize = 4,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write all metrics "
                                                                 "(per class too) here.")]
    = None,
    confusion: Annotated[Path | None, typer.Option(help="Write the confusion matrix as a "
                                                        "PNG here.")] = None,
    device: o.Device = "auto",
    workers: o.Workers = 2,
    tta: o.TTA = None,
    quiet: o.Quiet = False,
) -> None:
    """mIoU, per-class IoU, F1/Dice, precision, recall and accuracy of a model on a split.

    Metrics are computed at each mask's full resolution; the ignore index is excluded.
    """
    from segcl.config import TTAConfig
    from segcl.fileio import atomic_write_text, check_target

    for target in (json_out, confusion):  # refused before the evaluation, not after it
        if target is not None:
            check_target(target)
    tta_config = TTAConfig.parse(tta)
    from segcl.engine.evaluate import evaluate as run_evaluate  # torch: after the checks

    metrics = run_evaluate(model, str(data), split=split, layout=layout, mode=mode,
                           batch_size=batch_size, device=device, workers=workers,
                           callback=RichProgress(quiet), tta=tta_config)
    if json_out is not None:
        atomic_write_text(json_out, json.dumps({"model": model, "data": str(data),
                                                "split": split, "mode": mode, **metrics},
                                               indent=2))
    if confusion is not None:
        from segcl.viz import plot_confusion

        plot_confusion(metrics["confusion_matrix"], metrics["class_names"], confusion)
    if quiet:
        miou = metrics["miou"]
        typer.echo("mIoU -" if miou is None else f"mIoU {miou * 100:.2f}")
    else:
        results.print(metrics_table(metrics))


@app.command(epilog=PREDICT_EPILOG)
def predict(
    model: Model,
    inputs: Annotated[list[Path], typer.Argument(help="Image files and folders "
                                                      "(searched recursively).")],
    out: o.Out = Path("predictions"),
    overlay: Annotated[bool, typer.Option(help="Also write NAME_overlay.jpg blends.")] = False,
    color: Annotated[bool, typer.Option(
        "--color", help="Also write NAME_color.png, an RGB mask in the dataset palette, next "
                        "to the index mask NAME.png (which is always written).")] = False,
    save_probs: Annotated[bool, typer.Option(
        "--save-probs", help="Also write NAME_probs.npy: per-class probabilities, C x H x W "
                             "float16 at the image's size (NumPy format: no extra "
                             "dependency, exact float16, np.load(..., mmap_mode='r') reads "
                             "one class without the rest); NAME.png is their argmax.")]
    = False,
    tta: o.TTA = None,
    batch_size: o.BatchSize = 8,
    mode: o.EvalMode = "resize",
    threads: Annotated[int, typer.Option(min=1, help="Threads decoding and writing "
                                                       "images.")] = 2,
    device: o.Device = "auto",
    amp: o.Amp = True,
    quiet: o.Quiet = False,
) -> None:
    """Write a palette PNG mask (original size, relative paths kept) for every input image.

    Files that cannot be read are listed at the end; the exit status is 1 if any failed.
    An .onnx model (segcl export) runs in onnxruntime with the same pre- and
    post-processing: on the CPU, or on CUDA with onnxruntime-gpu (--device cuda, or auto).
    """
    from segcl.config import TTAConfig

    tta_config = TTAConfig.parse(tta)
    from segcl.engine.predict import predict as run_predict  # torch: after the checks

    result = run_predict(model, inputs, out, batch_size=batch_size, device=device, mode=mode,
                         overlay=overlay, threads=threads, amp=amp,
                         callback=RichProgress(quiet), tta=tta_config,
                         save_probs=save_probs, color=color)
    results.print(f"wrote {len(result.written)} masks to {out}")
    if result.failed:
        console.print(f"[red]{len(result.failed)} file(s) could not be processed:")
        for _, reason in result.failed:  # each reason names its file
            console.print(f"  {reason}", markup=False, soft_wrap=True)
        raise typer.Exit(1)
