"""What the command groups share: the ledger option, output helpers."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import typer
from rich.console import Console

from veil.errors import ConfigurationError

# Full width in a terminal; when piped, wide enough that tables are not truncated.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

LEDGER_OPTION = typer.Option(
    None,
    "--ledger",
    envvar="VEIL_LEDGER_URL",
    help="Ledger database: a SQLite file path or a PostgreSQL URL "
    "[default: $VEIL_LEDGER_URL, else ~/.local/share/veil/ledger.sqlite].",
    show_default=False,
)


def print_json(data: Any) -> None:
    """Print ``data`` as JSON on stdout (infinities as strings, so the output stays JSON)."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return "inf" if x > 0 else ("-inf" if x < 0 else "nan")
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x

    typer.echo(json.dumps(clean(data), indent=2, ensure_ascii=False))


def parse_enum(enum_cls: Any, value: str, option: str) -> Any:
    """An enum member from its value, or a clear error listing the choices."""
    try:
        return enum_cls(value.lower().replace("-", "_"))
    except ValueError:
        choices = ", ".join(m.value.replace("_", "-") for m in enum_cls)
        raise ConfigurationError(f"{option} must be one of: {choices}; got {value!r}") from None


def fmt(x: float, digits: int = 4) -> str:
    if math.isinf(x):
        return "∞"
    return f"{x:.{digits}g}"
