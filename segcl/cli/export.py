"""``segcl export``: a trained model as an ONNX file, checked against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from segcl.cli import options as o
from segcl.cli.progress import RichProgress, console, results

EXPORT_EPILOG = """
[bold]Examples[/bold]

  segcl export runs/camvid-ce --format onnx --out camvid.onnx

  segcl export hf://user/camvid-unet@v1 --out camvid.onnx --check-images photos/ --opset 18

  # then predict with onnxruntime (CPU, or CUDA with onnxruntime-gpu and --device cuda)
  segcl predict camvid.onnx photos/ --out masks/

Needs the onnx extra: pip install 'segcl\\[onnx]'.
"""


app = typer.Typer()  # its commands join the root app (segcl.cli)


@app.command(epilog=EXPORT_EPILOG)
def export(
    model: Annotated[str, typer.Argument(help="Run directory, checkpoint folder, "
                                              "hf://user/name\\[@revision] or a registry "
                                              "name.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The .onnx file to write.")]
    = Path("model.onnx"),
    export_format: Annotated[str, typer.Option("--format", help="Export format: onnx.")]
    = "onnx",
    opset: Annotated[int, typer.Option(help="ONNX opset of the graph (11 to 20).")] = 17,
    check: Annotated[bool, typer.Option(help="Run the exported model with onnxruntime next "
                                             "to PyTorch and print max |logit diff| and "
                                             "arg-max agreement.")] = True,
    check_images: Annotated[Path | None, typer.Option(
        help="Images (a folder or a file) for the check; default: the validation images "
             "of the checkpoint's dataset when found, else generated images.")] = None,
    check_count: Annotated[int, typer.Option(help="Images the check uses.")] = 8,
    max_diff: Annotated[float, typer.Option(help="Largest accepted max |logit diff|; exit "
                                                 "status 1 above it.")] = 1e-3,
    quiet: o.Quiet = False,
) -> None:
    """Export a model to ONNX for onnxruntime, TensorRT and other runtimes.

    Batch, height and width are dynamic where the architecture allows. The checkpoint's
    config (classes, palette, normalisation, image size) and the opset are stored in the
    ONNX metadata, so `segcl predict model.onnx` needs nothing else.
    """
    from segcl.config import ExportConfig
    from segcl.fileio import check_target

    cfg = ExportConfig(model=model, out=str(out), format=export_format, opset=opset,
                       check=check, check_images=str(check_images) if check_images else None,
                       check_count=check_count, max_diff=max_diff)
    check_target(out)  # before the model is loaded and traced, not after
    from segcl.engine.export import export as run_export  # torch: after the checks

    result = run_export(cfg, RichProgress(quiet))
    results.print(f"wrote {result.path} (ONNX opset {result.opset}, dynamic axes: "
                  f"{', '.join(result.dynamic_axes)}; {result.size_bytes / 2**20:.1f} MiB)",
                  markup=False, soft_wrap=True)
    for c in result.checks:
        results.print(f"onnxruntime vs PyTorch at {c.size[0]}x{c.size[1]} on {c.images} "
                      f"images: max |logit diff| {c.max_abs_diff:.3g}, argmax agreement "
                      f"{c.argmax_agreement * 100:.4f}%", markup=False, soft_wrap=True)
    if not result.ok:
        console.print(f"[red]max |logit diff| {result.max_abs_diff:.3g} is above --max-diff "
                      f"{cfg.max_diff:g}")
        raise typer.Exit(1)
