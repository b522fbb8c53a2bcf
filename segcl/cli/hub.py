"""``segcl hub``: push, pull, list and rebuild named checkpoints."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from segcl.cli import options as o
from segcl.errors import DataError, HubError

EPILOG = """
[bold]Examples[/bold]

  segcl hub push runs/camvid-supcon alice/camvid-resnet18-supcon --tag v1

  segcl hub pull hf://alice/camvid-resnet18-supcon@v1 --out checkpoints/supcon

  segcl hub list

  segcl hub build camvid-resnet18-supcon --data data/camvid

The token comes from HF_TOKEN or `hf auth login`; HF_ENDPOINT and HF_HUB_OFFLINE=1 are honoured.
"""

app = typer.Typer(
    help="Push checkpoints to the Hugging Face Hub, pull them back (sha256-verified), list the "
    "registry of named checkpoints and rebuild one from its recipe.",
    no_args_is_help=True,
    epilog=EPILOG,
    rich_markup_mode="rich",
)
stdout = Console()

Registry = Annotated[Path | None, typer.Option(
    "--registry", help="Registry file (default: $SEGCL_REGISTRY, else the checkpoints.yaml "
                       "shipped with segcl).")]


@app.command()
def push(
    checkpoint: Annotated[Path, typer.Argument(help="Run directory (its best/ checkpoint, else "
                                                    "last/) or checkpoint folder.")],
    repo_id: Annotated[str, typer.Argument(help="Hub repository user/name (created if "
                                                "missing).")],
    private: Annotated[bool, typer.Option(help="Create the repository as private.")] = False,
    tag: Annotated[str | None, typer.Option(help="Also tag the commit, e.g. v1 (an existing tag "
                                                 "is never moved).")] = None,
    message: Annotated[str | None, typer.Option(help="Commit message.")] = None,
    quiet: o.Quiet = False,
) -> None:
    """Publish a checkpoint to a Hub repository.

    Uploads model.safetensors, config.json and a model card regenerated from config.json.
    Identical files make no new commit.
    The last line printed is the pinned reference, hf://user/name@<commit sha>.
    """
    from segcl.hub.remote import push as push_checkpoint

    result = push_checkpoint(checkpoint, repo_id, private=private, tag=tag, message=message)
    if not quiet:
        if result.changed:
            typer.echo(f"Pushed {checkpoint} to {result.url}")
        else:
            typer.echo(f"No changes: {result.url} already holds these files (no new commit)")
        typer.echo(f"commit  {result.commit_sha}")
        if result.tag:
            typer.echo(f"tag     {result.tag}")
        typer.echo(f"sha256  {result.sha256}  (model.safetensors)")
    typer.echo(result.hf_ref)


@app.command()
def pull(
    ref: Annotated[str, typer.Argument(help="hf://user/name[@revision], a registry name, or a "
                                            "local run/checkpoint folder.")],
    revision: Annotated[str | None, typer.Option(help="Branch, tag or commit sha (hf:// "
                                                      "references without @revision).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Copy the checkpoint's files "
                                                                 "into this folder.")] = None,
) -> None:
    """Download a checkpoint (sha256-verified) and print its folder.

    Files go to the Hugging Face cache (HF_HOME); with HF_HUB_OFFLINE=1 they are served from it.
    """
    from segcl.checkpoint import CHECKPOINT_FILES
    from segcl.fileio import atomic_write, check_target
    from segcl.hub.refs import resolve_model_ref

    if out is not None:
        check_target(out, folder=True)  # before downloading anything
    folder = resolve_model_ref(ref, revision)
    if out is not None and out.resolve() != folder.resolve():
        for name in CHECKPOINT_FILES:
            if (folder / name).is_file():  # copyfile follows the cache's symlinks
                atomic_write(out / name, lambda tmp, src=folder / name: shutil.copyfile(src, tmp))
        folder = out
    typer.echo(str(folder))


#: ``hub list`` columns, most important first: a narrow terminal drops them from the end
#: (never the first two), so no cell is squeezed into unreadable fragments
LIST_COLUMNS = ("name", "metric", "encoder", "weights", "decoder", "method", "dataset",
                "revision", "cached")
_KEEP = 2


def list_table(rows: list[dict[str, str]], width: int) -> Table:
    """The ``hub list`` table of ``rows``, fitted to ``width`` characters.

    Columns are dropped from the end of :data:`LIST_COLUMNS` until the table's natural width
    fits (the caption names them); the first ``_KEEP`` always stay, and a name longer than the
    terminal then folds inside its column.
    """
    kept = list(LIST_COLUMNS)
    while True:
        table = Table(title="segcl checkpoints")
        for column in kept:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*(row[c] for c in kept))
        natural = Measurement.get(stdout, stdout.options.update_width(10**4), table).maximum
        if natural <= width or len(kept) <= _KEEP:
            break
        kept.pop()
    hidden = [c for c in LIST_COLUMNS if c not in kept]
    if hidden:
        table.caption = f"not shown at {width} columns: {', '.join(hidden)}"
    return table


@app.command("list")
def list_checkpoints(registry: Registry = None) -> None:
    """List the registry's named checkpoints.

    Shows what each one is, its headline metric, where its encoder started (random or
    ImageNet weights), its pinned revision and whether it is cached. A narrow terminal drops
    the last columns (named below the table) instead of wrapping every cell.
    """
    from huggingface_hub import try_to_load_from_cache

    from segcl.hub.registry import default_registry_path, load_registry

    entries = load_registry(registry)
    if not entries:
        where = registry or default_registry_path()
        typer.echo(f"No checkpoints in {where} yet.")
        return
    rows = []
    for entry in entries.values():
        headline = entry.headline_metric()
        metric = f"{headline[0]} {headline[1]} {headline[2]:.4f}" if headline else "-"
        cached = "-"
        if entry.published and entry.repo_id and entry.revision:
            hit = try_to_load_from_cache(entry.repo_id, "model.safetensors",
                                         revision=entry.revision)
            cached = "yes" if isinstance(hit, str) else "no"
        revision = entry.revision[:12] if entry.published and entry.revision else "unpublished"
        rows.append({"name": entry.name, "metric": metric, "encoder": entry.encoder,
                     "weights": entry.encoder_weights, "decoder": entry.decoder,
                     "method": entry.method, "dataset": entry.dataset, "revision": revision,
                     "cached": cached})
    table = list_table(rows, stdout.width)
    stdout.print(table)


def _run_step(argv: list[str]) -> int:
    """Run one recipe command (``segcl ARGS``) with this interpreter; return its exit status."""
    return subprocess.run([sys.executable, "-m", "segcl", *argv], check=False).returncode


@app.command()
def build(
    name: Annotated[str, typer.Argument(help="Registry name of the checkpoint to rebuild.")],
    data: Annotated[Path, typer.Option(help="The dataset folder the recipe uses ({data}).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder ({out}); "
                                                                 "default runs/rebuild-NAME.")]
    = None,
    tolerance: Annotated[float, typer.Option(min=0, help="Largest accepted absolute difference "
                                                         "from the registry's metrics.")] = 0.01,
    registry: Registry = None,
) -> None:
    """Rebuild a registry checkpoint from its recipe and check its metrics.

    Runs the recipe's segcl commands and reads the evaluation JSON they write.
    Every metric is compared with the registry's; exit status 1 when one is outside the tolerance.
    """
    from segcl.hub.registry import (
        compare_metrics,
        evaluation_path,
        load_registry,
        read_evaluation,
        recipe_argv,
    )

    entries = load_registry(registry)
    entry = entries.get(name)
    if entry is None:
        known = ", ".join(sorted(entries)) or "none yet"
        raise HubError(f"unknown registry name '{name}' (registry names: {known})")
    if not data.exists():
        raise DataError(f"{data}: no such dataset folder")
    out = out if out is not None else Path("runs") / f"rebuild-{name}"
    steps = recipe_argv(entry, data, out)
    for index, argv in enumerate(steps, start=1):
        typer.echo(f"[{index}/{len(steps)}] segcl {shlex.join(argv)}")
        status = _run_step(argv)
        if status != 0:
            raise HubError(f"recipe step {index} of '{name}' failed with exit status {status}: "
                           f"segcl {shlex.join(argv)}")
    checks = compare_metrics(entry, read_evaluation(evaluation_path(entry, data, out)), tolerance)
    table = Table(title=f"{name}: rebuilt vs registry (tolerance {tolerance:g})")
    for column in ("split", "metric", "registry", "rebuilt", "difference", "status"):
        table.add_column(column)
    for check in checks:
        rebuilt = "missing" if check.measured is None else f"{check.measured:.4f}"
        diff = "-" if check.measured is None else f"{check.measured - check.expected:+.4f}"
        table.add_row(check.split, check.metric, f"{check.expected:.4f}", rebuilt, diff,
                      "ok" if check.ok else "[red]outside[/red]")
    stdout.print(table)
    if not all(check.ok for check in checks):
        typer.echo(f"{name}: the rebuilt checkpoint in {out} does not match the registry's "
                   f"metrics within {tolerance:g}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{name}: rebuilt in {out}; metrics match the registry within {tolerance:g}")
