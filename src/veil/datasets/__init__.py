"""Real data bundled with veil (see ``data/README.md`` for sources and licences)."""

from __future__ import annotations

import csv
import dataclasses
from importlib import resources

import numpy as np
import numpy.typing as npt

__all__ = ["Census2000", "census2000", "data_path"]


def data_path(name: str) -> str:
    """The path of a bundled data file, e.g. ``data_path("census2000.csv")``."""
    return str(resources.files("veil.datasets").joinpath("data", name))


@dataclasses.dataclass(frozen=True)
class Census2000:
    """The US Census 2000 PUMS excerpt: one row per person."""

    state: npt.NDArray[np.str_]
    puma: npt.NDArray[np.int64]
    educ: npt.NDArray[np.int64]
    lweekinc: npt.NDArray[np.float64]
    """Natural log of weekly income (dollars)."""
    exper: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.state.size)


def census2000() -> Census2000:
    """Load the bundled Census 2000 excerpt (29,501 people)."""
    with open(data_path("census2000.csv"), newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return Census2000(
        state=np.array([r["state"] for r in rows]),
        puma=np.array([int(r["puma"]) for r in rows], dtype=np.int64),
        educ=np.array([int(r["educ"]) for r in rows], dtype=np.int64),
        lweekinc=np.array([float(r["lweekinc"]) for r in rows], dtype=np.float64),
        exper=np.array([int(r["exper"]) for r in rows], dtype=np.int64),
    )
