"""``veil``: the entry point. Turns every error into one readable line and an exit code."""

from __future__ import annotations

import logging
import sys
import traceback

import typer
from rich.console import Console

from veil._version import __version__
from veil.cli import audit, certs, demo, fl, he, ledger, privacy, release
from veil.errors import VeilError

app = typer.Typer(
    name="veil",
    help=(
        "veil: get value from sensitive data without exposing the people in it. "
        "Differentially private statistics, federated learning, one persistent privacy ledger, "
        "and (as they land) encrypted scoring and privacy audits."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(audit.app, name="audit")
app.add_typer(certs.app, name="certs")
app.add_typer(fl.app, name="fl")
app.add_typer(he.app, name="he")
app.add_typer(ledger.app, name="ledger")
app.add_typer(privacy.app, name="privacy")
app.add_typer(release.app, name="release")
app.command(name="demo")(demo.demo)

_err = Console(stderr=True, highlight=False, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"veil {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", help="Print the version and exit.", callback=_version, is_eager=True
    ),
    debug: bool = typer.Option(
        False, "--debug", help="Show the full traceback when something fails."
    ),
) -> None:
    """veil command line."""


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 error, 2 bad usage, 70 bug)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    # dp-accounting logs (through absl) each Rényi order it drops as numerically unstable; the
    # epsilon it returns is still a valid bound, so the command line does not show them.
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        app(args=args, prog_name="veil")  # parses, runs, and exits through SystemExit
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except VeilError as exc:
        if debug:
            traceback.print_exc()
        _err.print(f"error: {exc}", markup=False)
        return 1
    except KeyboardInterrupt:
        _err.print("interrupted")
        return 130
    except Exception as exc:
        if debug:
            traceback.print_exc()
        else:
            _err.print(
                f"internal error: {type(exc).__name__}: {exc} "
                "(this is a bug in veil; run again with --debug for the traceback)",
                markup=False,
            )
        return 70
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
