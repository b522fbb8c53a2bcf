"""The ``segcl`` command-line tool: a thin layer over the library.

Known errors (:class:`segcl.errors.SegclError`) become one ``Error:`` line and exit status 2;
set ``SEGCL_DEBUG=1`` to see the traceback.
"""

from __future__ import annotations

import os
import re
import sys

import typer

from segcl import __version__
from segcl.errors import SegclError

app = typer.Typer(
    name="segcl",
    help="Semantic segmentation with few labels: contrastive pre-training, fine-tuning, "
    "evaluation and prediction for any timm encoder.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"segcl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """segcl: label-efficient semantic segmentation."""


def _register() -> None:
    from segcl.cli import demo, infer, pretrain, train
    from segcl.cli.hub import app as hub_app

    pretrain.register(app)
    train.register(app)
    infer.register(app)
    demo.register(app)
    app.add_typer(hub_app, name="hub", help="Push, pull, list and rebuild named checkpoints.")


_register()


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (errors re-raised from DataLoader workers carry the
    worker's traceback in their message; keep its last line)."""
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    text = lines[-1] if lines else type(err).__name__
    return re.sub(r"^segcl\.errors\.\w+: ", "", text)


def main() -> None:
    """Entry point of the ``segcl`` console script."""
    try:
        app()
    except SegclError as err:
        if os.environ.get("SEGCL_DEBUG"):
            raise
        typer.secho(f"Error: {one_line(err)}", err=True, fg=typer.colors.RED)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("Interrupted.", err=True)
        sys.exit(130)
