"""Plots (matplotlib, an optional extra: ``pip install 'veil[reports]'``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import numpy.typing as npt

from veil.errors import MissingDependencyError

__all__ = ["epsilon_plot", "have_matplotlib", "image_grid", "line_plot", "pmf_plot", "roc_plot"]


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


def roc_plot(
    path: Path,
    curves: Mapping[str, tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]],
    *,
    title: str,
    dp_limit: tuple[float, float] | None = None,
) -> None:
    """ROC curves ``name -> (fpr, tpr)`` on log-log axes (low false-positive rates are where an
    attack matters), with chance and, if given ``(epsilon, delta)``, the DP limit
    ``TPR = min(1, e^ε FPR + δ)``, saved as a PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 5.0), dpi=120)
    floor = 1e-4
    grid = np.logspace(-4, 0, 200)
    ax.plot(grid, grid, color="#999999", ls="--", lw=1, label="chance")
    if dp_limit is not None:
        eps, delta = dp_limit
        ax.plot(
            grid,
            np.minimum(1.0, np.exp(eps) * grid + delta),
            color="#c0392b",
            ls=":",
            lw=1.5,
            label=f"(ε={eps:g}, δ={delta:g})-DP limit",
        )
    for name, (fpr, tpr) in curves.items():
        ax.plot(np.maximum(fpr, floor), np.maximum(tpr, floor), lw=1.5, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor, 1)
    ax.set_ylim(floor, 1)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def epsilon_plot(path: Path, rows: Sequence[tuple[str, float, float]], *, title: str) -> None:
    """Horizontal bars ``(label, empirical lower bound, claimed epsilon)``: each audit's bound
    with its claim marked, saved as a PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 0.9 + 0.6 * len(rows)), dpi=120)
    y = np.arange(len(rows))
    lower = [r[1] for r in rows]
    ax.barh(y, lower, color="#4c78a8", height=0.5, label="empirical ε (lower bound)")
    for i, (_, _, claim) in enumerate(rows):
        ax.plot([claim, claim], [i - 0.35, i + 0.35], color="#c0392b", lw=2.5)
    ax.plot([], [], color="#c0392b", lw=2.5, label="claimed ε")
    ax.set_yticks(y, [r[0] for r in rows])
    ax.set_xlabel("epsilon")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def image_grid(
    path: Path, rows: Sequence[tuple[str, Sequence[npt.NDArray[np.float64]]]], *, side: int
) -> None:
    """Square grey images in rows ``(label, images)`` (each image a flat vector of ``side²``
    values in [0, 1]), saved as a PNG."""
    plt = _pyplot()
    cols = max(len(images) for _, images in rows)
    fig, axes = plt.subplots(
        len(rows), cols, figsize=(1.1 * cols + 1.6, 1.1 * len(rows)), dpi=120, squeeze=False
    )
    for r, (label, images) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                img = np.clip(np.asarray(images[c], dtype=np.float64).reshape(side, side), 0, 1)
                ax.imshow(img, cmap="gray_r", vmin=0, vmax=1)
            else:
                ax.axis("off")
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
