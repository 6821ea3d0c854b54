"""Scopes: what a budget protects — a data set, its privacy unit, and optionally a party."""

from __future__ import annotations

import dataclasses
import re

from veil.errors import ConfigurationError

__all__ = ["Scope"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclasses.dataclass(frozen=True, order=True)
class Scope:
    """A data set and the privacy unit whose loss is counted, optionally at one party.

    Written ``dataset/unit`` or ``dataset/unit@party``, e.g. ``census2000/person`` or
    ``hospitals/patient@st-marys``. Each name is 1-128 letters, digits, ``.``, ``_`` or ``-``.
    """

    dataset: str
    unit: str
    party: str | None = None

    def __post_init__(self) -> None:
        for label, value in (("dataset", self.dataset), ("privacy unit", self.unit)):
            if not isinstance(value, str) or not _NAME.match(value):
                raise ConfigurationError(
                    f"invalid {label} name {value!r}: use 1-128 letters, digits, '.', '_' or '-'"
                )
        if self.party is not None and (
            not isinstance(self.party, str) or not _NAME.match(self.party)
        ):
            raise ConfigurationError(
                f"invalid party name {self.party!r}: use 1-128 letters, digits, '.', '_' or '-'"
            )

    @classmethod
    def parse(cls, text: str | Scope) -> Scope:
        """Parse ``dataset/unit`` or ``dataset/unit@party``."""
        if isinstance(text, Scope):
            return text
        if not isinstance(text, str):
            raise ConfigurationError(f"a scope is a string like 'census2000/person', got {text!r}")
        main, sep, party = text.partition("@")
        dataset, slash, unit = main.partition("/")
        if not slash:
            raise ConfigurationError(
                f"invalid scope {text!r}: write dataset/unit or dataset/unit@party, "
                "e.g. census2000/person"
            )
        return cls(dataset, unit, party if sep else None)

    def __str__(self) -> str:
        base = f"{self.dataset}/{self.unit}"
        return f"{base}@{self.party}" if self.party else base
