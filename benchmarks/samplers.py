"""Noise samplers: veil's exact discrete samplers against numpy's float samplers and OpenDP.

Run from the repository root::

    .venv/bin/python benchmarks/samplers.py [--n 1000000] [--repeats 5] [--opendp-repeats 1]

For a typical and a large scale (and, for the Gaussian, the grid noise of one DP-SGD step of
benchmarks/dpsgd.py's MLP, 524,739) it times, in the same process:

* veil's ``discrete_laplace`` / ``discrete_gaussian`` driven by ``SecureRandom`` (exact
  integer samplers, AES-CTR keystream under a fresh key per request); for the Gaussian from
  σ = 16 on, also with its compiled candidate pass switched off (the numpy code that runs where
  veil was installed without a C compiler; the same values from the same draws);
* numpy's ``Generator.laplace`` / ``Generator.normal`` (PCG64, floating point): the speed
  floor of "insecure float noise", which is neither exact nor cryptographically seeded;
* OpenDP's ``make_laplace`` / ``make_gaussian`` measurements on a vector of ``n`` integers
  (discrete Laplace / discrete Gaussian, exact, OpenSSL's CSPRNG). The time includes passing
  the list of ``n`` ints to Rust and back, which is measured separately with
  ``make_identity`` and printed, so it can be subtracted.

It prints samples per second (``n`` / median time), nanoseconds per sample, and the ratios
veil/numpy and veil/OpenDP (ratios of throughputs: above 1 means veil is faster). OpenDP is
optional (``pip install 'veil[bench]'``); without it those rows are skipped.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import numpy as np

from _harness import machine
from veil.privacy import _kernel
from veil.privacy.random import SecureRandom
from veil.privacy.samplers import discrete_gaussian, discrete_laplace

# (distribution, scale): the scale is the Laplace scale b or the Gaussian sigma. 524,739 grid
# steps is the noise of one DP-SGD step of the MLP in benchmarks/dpsgd.py (NoisySum's grid).
CASES = [
    ("laplace", 10.0),
    ("laplace", 1e4),
    ("gaussian", 10.0),
    ("gaussian", 1e4),
    ("gaussian", 524_739.0),
]


@dataclass(frozen=True)
class Row:
    distribution: str
    scale: float
    sampler: str
    exact: str
    csprng: str
    seconds: float

    def rate(self, n: int) -> float:
        return n / self.seconds


def median_seconds(run: Callable[[], object], repeats: int, *, warm_up: bool) -> float:
    if warm_up:
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def veil_sampler(distribution: str, scale: float, n: int) -> Callable[[], object]:
    rng = SecureRandom()
    if distribution == "laplace":
        return lambda: discrete_laplace(rng, n, scale=scale)
    return lambda: discrete_gaussian(rng, n, sigma=scale)


def veil_numpy_pass(scale: float, n: int) -> Callable[[], object]:
    """veil's discrete Gaussian with its compiled candidate pass switched off (σ >= 16)."""
    rng = SecureRandom()

    def run() -> object:
        with _kernel.disabled():
            return discrete_gaussian(rng, n, sigma=scale)

    return run


def numpy_sampler(distribution: str, scale: float, n: int) -> Callable[[], object]:
    generator = np.random.default_rng()
    if distribution == "laplace":
        return lambda: generator.laplace(0.0, scale, n)
    return lambda: generator.normal(0.0, scale, n)


def load_opendp() -> Any | None:
    try:
        import opendp.prelude as dp  # an optional peer, imported lazily
    except ImportError:
        return None
    dp.enable_features("contrib")
    return dp


def opendp_sampler(dp: Any, distribution: str, scale: float, n: int) -> Callable[[], object]:
    domain = dp.vector_domain(dp.atom_domain(T="i64"))
    if distribution == "laplace":
        measurement = dp.m.make_laplace(domain, dp.l1_distance(T="i64"), scale=scale)
    else:
        measurement = dp.m.make_gaussian(domain, dp.l2_distance(T="i64"), scale=scale)
    data = [0] * n
    return lambda: measurement(data)


def opendp_round_trip(dp: Any, n: int, repeats: int) -> float:
    """Seconds to pass ``n`` ints to OpenDP and back without noise (make_identity)."""
    dp.enable_features("honest-but-curious")  # make_identity asks for it; nothing is released
    identity = dp.t.make_identity(
        dp.vector_domain(dp.atom_domain(T="i64")), dp.symmetric_distance()
    )
    data = [0] * n
    return median_seconds(lambda: identity(data), repeats, warm_up=False)


def machine_summary(dp: Any | None) -> str:
    versions = [f"numpy {np.__version__}"]
    if dp is not None:
        versions.append(f"opendp {metadata.version('opendp')}")
    return machine(*versions)


def format_rate(rate: float) -> str:
    return f"{rate / 1e6:.2f} M/s" if rate >= 1e6 else f"{rate / 1e3:.1f} k/s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="samples per call")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls (veil, numpy)")
    parser.add_argument(
        "--opendp-repeats", type=int, default=1, help="timed calls for OpenDP (about 10 s each)"
    )
    args = parser.parse_args(argv)
    n: int = args.n

    dp = load_opendp()
    rows: list[Row] = []
    for distribution, scale in CASES:
        rows.append(
            Row(
                distribution,
                scale,
                f"veil discrete_{distribution} (SecureRandom)",
                "yes",
                "yes (AES-CTR)",
                median_seconds(veil_sampler(distribution, scale, n), args.repeats, warm_up=True),
            )
        )
        if distribution == "gaussian" and scale >= 16 and _kernel.available():
            rows.append(
                Row(
                    distribution,
                    scale,
                    "veil discrete_gaussian, numpy pass (kernel off)",
                    "yes",
                    "yes (AES-CTR)",
                    median_seconds(veil_numpy_pass(scale, n), args.repeats, warm_up=True),
                )
            )
        numpy_name = "laplace" if distribution == "laplace" else "normal"
        rows.append(
            Row(
                distribution,
                scale,
                f"numpy Generator.{numpy_name} (float)",
                "no",
                "no (PCG64)",
                median_seconds(numpy_sampler(distribution, scale, n), args.repeats, warm_up=True),
            )
        )
        if dp is not None:
            maker = "make_laplace" if distribution == "laplace" else "make_gaussian"
            rows.append(
                Row(
                    distribution,
                    scale,
                    f"OpenDP {maker} on Vec<i64>",
                    "yes",
                    "yes (OpenSSL)",
                    median_seconds(
                        opendp_sampler(dp, distribution, scale, n),
                        args.opendp_repeats,
                        warm_up=False,
                    ),
                )
            )

    command = " ".join(["benchmarks/samplers.py", *(argv if argv is not None else sys.argv[1:])])
    print(f"## Noise samplers: n = {n:,} per call")
    print()
    print(f"Command: `.venv/bin/python {command}`; median of {args.repeats} timed calls after a")
    print(f"warm-up for veil and numpy, {args.opendp_repeats} call(s) for OpenDP.")
    print(f"Machine: {machine_summary(dp)}.")
    print()
    print(
        "| distribution | scale | sampler | exact (float-safe) | CSPRNG | median s | samples/s "
        "| ns/sample |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row.distribution} | {row.scale:g} | {row.sampler} | {row.exact} | {row.csprng} "
            f"| {row.seconds:.3f} | {format_rate(row.rate(n))} | {1e9 / row.rate(n):.1f} |"
        )
    print()
    print("Throughput ratios (above 1: veil is faster):")
    print()
    print("| distribution | scale | veil / numpy float | veil / OpenDP |")
    print("|---|---|---|---|")
    for distribution, scale in CASES:
        mine = [r for r in rows if r.distribution == distribution and r.scale == scale]
        veil = mine[0]
        numpy_row = next(r for r in mine if r.sampler.startswith("numpy"))
        opendp_rows = [r for r in mine if r.sampler.startswith("OpenDP")]
        versus_opendp = f"{veil.rate(n) / opendp_rows[0].rate(n):.1f}" if opendp_rows else "n/a"
        print(
            f"| {distribution} | {scale:g} | {veil.rate(n) / numpy_row.rate(n):.2f} "
            f"| {versus_opendp} |"
        )
    print()
    if dp is None:
        print("OpenDP is not installed: pip install 'veil[bench]' to compare with it.")
    else:
        round_trip = opendp_round_trip(dp, n, args.opendp_repeats)
        print(
            f"OpenDP rows include {round_trip:.2f} s of moving {n:,} ints between Python and "
            "Rust (make_identity, no noise)."
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
