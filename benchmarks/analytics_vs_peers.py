"""DP mean per group: veil against plain DuckDB (the floors) and the peer DP libraries.

Run from the repository root; ``--setup`` (needed the first time, harmless later) builds or
updates the peers' environments before measuring::

    .venv/bin/python benchmarks/analytics_vs_peers.py [--rows 1000000,10000000] [--setup]
        [--peers opendp,pipelinedp,diffprivlib,smartnoise] [--repeats 3] [--timeout 300]

A full run (both sizes, every peer) takes about 20 minutes on 2 cores, most of it PipelineDP.

The question: the mean income per zip code of a synthetic census (``person``, ``zip``,
``income``; each person has 1-3 rows, all in one zip; 1,000 zips of Zipf(1) sizes; income
lognormal around 40k times a per-zip factor, clipped to [0, 500,000]), released with epsilon 1,
the 1,000 zips as public keys, income bounds [0, 500,000] and, where a library can enforce it,
at most 1 zip and 3 rows per person. The table is generated once per size (seeded: it is test
data) and cached as Parquet under ``.bench-data/``.

Timed in this process, one warm-up and then the median of ``--repeats`` rounds (the methods
alternate within a round, so drift on a shared machine hits them alike):

* floor A: DuckDB's ``SELECT zip, avg(income) ... GROUP BY zip`` over the Parquet file, the
  non-private answer;
* floor B: DuckDB's GROUP BY (person, zip) and then by zip, the work that any per-person
  contribution bounding has to do at least;
* veil with per-person bounding (``privacy_unit="person"``, 1 zip and 3 rows per person), the
  whole ``Releaser.release`` call: planning, the data checks, the bounded aggregation in DuckDB,
  the ledger reservation, the noise and the commit;
* veil with each row its own unit, the same call.

Peak memory: each of those four runs once in a fresh subprocess, which reports its peak RSS
(VmHWM, i.e. ``ru_maxrss`` without what Linux carries over from the parent) and the RSS just
before the query, so both the whole-process figure and the query's own increase are shown.

Each peer runs in its own virtual environment under ``.bench-envs/<peer>`` (``--setup`` creates
them with pip; their pins do not agree with each other or with veil's), through an adapter in
this file started as ``<env>/bin/python analytics_vs_peers.py --adapter NAME --data PATH``. An
adapter loads the Parquet file into the library's own table (reported as setup, not timed as
query), then times from building the library's context or session to the materialised per-zip
result, once as a warm-up (unless that first run takes over 30 s, when it counts as the first
timed run) and then ``--repeats`` times, and prints one JSON line. ``--timeout`` bounds each
phase of a peer's subprocess (loading, and every run); a peer that overruns is killed and
reported as a timeout, with whatever runs it finished.

Accuracy is the mean absolute error against the true per-zip mean over all 1,000 zips and the
mean relative error over the 100 largest zips, averaged over all the releases of the run; every
library's estimates are first clipped to [0, 500,000], with non-finite or missing estimates
replaced by the midpoint (free post-processing that puts every library on the same footing).

Nothing here is a timed unit test: it prints times next to the floors measured in the same run,
and ratios with their targets.
"""

from __future__ import annotations

import argparse
import json
import math
import operator
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from _harness import Adapter, AdapterTimeoutError, machine, ratio_text, write_raw

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / ".bench-data"
ENV_DIR = ROOT / ".bench-envs"

SEED = 2026_11_22
DATA_VERSION = 1  # bump when the generator changes: the cached files are named after it
ZIPS = 1000
LOW, HIGH = 0.0, 500_000.0
MIDPOINT = (LOW + HIGH) / 2
EPSILON = 1.0
MAX_GROUPS, MAX_ROWS = 1, 3
TABLE = "census"
VEIL_QUERY = "SELECT zip, AVG(income) FROM census GROUP BY zip"
FLOOR_A_SQL = "SELECT zip, avg(income) AS m FROM census GROUP BY zip"
FLOOR_B_SQL = (
    "SELECT zip, sum(s) / sum(c) AS m FROM (SELECT person, zip, sum(income) AS s, count(*) AS c "
    "FROM census GROUP BY person, zip) GROUP BY zip"
)
# A peer's first run is a warm-up unless it takes longer than this; then it is timed.
WARM_UP_LIMIT = 30.0
PROGRESS = "PROGRESS "  # prefix of an adapter's progress lines on stderr
TOP = 100  # relative error over this many largest zips

TARGET_BOUNDED = 1.5  # veil-bounded / floor B, at most
TARGET_ROW = 2.0  # veil-row / floor A, at most
TARGET_PEER = 5.0  # fastest bounding peer / veil-bounded, at least
TARGET_MEMORY = 2.0  # veil-bounded peak / floor A peak, at most


# --------------------------------------------------------------------------------------------
# Peers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    name: str
    label: str
    distribution: str  # whose version is reported
    requirements: tuple[str, ...]
    bounds_units: bool  # enforces per-person contribution bounds: counts for the peer ratio
    guarantee: str


PEERS = {
    "opendp": Peer(
        "opendp",
        "OpenDP 0.16 (Polars Context)",
        "opendp",
        # The Polars plugin needs exactly polars 1.36.1, so not veil's .venv (polars 2).
        ("opendp[polars]==0.16.0", "pyarrow"),
        True,
        "person, pure ε=1; identifier truncation to ≤3 rows per zip and 1 zip, charged as 2 zips "
        "(truncate_num_groups(k) keeps k-1 groups); income cast to whole dollars",
    ),
    "pipelinedp": Peer(
        "pipelinedp",
        "PipelineDP 0.3.1 (LocalBackend)",
        "pipeline-dp",
        ("pipeline-dp==0.3.1", "python-dp==1.1.5", "pyarrow"),
        True,
        "person, pure ε=1; ≤1 zip and ≤3 rows per zip enforced (sampling)",
    ),
    "diffprivlib": Peer(
        "diffprivlib",
        "diffprivlib 0.6.6 (tools.mean per zip)",
        "diffprivlib",
        # diffprivlib 0.6.6 fails to import with scikit-learn 1.9 (sklearn.tree._tree.DOUBLE).
        ("diffprivlib==0.6.6", "scikit-learn<1.9", "pyarrow"),
        False,
        "record-level ε=1/3, counts public (bounded DP); no privacy unit: ε=1 per person only "
        "by group privacy if nobody has over 3 rows, which nothing enforces",
    ),
    "smartnoise": Peer(
        "smartnoise",
        "SmartNoise SQL 1.0.10 (pandas reader)",
        "smartnoise-sql",
        # Pins opendp<0.15 and pandas<3: its own environment.
        ("smartnoise-sql==1.0.10", "pyarrow"),
        True,
        "person, ε=1 (AVG = sum + count at ε=0.5 each; δ≈1e-15 reported); ≤3 rows per person "
        "enforced (reservoir sampling)",
    ),
}


def env_python(peer: Peer) -> Path:
    return ENV_DIR / peer.name / "bin" / "python"


def setup_peer(peer: Peer) -> str | None:
    """Create ``.bench-envs/<peer>`` and install the pinned packages; the problem, or None."""
    env = ENV_DIR / peer.name
    base = shutil.which("python3") or sys.executable
    steps = []
    if not env_python(peer).exists():
        steps.append([base, "-m", "venv", str(env)])
    pip = [str(env / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    steps.append([*pip, "install", "--quiet", *peer.requirements])
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            lines = [
                line
                for line in (done.stderr + done.stdout).splitlines()
                if line.strip() and not line.startswith("WARNING: Location")
            ]
            what = "creating the venv" if "venv" in step else "pip install"
            return f"{what} failed: " + (" / ".join(lines[-3:]) or f"exit {done.returncode}")
    check = subprocess.run(
        [str(env_python(peer)), __file__, "--adapter", peer.name, "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    if check.returncode != 0:
        lines = [line for line in check.stderr.splitlines() if line.strip()]
        return f"installed, but the import fails: {lines[-1] if lines else check.returncode}"
    return None


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def data_path(n: int) -> Path:
    return DATA_DIR / f"census_n{n}_seed{SEED}_v{DATA_VERSION}.parquet"


def generate(n: int, path: Path) -> None:
    """Write the synthetic census of ``n`` rows to ``path`` (seeded: this is test data)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(SEED)
    sizes = rng.integers(1, 4, size=n // 2 + 1)  # rows per person: uniform on 1, 2, 3
    while sizes.sum() < n:
        sizes = np.concatenate([sizes, rng.integers(1, 4, size=n // 20 + 1)])
    ends = np.cumsum(sizes)
    people = int(np.searchsorted(ends, n)) + 1
    sizes = sizes[:people]
    sizes[-1] -= int(ends[people - 1]) - n
    zipf = 1.0 / np.arange(1, ZIPS + 1)
    zip_of_person = rng.choice(ZIPS, size=people, p=zipf / zipf.sum()).astype(np.int32)
    person_ids = rng.permutation(people).astype(np.int64)
    row_person = np.repeat(np.arange(people), sizes)
    zips = zip_of_person[row_person]
    factor = rng.uniform(0.5, 2.0, size=ZIPS)
    income = np.clip(rng.lognormal(math.log(40_000.0), 1.0, size=n) * factor[zips], LOW, HIGH)
    order = rng.permutation(n)  # rows in no particular order, as a real extract would be
    table = pa.table(
        {
            "person": pa.array(person_ids[row_person][order], pa.int64()),
            "zip": pa.array(zips[order], pa.int32()),
            "income": pa.array(income[order], pa.float64()),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    # Row groups of DuckDB's size, so every reader can split the scan across threads.
    pq.write_table(table, partial, row_group_size=122_880)
    partial.replace(path)


def ensure_data(n: int) -> Path:
    path = data_path(n)
    if not path.exists():
        start = time.perf_counter()
        generate(n, path)
        print(f"generated {path.name} in {time.perf_counter() - start:.1f} s")
    return path


@dataclass(frozen=True)
class Truth:
    mean: np.ndarray  # per zip
    largest: np.ndarray  # indices of the TOP largest zips

    def errors(self, estimates: np.ndarray) -> tuple[float, float]:
        """(MAE over all zips, mean relative error over the largest), after the common
        post-processing: clip to the bounds, non-finite or missing -> midpoint."""
        fixed = np.where(np.isfinite(estimates), estimates, MIDPOINT)
        fixed = np.clip(fixed, LOW, HIGH)
        error = np.abs(fixed - self.mean)  # NaN for a zip without rows (only in tiny tables)
        relative = error[self.largest] / self.mean[self.largest]
        return float(np.nanmean(error)), float(relative.mean())


def ground_truth(path: Path) -> Truth:
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["zip", "income"])
    zips = table["zip"].to_numpy()
    counts = np.bincount(zips, minlength=ZIPS)
    sums = np.bincount(zips, weights=table["income"].to_numpy(), minlength=ZIPS)
    mean = np.divide(sums, counts, out=np.full(ZIPS, np.nan), where=counts > 0)
    return Truth(mean, np.argsort(-counts, kind="stable")[:TOP])


def per_zip(zips: Any, values: Any) -> np.ndarray:
    """Estimates indexed by zip; zips a library left out are NaN."""
    out = np.full(ZIPS, np.nan)
    for z, v in zip(zips, values, strict=True):
        if z is not None and 0 <= int(z) < ZIPS and v is not None:
            out[int(z)] = float(v)
    return out


# --------------------------------------------------------------------------------------------
# The floors and veil (this process)
# --------------------------------------------------------------------------------------------


def duckdb_floor(path: Path, sql: str) -> Callable[[], np.ndarray]:
    import duckdb

    database = duckdb.connect()

    def run() -> np.ndarray:
        # a fresh connection per call to one open database, as each veil release takes one
        con = database.cursor()
        try:
            con.read_parquet(str(path)).create_view("census")
            result = con.execute(sql).fetchnumpy()
        finally:
            con.close()
        return per_zip(result["zip"], result["m"])

    return run


def veil_release(path: Path, ledger: Any, *, bounded: bool) -> Callable[[], np.ndarray]:
    from veil.analytics import Dataset, Releaser, TableSpec

    keys = {"zip": tuple(range(ZIPS))}
    bounds = {"income": (LOW, HIGH)}
    if bounded:
        spec = TableSpec(
            TABLE,
            privacy_unit="person",
            bounds=bounds,
            max_groups_per_unit=MAX_GROUPS,
            max_rows_per_group=MAX_ROWS,
            keys=keys,
        )
    else:
        spec = TableSpec(TABLE, bounds=bounds, keys=keys)
    dataset = Dataset(path, spec)
    releaser = Releaser(ledger, cache=False)

    def run() -> np.ndarray:
        result = releaser.release(dataset, VEIL_QUERY, epsilon=EPSILON)
        return per_zip([r["zip"] for r in result.records], [r["value"] for r in result.records])

    return run


def open_ledger(directory: str) -> Any:
    from veil.ledger import Ledger

    ledger = Ledger(str(Path(directory) / "ledger.sqlite"))
    for scope in (f"{TABLE}/person", f"{TABLE}/row"):
        ledger.set_budget(scope, epsilon=1e9)
    return ledger


LOCAL = ("floor A", "floor B", "veil-bounded", "veil-row")


def local_methods(path: Path, ledger: Any) -> dict[str, Callable[[], np.ndarray]]:
    return {
        "floor A": duckdb_floor(path, FLOOR_A_SQL),
        "floor B": duckdb_floor(path, FLOOR_B_SQL),
        "veil-bounded": veil_release(path, ledger, bounded=True),
        "veil-row": veil_release(path, ledger, bounded=False),
    }


@dataclass
class Measured:
    """One library's figures at one size."""

    seconds: list[float] = field(default_factory=list)
    estimates: list[np.ndarray] = field(default_factory=list)
    setup: float | None = None
    peak_kb: int | None = None
    before_kb: int | None = None
    version: str = ""
    problem: str | None = None  # not run, failed, or timed out
    timed_out: bool = False

    @property
    def median(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None


def time_local(path: Path, repeats: int) -> dict[str, Measured]:
    with tempfile.TemporaryDirectory(prefix="veil-bench-") as tmp:
        ledger = open_ledger(tmp)
        try:
            methods = local_methods(path, ledger)
            out = {name: Measured() for name in methods}
            for round_ in range(repeats + 1):  # round 0 is the warm-up
                for name, run in methods.items():
                    start = time.perf_counter()
                    estimates = run()
                    seconds = time.perf_counter() - start
                    out[name].estimates.append(estimates)
                    if round_ > 0:
                        out[name].seconds.append(seconds)
        finally:
            ledger.close()
    return out


def status_kb(name: str) -> int:
    """A figure of /proc/self/status in KiB: VmRSS (now) or VmHWM (peak)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(f"{name}:"):
                return int(line.split()[1])
    raise RuntimeError(f"no {name} in /proc/self/status")


def peak_rss_kb() -> int:
    """This process's peak RSS: VmHWM, the high-water mark of its address space. It equals
    ``ru_maxrss`` except that Linux carries ``ru_maxrss`` over ``execve`` from the forked copy of
    the parent, so a child of this (large) process would report at least the parent's RSS."""
    return status_kb("VmHWM")


def memory_main(kind: str, path: Path) -> None:
    """Hidden mode: run one query of ``kind`` once, print the RSS before it and the peak."""
    with tempfile.TemporaryDirectory(prefix="veil-bench-") as tmp:
        ledger = open_ledger(tmp)
        # veil and DuckDB are imported and nothing is read yet; what a first release imports
        # lazily (sqlglot's dialect, dp-accounting, scipy) counts as the query's.
        run = local_methods(path, ledger)[kind]
        before = status_kb("VmRSS")
        run()
        peak = peak_rss_kb()
        ledger.close()
    print(json.dumps({"rss_before_kb": before, "peak_kb": peak}))


def probe_memory(kind: str, path: Path) -> tuple[int | None, int | None, str | None]:
    done = subprocess.run(
        [sys.executable, __file__, "--memory", kind, "--data", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return None, None, (done.stderr.strip().splitlines() or ["failed"])[-1]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return int(result["peak_kb"]), int(result["rss_before_kb"]), None


# --------------------------------------------------------------------------------------------
# Adapters (run inside each peer's environment: standard library, numpy and pyarrow only at
# module level)
# --------------------------------------------------------------------------------------------


def _opendp_load(path: Path) -> Any:
    import opendp.prelude as dp
    import polars as pl

    dp.enable_features("contrib")
    return dp, pl, pl.read_parquet(path)


def _opendp_query(state: Any) -> np.ndarray:
    dp, pl, frame = state
    keys = pl.LazyFrame({"zip": pl.Series("zip", range(ZIPS), dtype=pl.Int32)})
    context = dp.Context.compositor(
        data=frame.lazy(),
        privacy_unit=dp.unit_of(contributions=1, identifier="person"),
        privacy_loss=dp.loss_of(epsilon=EPSILON),
        split_evenly_over=1,
        margins=[dp.polars.Margin(by=["zip"], max_length=frame.height)],
    )
    query = (
        context.query()
        .truncate_per_group(MAX_ROWS, by=["zip"])
        # truncate_num_groups(k) keeps k - 1 groups (k = 1 drops every row) while charging for
        # k; "sample" fails with one grouping column. So: k = 2, keep = "first", one zip kept.
        .truncate_num_groups(MAX_GROUPS + 1, by=["zip"], keep="first")
        .group_by("zip")
        # Whole dollars: OpenDP's float sums add noise that grows with max_length.
        .agg(pl.col("income").cast(pl.Int64).dp.mean((int(LOW), int(HIGH))))
        .with_keys(keys)
    )
    out = query.release().collect()
    return per_zip(out["zip"].to_list(), out["income"].to_list())


def _pipelinedp_load(path: Path) -> Any:
    import pipeline_dp
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    columns = [table[c].to_pylist() for c in ("person", "zip", "income")]
    return pipeline_dp, list(zip(*columns, strict=True))


def _pipelinedp_query(state: Any) -> np.ndarray:
    pdp, rows = state
    accountant = pdp.NaiveBudgetAccountant(total_epsilon=EPSILON, total_delta=0.0)
    engine = pdp.DPEngine(accountant, pdp.LocalBackend())
    params = pdp.AggregateParams(
        metrics=[pdp.Metrics.MEAN],
        noise_kind=pdp.NoiseKind.LAPLACE,
        max_partitions_contributed=MAX_GROUPS,
        max_contributions_per_partition=MAX_ROWS,
        min_value=LOW,
        max_value=HIGH,
    )
    extractors = pdp.DataExtractors(
        privacy_id_extractor=operator.itemgetter(0),
        partition_extractor=operator.itemgetter(1),
        value_extractor=operator.itemgetter(2),
    )
    result = engine.aggregate(rows, params, extractors, public_partitions=list(range(ZIPS)))
    accountant.compute_budgets()
    pairs = list(result)
    return per_zip([k for k, _ in pairs], [m.mean for _, m in pairs])


def _diffprivlib_load(path: Path) -> Any:
    import diffprivlib
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["zip", "income"])
    return diffprivlib, table["zip"].to_numpy(), table["income"].to_numpy()


def _diffprivlib_query(state: Any) -> np.ndarray:
    dpl, zips, income = state
    # A throw-away accountant: it has no parallel composition and would charge 1,000 x epsilon
    # for the disjoint per-zip means.
    accountant = dpl.BudgetAccountant()
    order = np.argsort(zips, kind="stable")
    values = income[order]
    starts = np.searchsorted(zips[order], np.arange(ZIPS + 1))
    out = np.full(ZIPS, np.nan)
    for z in range(ZIPS):
        chunk = values[starts[z] : starts[z + 1]]
        if len(chunk):
            out[z] = dpl.tools.mean(
                chunk, epsilon=EPSILON / MAX_ROWS, bounds=(LOW, HIGH), accountant=accountant
            )
    return out


SMARTNOISE_SQL = "SELECT zip, AVG(income) AS m FROM public.census GROUP BY zip"
SMARTNOISE_METADATA = {
    "bench": {
        "public": {
            "census": {
                "row_privacy": False,
                "max_ids": MAX_GROUPS * MAX_ROWS,
                "sample_max_ids": True,
                "censor_dims": False,  # the zips are public: no thresholding
                "person": {"type": "int", "private_id": True},
                "zip": {"type": "int"},
                "income": {"type": "float", "lower": LOW, "upper": HIGH, "nullable": False},
            }
        }
    }
}


def _smartnoise_load(path: Path) -> Any:
    import pyarrow.parquet as pq
    from snsql.sql.reader.base import SqlReader

    frame = pq.read_table(path).to_pandas()
    # The pandas engine copies the frame into an in-memory SQLite database here.
    return SqlReader.from_connection(frame, engine="pandas", metadata=SMARTNOISE_METADATA)


def _smartnoise_query(reader: Any) -> np.ndarray:
    from snsql import Privacy
    from snsql.sql.private_reader import PrivateReader

    # Privacy's epsilon is per statistic; AVG spends it on a sum and a count.
    private = PrivateReader(
        reader, SMARTNOISE_METADATA, privacy=Privacy(epsilon=EPSILON / 2, delta=0.0)
    )
    spent, _ = private.get_privacy_cost(SMARTNOISE_SQL)
    if abs(float(spent) - EPSILON) > 1e-9:
        raise RuntimeError(f"SmartNoise would spend epsilon {spent}, not {EPSILON}")
    rows = private.execute(SMARTNOISE_SQL)
    return per_zip([r[0] for r in rows[1:]], [r[1] for r in rows[1:]])


ADAPTERS: dict[str, tuple[Callable[[Path], Any], Callable[[Any], np.ndarray]]] = {
    "opendp": (_opendp_load, _opendp_query),
    "pipelinedp": (_pipelinedp_load, _pipelinedp_query),
    "diffprivlib": (_diffprivlib_load, _diffprivlib_query),
    "smartnoise": (_smartnoise_load, _smartnoise_query),
}


def _progress(**fields: Any) -> None:
    print(PROGRESS + json.dumps(fields), file=sys.stderr, flush=True)


def adapter_main(name: str, path: Path | None, repeats: int, check: bool) -> None:
    """Hidden mode, run with a peer's python: load, warm up, time, print one JSON line."""
    warnings.simplefilter("ignore")  # deprecation chatter from the peers, once per call
    peer = PEERS[name]
    load, query = ADAPTERS[name]
    version = metadata.version(peer.distribution)
    if check:
        import importlib

        importlib.import_module(
            {"opendp": "opendp.prelude", "pipelinedp": "pipeline_dp", "smartnoise": "snsql"}.get(
                name, name
            )
        )
        print(json.dumps({"version": version}))
        return
    assert path is not None
    start = time.perf_counter()
    state = load(path)
    setup = time.perf_counter() - start
    _progress(setup=setup)
    before = status_kb("VmRSS")
    seconds: list[float] = []
    estimates: list[list[float | None]] = []
    warm_up = True
    while len(seconds) < repeats:
        start = time.perf_counter()
        result = query(state)
        elapsed = time.perf_counter() - start
        estimates.append([float(v) if math.isfinite(v) else None for v in result])
        if warm_up and elapsed <= WARM_UP_LIMIT:
            _progress(warm_up=elapsed)
        else:
            seconds.append(elapsed)
            _progress(run=len(seconds), seconds=elapsed)
        warm_up = False
    print(
        json.dumps(
            {
                "version": version,
                "setup": setup,
                "seconds": seconds,
                "estimates": estimates,
                "rss_before_kb": before,
                "peak_kb": peak_rss_kb(),
            }
        )
    )


def run_peer(peer: Peer, path: Path, repeats: int, timeout: float) -> Measured:
    """Run a peer's adapter in its environment; each phase (load, every run) gets ``timeout``
    seconds of wall time, after which the subprocess is killed and reported as timed out."""
    python = env_python(peer)
    if not python.exists():
        return Measured(problem=f"not installed (run with --setup): no {python}")
    command = [str(python), __file__, "--adapter", peer.name, "--data", str(path)]
    adapter = Adapter([*command, "--repeats", str(repeats)], timeout=timeout)
    out: list[str] = []
    err: list[str] = []
    measured = Measured()
    partial: list[float] = []
    phase = "loading the data"
    try:
        for tag, line in adapter.lines():
            if tag == "err" and line.startswith(PROGRESS):
                event = json.loads(line[len(PROGRESS) :])
                adapter.progress()
                if "setup" in event:
                    measured.setup = event["setup"]
                    phase = "running the warm-up"
                elif "warm_up" in event:
                    phase = "running a timed run"
                else:
                    partial.append(event["seconds"])
                    phase = "running a timed run"
            elif tag == "err":
                err.append(line)
            else:
                out.append(line)
    except AdapterTimeoutError:
        measured.timed_out = True
        done = ", ".join(f"{s:.1f} s" for s in partial)
        measured.problem = f"timeout: no answer within {timeout:.0f} s while {phase}" + (
            f" (finished runs: {done})" if done else ""
        )
        measured.seconds = partial
        return measured
    proc = adapter.process
    if proc.wait() != 0 or not out:
        tail = [e.strip() for e in err if e.strip()]
        measured.problem = "failed: " + (tail[-1] if tail else f"exit code {proc.returncode}")
        return measured
    result = json.loads(out[-1])
    measured.version = result["version"]
    measured.setup = result["setup"]
    measured.seconds = result["seconds"]
    measured.estimates = [
        np.array([np.nan if v is None else v for v in e], dtype=np.float64)
        for e in result["estimates"]
    ]
    measured.peak_kb = result["peak_kb"]
    measured.before_kb = result["rss_before_kb"]
    return measured


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

LOCAL_LABELS = {
    "floor A": "DuckDB avg GROUP BY zip (floor A)",
    "floor B": "DuckDB GROUP BY person, zip (floor B)",
    "veil-bounded": "veil, per-person bounding",
    "veil-row": "veil, each row a unit",
}
LOCAL_GUARANTEES = {
    "floor A": "none (exact answer)",
    "floor B": "none (exact answer)",
    "veil-bounded": "person, pure ε=1; ≤1 zip and ≤3 rows per zip enforced (random choice); "
    "exact discrete Laplace from a CSPRNG",
    "veil-row": "row, pure ε=1 (a person with 3 rows: ε=3); exact discrete Laplace",
}


def _mb(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:,.0f}"


def accuracy(measured: Measured, truth: Truth) -> tuple[str, str]:
    if not measured.estimates:
        return "-", "-"
    pairs = [truth.errors(e) for e in measured.estimates]
    mae = statistics.mean(p[0] for p in pairs)
    rel = statistics.mean(p[1] for p in pairs)
    return f"{mae:,.0f}", f"{100 * rel:.2f}%"


def print_report(
    n: int,
    local: dict[str, Measured],
    peers: dict[str, Measured],
    truth: Truth,
    repeats: int,
    timeout: float,
) -> None:
    floor_a, floor_b = local["floor A"].median, local["floor B"].median
    print(
        f"\n### N = {n:,} rows, ε = {EPSILON:g}, {ZIPS:,} public zips, median of {repeats} "
        "after a warm-up\n"
    )
    print(
        "| library | seconds (median) | × floor A | × floor B | setup s | MAE | "
        f"mean rel. err., {TOP} largest | peak RSS MB | guarantee |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    rows: list[tuple[str, Measured, str]] = [
        (LOCAL_LABELS[k], local[k], LOCAL_GUARANTEES[k]) for k in LOCAL
    ]
    rows += [(PEERS[k].label, m, PEERS[k].guarantee) for k, m in peers.items()]
    for label, m, guarantee in rows:
        mae, rel = accuracy(m, truth)
        setup = "-" if m.setup is None else f"{m.setup:.1f}"
        if m.problem is not None and not m.seconds:
            print(f"| {label} | **{m.problem}** | | | {setup} | {mae} | {rel} | | {guarantee} |")
            continue
        median = m.median
        assert median is not None
        seconds = f"{median:.3f}"
        if m.problem is not None:
            seconds += f" (**{m.problem}**)"
        print(
            f"| {label} | {seconds} | {ratio_text(median, floor_a)} | "
            f"{ratio_text(median, floor_b)} | "
            f"{setup} | {mae} | {rel} | {_mb(m.peak_kb)} | {guarantee} |"
        )
    print(
        "\nSetup = loading the Parquet file into the library's own table (not in its seconds); "
        "DuckDB and veil read the Parquet file inside their timed call. Peak RSS: whole "
        f"process; a peer's includes its loaded table. Timeout: {timeout:.0f} s per phase."
    )

    print("\nMemory, each query once in a fresh process:\n")
    print("| query | RSS before query MB | peak RSS MB | query's increase MB |")
    print("|---|---|---|---|")
    for k in LOCAL:
        m = local[k]
        rise = None if m.peak_kb is None or m.before_kb is None else m.peak_kb - m.before_kb
        print(f"| {LOCAL_LABELS[k]} | {_mb(m.before_kb)} | {_mb(m.peak_kb)} | {_mb(rise)} |")

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("PASS" if ok else "FAIL")

    bounded, row = local["veil-bounded"].median, local["veil-row"].median
    print("\nRatios against the targets:\n")
    r_b = bounded / floor_b if bounded and floor_b else None
    r_r = row / floor_a if row and floor_a else None
    print(
        f"* veil-bounded / floor B = {ratio_text(bounded, floor_b)} (target <= {TARGET_BOUNDED}): "
        + verdict(None if r_b is None else r_b <= TARGET_BOUNDED)
    )
    print(
        f"* veil-row / floor A = {ratio_text(row, floor_a)} (target <= {TARGET_ROW}): "
        + verdict(None if r_r is None else r_r <= TARGET_ROW)
    )
    candidates = []  # (seconds, name, is a lower bound)
    for name, m in peers.items():
        if not PEERS[name].bounds_units:
            continue
        if m.problem is None and m.median is not None:
            candidates.append((m.median, name, False))
        elif m.timed_out:
            candidates.append((max([timeout, *m.seconds]), name, True))
    if candidates and bounded:
        seconds, name, lower = min(candidates)
        ratio = seconds / bounded
        mark = ">= " if lower else ""
        print(
            f"* fastest bounding peer ({name}) / veil-bounded = {mark}{ratio:,.1f} "
            f"(target >= {TARGET_PEER}): {verdict(ratio >= TARGET_PEER)}"
        )
    else:
        print(f"* fastest bounding peer / veil-bounded: no bounding peer ran: {verdict(None)}")
    a, v = local["floor A"], local["veil-bounded"]
    if a.peak_kb and v.peak_kb and a.before_kb is not None and v.before_kb is not None:
        whole = v.peak_kb / a.peak_kb
        rise_a, rise_v = a.peak_kb - a.before_kb, v.peak_kb - v.before_kb
        query_only = rise_v / rise_a if rise_a > 0 else math.inf
        print(
            f"* veil-bounded peak RSS / floor A peak RSS = {whole:.2f} whole process "
            f"(target <= {TARGET_MEMORY}): {verdict(whole <= TARGET_MEMORY)}; "
            f"query's increase only = {query_only:.2f}: {verdict(query_only <= TARGET_MEMORY)}"
        )
    b = local["floor B"]
    if b.peak_kb and v.peak_kb and b.before_kb is not None and v.before_kb is not None:
        rise_b = b.peak_kb - b.before_kb
        print(
            f"* for context, no target: veil-bounded peak RSS / floor B peak RSS = "
            f"{v.peak_kb / b.peak_kb:.2f} whole process, "
            f"{(v.peak_kb - v.before_kb) / rise_b if rise_b > 0 else math.inf:.2f} query only"
        )


def save_raw(n: int, local: dict[str, Measured], peers: dict[str, Measured], truth: Truth) -> Path:
    """Everything measured at one size, estimates included, as JSON next to the data."""
    out = {}
    for name, m in {**local, **peers}.items():
        out[name] = {
            "seconds": m.seconds,
            "setup": m.setup,
            "peak_kb": m.peak_kb,
            "rss_before_kb": m.before_kb,
            "version": m.version,
            "problem": m.problem,
            "errors": [truth.errors(e) for e in m.estimates],
            "estimates": [[None if math.isnan(v) else v for v in e.tolist()] for e in m.estimates],
        }
    payload = {"n": n, "truth": truth.mean.tolist(), "results": out}
    return write_raw(DATA_DIR, f"analytics_vs_peers_n{n}", payload)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--rows", default="1000000,10000000", help="table sizes, comma-separated")
    parser.add_argument(
        "--peers", default=",".join(PEERS), help=f"comma-separated, from: {', '.join(PEERS)}"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds per phase of a peer's run"
    )
    parser.add_argument("--setup", action="store_true", help="create the peers' environments")
    # Hidden modes: a peer's adapter, and the memory probe.
    parser.add_argument("--adapter", choices=sorted(ADAPTERS), help=argparse.SUPPRESS)
    parser.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--memory", choices=LOCAL, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.adapter:
        adapter_main(args.adapter, args.data, args.repeats, args.check)
        return 0
    if args.memory:
        memory_main(args.memory, args.data)
        return 0
    started = time.perf_counter()
    sizes = [int(s.replace("_", "")) for s in args.rows.split(",") if s.strip()]
    names = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = sorted(set(names) - set(PEERS))
    if unknown:
        print(f"unknown peers {unknown}; known: {', '.join(PEERS)}", file=sys.stderr)
        return 2
    problems: dict[str, str] = {}
    if args.setup:
        for name in names:
            t0 = time.perf_counter()
            problem = setup_peer(PEERS[name])
            status = "ready" if problem is None else f"NOT ready: {problem}"
            print(f"setup {name}: {status} ({time.perf_counter() - t0:.0f} s)", flush=True)
            if problem is not None:
                problems[name] = f"could not be installed: {problem}"
    import duckdb

    versions = (
        f"DuckDB {duckdb.__version__}",
        f"veil {metadata.version('veil')}",
        f"numpy {np.__version__}",
    )
    print(f"Machine: {machine(*versions)}")
    print(f"Load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for n in sizes:
        path = ensure_data(n)
        truth = ground_truth(path)
        local = time_local(path, args.repeats)
        for kind in LOCAL:
            peak, before, problem = probe_memory(kind, path)
            local[kind].peak_kb, local[kind].before_kb = peak, before
            if problem:
                print(f"memory probe of {kind} failed: {problem}")
        peers: dict[str, Measured] = {}
        for name in names:
            if name in problems:
                peers[name] = Measured(problem=problems[name])
                continue
            t0 = time.perf_counter()
            peers[name] = run_peer(PEERS[name], path, args.repeats, args.timeout)
            state = peers[name].problem or "ok"
            print(f"N={n:,} {name}: {state} ({time.perf_counter() - t0:.0f} s)", flush=True)
        print_report(n, local, peers, truth, args.repeats, args.timeout)
        print(f"\nRaw results: {save_raw(n, local, peers, truth).relative_to(ROOT)}", flush=True)
    print(f"\nLoad average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"Total wall time: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
