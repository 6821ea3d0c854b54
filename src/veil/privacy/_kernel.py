"""The compiled candidate pass of the staircase discrete Gaussian (``_staircase.c``), if built.

Installing veil compiles ``_staircase.c`` with the machine's C compiler into
``_staircase_kernel.so`` beside this file (``hatch_build.py``). Where there was no compiler the
library is absent and :func:`staircase_pass` returns None for every batch: the samplers then run
their numpy code, which gives the same values from the same draws at about half the speed.

Set ``VEIL_NO_KERNEL=1`` to ignore a built library (tests compare the two paths with
:func:`disabled`).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = ["LIBRARY", "StaircasePass", "available", "disabled", "staircase_pass", "v_start_table"]

LIBRARY = Path(__file__).with_name("_staircase_kernel.so")
# The interface version of _staircase.c (veil_staircase_abi); a stale build is not used.
_ABI = 3
_P = ctypes.c_void_p
_I = ctypes.c_int64
_D = ctypes.c_double

_state = threading.local()
# Set by disabled(), for every thread (train_dpsgd draws noise on a thread of its own).
_disabled = 0


@functools.cache
def _load() -> ctypes.CDLL | None:
    if not LIBRARY.exists():
        return None
    try:
        library = ctypes.CDLL(str(LIBRARY))
    except OSError:
        return None
    if library.veil_staircase_abi() != _ABI:
        return None
    function = library.veil_staircase_pass
    function.argtypes = [_P, _I, _I, _I, _D, _D, _D, _D, _D, _P, _I, _P, _I, _P, _P, _I]
    function.argtypes += [_P, _P, _P, _P, _P, _P, _P, _P]
    function.restype = _I
    return library


def available() -> bool:
    """Whether the compiled pass is built, loadable and not switched off."""
    if os.environ.get("VEIL_NO_KERNEL") == "1" or _disabled:
        return False
    return _load() is not None


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Within the block, the samplers use their numpy code, in every thread (for tests and
    benchmarks; not meant to be entered from several threads at once)."""
    global _disabled
    _disabled += 1
    try:
        yield
    finally:
        _disabled -= 1


def v_start_table(v_thresholds: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint16]:
    """Per bucket of 32-bit draws (``_staircase.c``'s ``bucket``: 256 times the leading zeros,
    plus the 8 bits after the leading one), a lower bound on V over the bucket: the number of
    thresholds ``v_thresholds[1:]`` above the bucket's largest draw. (V decreases with the draw,
    so no draw of the bucket has a smaller V; the kernel walks up from there.)"""
    ascending = v_thresholds[1:].astype(np.int64)[::-1]

    def count_above(w: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        return ascending.size - np.searchsorted(ascending, w, side="right")

    table = np.zeros(32 * 256, dtype=np.uint16)
    bits = np.arange(256, dtype=np.int64)
    for zeros in range(24):  # the bucket is the draws [256 + b, 257 + b) << (23 - zeros)
        largest = ((257 + bits) << (23 - zeros)) - 1
        table[zeros * 256 + bits] = count_above(largest)
    for w in range(1, 1 << 8):  # 24 or more leading zeros: one draw per bucket
        zeros = 32 - w.bit_length()
        index = zeros * 256 + (((w << zeros) >> 23) & 0xFF)
        table[index] = count_above(np.array([w], dtype=np.int64))[0]
    table[31 * 256] = count_above(np.array([1], dtype=np.int64))[0]  # 0 shares 1's bucket
    # The kernel reads v_thresholds[v + 1] from here on without a bounds check.
    if int(table.max()) > v_thresholds.shape[0] - 2:
        raise ValueError("a bucket starts past the cap on V: the thresholds must end in 0")
    table.setflags(write=False)
    return table


@dataclasses.dataclass(frozen=True, slots=True)
class StaircasePass:
    """What the compiled pass returns for a batch.

    With ``later_used >= 0`` the batch is settled: ``values`` holds the accepted values in
    order, and the later rounds of exp(-δ) used that many words of ``later``. With
    ``later_used == -1`` those rounds are left to the caller: ``values`` holds the kept and
    pending values in order, and ``index``, ``delta``, ``r`` and ``j`` describe the pending ones
    (kept so far, going on to the later rounds): their positions in ``values``, δ, R and j.
    """

    values: npt.NDArray[np.int64]
    index: npt.NDArray[np.int64]
    delta: npt.NDArray[np.float64]
    r: npt.NDArray[np.int64]
    j: npt.NDArray[np.int64]
    later_used: int


class _Buffers:
    """Per-thread output buffers, reused: fresh arrays would cost their page faults each batch."""

    __slots__ = ("addresses", "counts", "delta", "index", "j", "r", "scratch", "values")

    def __init__(self, size: int) -> None:
        self.values = np.empty(size, dtype=np.int64)
        self.index = np.empty(size, dtype=np.int64)
        self.delta = np.empty(size, dtype=np.float64)
        self.r = np.empty(size, dtype=np.int64)
        self.j = np.empty(size, dtype=np.int64)
        self.counts = np.zeros(2, dtype=np.int64)  # n_pending, later_used
        self.scratch = np.empty(2 * size, dtype=np.int64)
        # The kernel's output arguments, in its order (looked up once: some µs each call).
        self.addresses = (
            self.values.ctypes.data,
            self.index.ctypes.data,
            self.delta.ctypes.data,
            self.r.ctypes.data,
            self.j.ctypes.data,
            self.counts.ctypes.data,
            self.scratch.ctypes.data,
            self.counts.ctypes.data + 8,
        )


def _scratch(m: int) -> _Buffers:
    buffers: _Buffers | None = getattr(_state, "buffers", None)
    if buffers is None or buffers.values.shape[0] < m:
        buffers = _Buffers(max(m, 1 << 15))
        _state.buffers = buffers
    return buffers


def staircase_pass(
    draws: npt.NDArray[np.uint32],
    m: int,
    *,
    k: int,
    reject_below: int,
    tau: float,
    half_inverse_variance: float,
    inverse_t: float,
    j_scale: float,
    j_offset: float,
    table: npt.NDArray[np.uint32],
    v_thresholds: npt.NDArray[np.uint32],
    v_start: npt.NDArray[np.uint16],
    later: npt.NDArray[np.uint64] | None = None,
) -> StaircasePass | None:
    """The compiled pass over ``m`` candidates' ``4 m`` draws, or None: when the library is not
    available, or when the batch has an entry the numpy code settles exactly (then run that).

    ``later``: the words that follow the draws, from which the later rounds of exp(-δ) take
    theirs (as ``_staircase._residual_exp`` would); without it those rounds are left to the
    caller whenever a candidate reaches them. The arrays returned are views of this thread's
    buffers, valid until its next call.
    """
    if not available() or m == 0:
        return None
    v_cap = v_thresholds.shape[0] - 2
    if (v_cap + 1) * k >= 1 << 31:
        return None  # the kernel's magnitudes are int32
    # The C code reads these without bounds checks: their types and extents are checked here
    # (that v_start stays within v_cap, once, where v_start_table builds it).
    if not (
        table.dtype == v_thresholds.dtype == np.uint32
        and v_start.dtype == np.uint16
        and v_start.shape == (32 * 256,)
        and table.flags.c_contiguous
        and v_thresholds.flags.c_contiguous
        and v_start.flags.c_contiguous
    ):
        raise ValueError("the staircase tables do not have the kernel's layout")
    library = _load()
    assert library is not None
    draws = np.ascontiguousarray(draws, dtype=np.uint32)
    if draws.shape[0] != 4 * m:
        raise ValueError(f"expected {4 * m} draws, got {draws.shape[0]}")
    if later is None:
        later_address, later_words = None, 0
    else:
        if later.dtype != np.uint64 or not later.flags.c_contiguous:
            raise ValueError("later must be a contiguous array of uint64 words")
        later_address, later_words = later.ctypes.data, later.shape[0]
    out = _scratch(m)
    count = library.veil_staircase_pass(
        draws.ctypes.data,
        m,
        k,
        reject_below,
        tau,
        half_inverse_variance,
        inverse_t,
        j_scale,
        j_offset,
        table.ctypes.data,
        table.shape[0] - 1,
        v_thresholds.ctypes.data,
        v_cap,
        v_start.ctypes.data,
        later_address,
        later_words,
        *out.addresses,
    )
    if count < 0:
        return None
    pending, later_used = (int(x) for x in out.counts)
    return StaircasePass(
        out.values[:count],
        out.index[:pending],
        out.delta[:pending],
        out.r[:pending],
        out.j[:pending],
        later_used,
    )
