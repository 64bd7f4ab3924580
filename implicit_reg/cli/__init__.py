"""The ``implicit-reg`` command line (typer).

Each command is a thin wrapper around a plain typed function that tests and
Python users call directly. Commands live in their own modules in this
package and are registered on :data:`app` here.
"""

from __future__ import annotations

import typer

from .. import __version__

app = typer.Typer(
    name="implicit-reg",
    help="Optimizers, Hessian probes and experiments for studying implicit regularization.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # help texts are plain text: "[base]" is a TOML table, not rich markup to be eaten
    rich_markup_mode=None,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"implicit-reg {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_version_callback,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    """Optimizers (GD, SGD, EGR), Hessian probes and reproducible experiments."""


from . import demo as _demo  # noqa: E402,F401  (registers the command)
from . import landscape as _landscape  # noqa: E402,F401  (registers the command)
from . import plot as _plot  # noqa: E402,F401  (registers the command)
from . import probe as _probe  # noqa: E402,F401  (registers the command)
from . import reproduce as _reproduce  # noqa: E402,F401  (registers the command)
from . import summary as _summary  # noqa: E402,F401  (registers the command)
from . import sweep as _sweep  # noqa: E402,F401  (registers the command)
from . import train as _train  # noqa: E402,F401  (registers the command)
