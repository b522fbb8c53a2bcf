"""The ``segcl`` command-line tool: a thin layer over the library.

Known errors (:class:`segcl.errors.SegclError`), files the system refuses (an ``OSError``
naming its file) and malformed command lines (click's usage errors) become one ``Error:`` line
and exit status 2, warnings one ``Warning:`` line; set ``SEGCL_DEBUG=1`` to see the traceback
(and Python's warning format).
"""

from __future__ import annotations

import gc
import os
import re
import sys
import warnings
from typing import Any

import typer

from segcl import __version__
from segcl.errors import ConfigError, SegclError

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
    from segcl.cli import demo, export, finetune, hub, infer, pretrain

    # each module's sub-app holds module-level commands; unnamed, they join the root app
    for module in (pretrain, finetune, infer, export, demo):
        app.add_typer(module.app)
    app.add_typer(hub.app, name="hub", help="Push, pull, list and rebuild named checkpoints.")


_register()


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (errors re-raised from DataLoader workers carry the
    worker's traceback in their message; keep its last line)."""
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    text = lines[-1] if lines else type(err).__name__
    return re.sub(r"^segcl\.errors\.\w+: ", "", text)


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str,
                      lineno: int, line: str | None = None) -> str:
    """A warning as one line, like an error (``SEGCL_DEBUG=1`` keeps Python's format)."""
    return f"Warning: {message}\n"


def refuse_empty_arguments(argv: list[str]) -> None:
    """Refuse an empty argument (``--out ""``, ``--out=``, an unset shell variable): click would
    take it as a path to the working directory, where a run or masks would then be written."""
    for i, arg in enumerate(argv):
        if arg.startswith("--") and arg.endswith("=") and "=" not in arg[:-1]:
            raise ConfigError(f"{arg[:-1]}: empty value")
        if arg == "":
            before = argv[i - 1] if i else ""
            if before.startswith("-") and "=" not in before:
                raise ConfigError(f"empty argument after {before}")
            raise ConfigError(f"argument {i + 1} is empty")


def _is_usage_error(err: BaseException) -> bool:
    """click's UsageError (typer vendors its own click, so match the class by name)."""
    return any(c.__name__ == "UsageError" for c in type(err).__mro__)


def main() -> None:
    """Entry point of the ``segcl`` console script.

    The exit happens outside the ``except`` blocks: a traceback kept alive during interpreter
    shutdown would keep the data loaders it references (and their persistent worker
    processes) alive too, and the process would hang instead of exiting.
    """
    code: Any = 0
    if not os.environ.get("SEGCL_DEBUG"):
        warnings.formatwarning = _one_line_warning
    try:
        refuse_empty_arguments(sys.argv[1:])
        code = app(standalone_mode=False)
    except (typer.Abort, KeyboardInterrupt):
        code = 130
    except SegclError as err:
        if os.environ.get("SEGCL_DEBUG"):
            raise
        typer.secho(f"Error: {one_line(err)}", err=True, fg=typer.colors.RED)
        code = 2
    except OSError as err:  # a file the system refuses (a name too long, no space left, ...)
        if err.filename is None or os.environ.get("SEGCL_DEBUG"):
            raise
        typer.secho(f"Error: {err.filename}: {err.strerror or err}", err=True,
                    fg=typer.colors.RED)
        code = 2
    except Exception as err:
        if not _is_usage_error(err) or os.environ.get("SEGCL_DEBUG"):
            raise
        ctx = getattr(err, "ctx", None)
        if type(err).__name__ == "NoArgsIsHelpError" and ctx is not None:
            typer.echo(ctx.get_help())
        else:  # a malformed flag value, an unknown option
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            typer.secho(f"Error: {err.format_message()}{hint}", err=True, fg=typer.colors.RED)
        code = 2
    if code == 130:  # Ctrl-C: raised here, or turned into Exit(130) by typer
        typer.secho("Interrupted.", err=True)
    if isinstance(code, int) and code:  # also typer.Exit(code) from a command
        gc.collect()  # free a failed command's loaders (and their workers) before exiting
        sys.exit(code)
