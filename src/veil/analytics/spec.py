"""Table declarations: the public facts a release may use.

A declaration names the privacy unit (the column identifying a person; without one, each row is
its own unit), the bounds of each numeric column that is aggregated, the contribution limits
per unit, and optionally the public keys of grouping columns. Nothing here is read from the
data: bounds and keys derived from the data would themselves leak.

Declared in Python::

    TableSpec("census", privacy_unit="person_id", bounds={"lweekinc": (0.0, 10.0)},
              max_groups_per_unit=1, max_rows_per_group=1)

or in TOML (``veil release --spec tables.toml``)::

    [census]
    privacy_unit = "person_id"          # omit: each row is a unit
    max_groups_per_unit = 1
    max_rows_per_group = 1
    [census.bounds]
    lweekinc = [0.0, 10.0]
    [census.keys]
    state = ["Alabama", "Alaska"]        # public keys: every one gets an answer
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from veil.errors import ConfigurationError

__all__ = ["TableSpec", "load_specs"]


def _check_name(kind: str, name: object) -> str:
    if not isinstance(name, str) or not name or not name.replace("_", "a").isalnum():
        raise ConfigurationError(
            f"{kind} {name!r} must be a plain identifier (letters, digits, '_')"
        )
    return name


@dataclasses.dataclass(frozen=True)
class TableSpec:
    """What may be assumed about a table without looking at it.

    ``bounds`` maps a column to ``(low, high)``: values are clamped to it before aggregation,
    so one row moves a sum by at most ``max(|low|, |high|)``. ``keys`` maps a grouping column
    to its public values; grouping by a column without declared keys selects the groups to
    release privately (and costs a delta).
    """

    name: str
    privacy_unit: str | None = None
    bounds: Mapping[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    keys: Mapping[str, tuple[Any, ...]] = dataclasses.field(default_factory=dict)
    max_groups_per_unit: int = 1
    max_rows_per_group: int = 1

    def __post_init__(self) -> None:
        _check_name("table name", self.name)
        if self.privacy_unit is not None:
            _check_name("privacy unit column", self.privacy_unit)
        bounds: dict[str, tuple[float, float]] = {}
        for column, pair in dict(self.bounds).items():
            _check_name("column", column)
            try:
                low, high = (float(v) for v in pair)
            except (TypeError, ValueError):
                raise ConfigurationError(
                    f"bounds of {column!r} must be two numbers (low, high), got {pair!r}"
                ) from None
            if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
                raise ConfigurationError(
                    f"bounds of {column!r} must be finite with low < high, got ({low}, {high})"
                )
            bounds[column] = (low, high)
        object.__setattr__(self, "bounds", bounds)
        keys: dict[str, tuple[Any, ...]] = {}
        for column, values in dict(self.keys).items():
            _check_name("column", column)
            raw: object = values
            if isinstance(raw, str | bytes) or not isinstance(raw, Sequence):
                raise ConfigurationError(f"keys of {column!r} must be a list of values")
            unique = tuple(dict.fromkeys(values))
            if not unique:
                raise ConfigurationError(f"keys of {column!r} must not be empty")
            keys[column] = unique
        object.__setattr__(self, "keys", keys)
        for label in ("max_groups_per_unit", "max_rows_per_group"):
            value = getattr(self, label)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(f"{label} must be an integer >= 1, got {value!r}")
        if self.privacy_unit is None and (self.max_groups_per_unit, self.max_rows_per_group) != (
            1,
            1,
        ):
            raise ConfigurationError(
                "without a privacy unit each row is its own unit: it contributes one row to one "
                "group, so max_groups_per_unit and max_rows_per_group must be 1"
            )

    def replace(self, **changes: Any) -> TableSpec:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (part of what identifies a cached release)."""
        return {
            "name": self.name,
            "privacy_unit": self.privacy_unit,
            "bounds": {k: list(v) for k, v in sorted(self.bounds.items())},
            "keys": {k: list(v) for k, v in sorted(self.keys.items())},
            "max_groups_per_unit": self.max_groups_per_unit,
            "max_rows_per_group": self.max_rows_per_group,
        }


def load_specs(path: str | Path) -> dict[str, TableSpec]:
    """Read table declarations from a TOML file: one table per top-level section."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigurationError(f"no such table declaration file: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path} is not valid TOML: {exc}") from None
    specs = {}
    allowed = {"privacy_unit", "bounds", "keys", "max_groups_per_unit", "max_rows_per_group"}
    for name, section in data.items():
        if not isinstance(section, dict):
            raise ConfigurationError(f"{path}: [{name}] must be a table declaration section")
        unknown = set(section) - allowed
        if unknown:
            raise ConfigurationError(
                f"{path}: [{name}] has unknown settings {sorted(unknown)}; known: {sorted(allowed)}"
            )
        specs[name] = TableSpec(name=name, **section)
    return specs
