"""Small operations on engine results (dicts of numpy columns), NULL keys included."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["factorize", "merge_sums", "plain", "row_positions"]

Frame = dict[str, npt.NDArray[Any]]


def plain(value: Any) -> Any:
    """A Python scalar for a numpy one (keys compare and serialise as plain values)."""
    return value.item() if isinstance(value, np.generic) else value


def factorize(column: npt.NDArray[Any]) -> tuple[npt.NDArray[Any], npt.NDArray[np.int64]]:
    """Distinct values and each row's index among them (NULL, i.e. None, included)."""
    try:
        uniques, inverse = np.unique(column, return_inverse=True)
        return uniques, inverse.astype(np.int64).reshape(-1)
    except TypeError:  # None among values: factorise in Python
        index: dict[Any, int] = {}
        codes = np.fromiter(
            (index.setdefault(plain(v), len(index)) for v in column.tolist()),
            dtype=np.int64,
            count=len(column),
        )
        return np.array(list(index), dtype=object), codes


def row_positions(
    columns: list[npt.NDArray[Any]], keys: list[tuple[Any, ...]], length: int
) -> npt.NDArray[np.int64]:
    """For each row of ``columns`` (the group columns of an engine result), the position of its
    key in ``keys``, or -1; vectorised over rows (a factorisation per column)."""
    if not columns:
        return np.zeros(length, dtype=np.int64)
    codes = np.zeros(length, dtype=np.int64)
    uniques_per_column = []
    for col in columns:
        uniques, inverse = factorize(col)
        codes = codes * len(uniques) + inverse
        uniques_per_column.append(uniques)
    combos, inverse = np.unique(codes, return_inverse=True)
    position = {k: i for i, k in enumerate(keys)}
    sizes = [len(u) for u in uniques_per_column]
    combo_position = np.empty(len(combos), dtype=np.int64)
    for j, code in enumerate(combos.tolist()):
        parts = []
        for size in reversed(sizes):
            code, digit = divmod(code, size)
            parts.append(digit)
        key = tuple(plain(u[d]) for u, d in zip(uniques_per_column, reversed(parts), strict=True))
        combo_position[j] = position.get(key, -1)
    return combo_position[inverse]


def merge_sums(frames: list[Frame], keys: list[str], sums: list[str]) -> Frame:
    """One row per distinct key over ``frames``, with the ``sums`` columns added up (a NULL
    sum counts as 0)."""
    frames = [f for f in frames if len(f[keys[0]])]
    if not frames:
        return {c: np.zeros(0) for c in [*keys, *sums]}
    if len(frames) == 1:
        return frames[0]
    columns = {c: np.concatenate([np.asarray(f[c], dtype=object) for f in frames]) for c in keys}
    n = len(columns[keys[0]])
    codes = np.zeros(n, dtype=np.int64)
    for c in keys:
        uniques, inverse = factorize(columns[c])
        codes = codes * len(uniques) + inverse
    combos, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
    out: Frame = {c: columns[c][first] for c in keys}
    for c in sums:
        values = np.concatenate([np.asarray(f[c], dtype=object) for f in frames])
        numeric = np.array([0.0 if v is None else float(v) for v in values.tolist()])
        total = np.zeros(len(combos))
        np.add.at(total, inverse.reshape(-1), numeric)
        out[c] = total
    return out
