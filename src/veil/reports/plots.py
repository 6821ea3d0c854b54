"""Plots (matplotlib, an optional extra: ``pip install 'veil[reports]'``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import numpy.typing as npt

from veil.errors import MissingDependencyError

__all__ = ["have_matplotlib", "line_plot", "pmf_plot"]


def _pyplot() -> ModuleType:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError("matplotlib", "reports") from None
    return plt


def have_matplotlib() -> bool:
    try:
        _pyplot()
    except MissingDependencyError:
        return False
    return True


def line_plot(
    path: Path,
    *,
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    xlabel: str,
    ylabel: str,
    title: str,
    logx: bool = False,
    logy: bool = False,
) -> None:
    """Several named lines over the same x values, saved as a PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for name, ys in series.items():
        ax.plot(x, ys, marker="o", markersize=3, label=name)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def pmf_plot(
    path: Path,
    panels: Sequence[
        tuple[str, npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]]
    ],
) -> None:
    """Side-by-side panels ``(title, support, observed counts, expected counts)`` as a PNG."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), dpi=120)
    for ax, (title, support, observed, expected) in zip(np.atleast_1d(axes), panels, strict=True):
        ax.bar(support, observed, width=1.0, color="#9ecae1", label="drawn (secure generator)")
        ax.plot(support, expected, color="#08519c", lw=1.5, label="exact pmf x n")
        ax.set_title(title)
        ax.set_xlabel("noise value")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
