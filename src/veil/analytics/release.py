"""Releasing statistics: resolve, check, aggregate, reserve, add noise, commit, cache.

The order is what makes a release safe and cheap to get wrong:

1. the query is resolved against the declaration and the schema (unknown columns, missing
   bounds, non-numeric values are errors: nothing spent);
2. the data is checked (empty table, NaN or infinite values: errors, nothing spent);
3. the engine computes the exact bounded aggregates (nothing released yet);
4. the ledger reserves the whole query's cost (refused: nothing drawn);
5. the noise is drawn, the values post-processed, and the reservation committed;
6. the result is stored under a key that identifies the question, so asking it again (even
   spelled differently) returns the same answer without spending anything.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import sqlglot
from sqlglot import exp

from veil.analytics import estimators as est
from veil.analytics.engines import Engine, EngineKind, make_engine
from veil.analytics.estimators import TREE_LEAVES, TREE_LEVELS, NoiseKind, NoisyVector
from veil.analytics.frames import merge_sums, plain, row_positions
from veil.analytics.plan import Plan, ValueSpec, histogram_bin_sql, leaf_bin_sql
from veil.analytics.query import AggKind, Aggregate, Query
from veil.analytics.sources import Dataset
from veil.analytics.sql import parse_query
from veil.errors import ConfigurationError, DataError
from veil.ledger import Ledger, Scope
from veil.privacy.events import ApproxDpEvent, ComposedEvent, DiscreteLaplaceEvent, Event
from veil.privacy.random import RandomSource

__all__ = ["Explanation", "Release", "Releaser", "prepare"]

# Share of epsilon spent choosing which groups to release, when the keys are not public.
SELECTION_SHARE = 0.2
# A mean's epsilon is split between its centred sum and its count in the ratio that minimises
# the variance of S/N when |mean - midpoint| is half the bounds' half-width: 2^(2/3) : 1.
MEAN_SUM_SHARE = 2 ** (2 / 3) / (1 + 2 ** (2 / 3))

FloatArray = npt.NDArray[np.float64]


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Release:
    """A released table: one record per group (per group and bin for a histogram)."""

    columns: tuple[str, ...]
    records: tuple[dict[str, Any], ...]
    scope: str
    epsilon: float
    delta: float
    event: Event
    cached: bool = False
    alpha: float = 0.05

    def to_json(self) -> str:
        return json.dumps(list(self.records), ensure_ascii=False, default=_jsonable)

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(self.columns), lineterminator="\n")
        writer.writeheader()
        for record in self.records:
            writer.writerow(record)
        return out.getvalue()

    def to_payload(self) -> str:
        return json.dumps(
            {"columns": list(self.columns), "records": list(self.records), "alpha": self.alpha},
            default=_jsonable,
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {value!r}")


@dataclasses.dataclass(frozen=True)
class ExplainedVector:
    statistic: str
    vector: str
    mechanism: str
    epsilon: float
    delta: float
    noise_std: float
    error_bound: float


@dataclasses.dataclass(frozen=True)
class Explanation:
    """What a release would cost and how accurate it would be, from public facts only."""

    scope: str
    epsilon: float
    delta: float
    event: Event
    vectors: tuple[ExplainedVector, ...]
    selection: str | None
    alpha: float

    def to_records(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(v) for v in self.vectors]


# --------------------------------------------------------------------------------------------
# Resolution: the query against the declaration and the schema
# --------------------------------------------------------------------------------------------


def _expression_bounds(sql: str) -> tuple[float, float] | None:
    """Bounds of a value expression that are public by construction: a comparison (0 or 1) or
    a CASE whose branches are all numeric literals."""
    tree = sqlglot.parse_one(sql, read="duckdb")
    node = tree.unalias()
    while isinstance(node, exp.Paren | exp.Cast):
        node = node.this
    if isinstance(node, exp.Predicate | exp.Not | exp.And | exp.Or | exp.Boolean):
        return (0.0, 1.0)
    if isinstance(node, exp.Case):
        outcomes = [i.args.get("true") for i in node.args.get("ifs", [])]
        outcomes.append(node.args.get("default"))
        values = []
        for o in outcomes:
            if o is None:
                continue  # no ELSE: NULL, ignored by the aggregates
            if isinstance(o, exp.Neg) and isinstance(o.this, exp.Literal) and not o.this.is_string:
                values.append(-float(o.this.this))
            elif isinstance(o, exp.Literal) and not o.is_string:
                values.append(float(o.this))
            else:
                return None
        if values and min(values) < max(values):
            return (min(values), max(values))
    return None


@dataclasses.dataclass
class _Statistic:
    aggregate: Aggregate
    value_index: int | None
    vectors: list[tuple[str, NoisyVector]]


@dataclasses.dataclass
class _Prepared:
    query: Query
    plan: Plan
    statistics: list[_Statistic]
    trees: dict[int, NoisyVector]  # value index -> tree vector (quantiles)
    histogram_vector: NoisyVector | None
    selection: NoisyVector | None
    threshold: int
    selection_delta: float
    public_keys: list[tuple[Any, ...]] | None
    event: Event
    epsilon: float
    delta: float
    noise: NoiseKind


def _resolve_values(
    query: Query, dataset: Dataset, engine: Engine
) -> tuple[list[ValueSpec], list[int | None]]:
    """One ValueSpec per distinct (expression, bounds); the index of each aggregate's value."""
    spec = dataset.spec
    columns = engine.columns()
    specs: list[ValueSpec] = []
    moments: list[set[str]] = []
    index_of: dict[tuple[str, float, float], int] = {}
    indices: list[int | None] = []
    for agg in query.aggregates:
        if agg.value is None:
            indices.append(None)
            continue
        if agg.kind is AggKind.HISTOGRAM:
            bounds: tuple[float, float] | None = (agg.edges[0], agg.edges[-1])
        elif agg.value in columns or agg.value.strip('"') in columns:
            bounds = spec.bounds.get(agg.value.strip('"'))
            if bounds is None:
                raise ConfigurationError(
                    f"no bounds are declared for column {agg.value!r}: declare them (Python: "
                    f"bounds={{'{agg.value}': (low, high)}}; CLI: --bounds {agg.value}=LOW:HIGH)"
                )
        else:
            bounds = _expression_bounds(agg.value)
            if bounds is None:
                raise ConfigurationError(
                    f"the bounds of {agg.value!r} are not known: aggregate a declared column, a "
                    "comparison, or a CASE with numeric branches"
                )
        assert bounds is not None
        type_name = engine.expression_type(agg.value)
        if not Engine.is_numeric(type_name):
            raise DataError(f"{agg.value} is not numeric (it is {type_name}); aggregate numbers")
        key = (agg.value, bounds[0], bounds[1])
        if key not in index_of:
            index_of[key] = len(specs)
            specs.append(ValueSpec(agg.value, bounds[0], bounds[1]))
            moments.append(set())
        i = index_of[key]
        need = {
            AggKind.SUM: "s",
            AggKind.MEAN: "cs",
            AggKind.VARIANCE: "csq",
            AggKind.STDDEV: "csq",
        }.get(agg.kind, "")
        moments[i].update(need)
        indices.append(i)
    specs = [
        dataclasses.replace(v, moments="".join(sorted(m)) or "c")
        for v, m in zip(specs, moments, strict=True)
    ]
    return specs, indices


def _vectors(
    agg: Aggregate,
    values: Sequence[ValueSpec],
    vi: int | None,
    big_k: int,
    k: int,
    eps: float,
    delta: float,
    noise: NoiseKind,
) -> list[tuple[str, NoisyVector]]:
    def per_group(label: str, change: float, integer: bool, share: float) -> NoisyVector:
        return NoisyVector(
            label,
            big_k * change,
            math.sqrt(big_k) * change,
            big_k,
            integer,
            eps * share,
            delta * share,
            noise,
        )

    if agg.kind is AggKind.COUNT:
        return [("n", per_group("rows", k, True, 1.0))]
    if agg.kind is AggKind.COUNT_UNITS:
        return [("u", per_group("units", 1, True, 1.0))]
    assert vi is not None
    v = values[vi]
    if agg.kind is AggKind.SUM:
        return [("s", per_group("sum", k * v.magnitude, False, 1.0))]
    if agg.kind is AggKind.MEAN:
        return [
            ("d", per_group("centred sum", k * v.radius, False, MEAN_SUM_SHARE)),
            ("c", per_group("count", k, True, 1 - MEAN_SUM_SHARE)),
        ]
    if agg.kind in (AggKind.VARIANCE, AggKind.STDDEV):
        third = 1 / 3
        return [
            ("q", per_group("centred squares", k * v.radius**2, False, third)),
            ("d", per_group("centred sum", k * v.radius, False, third)),
            ("c", per_group("count", k, True, third)),
        ]
    if agg.kind is AggKind.HISTOGRAM:
        bins = len(agg.edges) - 1
        return [
            (
                "h",
                NoisyVector(
                    "bins",
                    big_k * k,
                    math.sqrt(big_k) * k,
                    big_k * min(k, bins),
                    True,
                    eps,
                    delta,
                    noise,
                ),
            )
        ]
    raise ConfigurationError(f"no estimator for {agg.kind.value}")


def prepare(
    dataset: Dataset,
    query: str | Query,
    engine: Engine,
    *,
    epsilon: float,
    delta: float,
    noise: NoiseKind,
) -> _Prepared:
    if not isinstance(noise, NoiseKind):
        raise ConfigurationError(f"noise must be a NoiseKind, got {noise!r}")
    if not isinstance(epsilon, int | float) or not math.isfinite(epsilon) or epsilon <= 0:
        raise ConfigurationError(f"epsilon must be a finite number > 0, got {epsilon!r}")
    if not isinstance(delta, int | float) or not 0 <= delta < 1:
        raise ConfigurationError(f"delta must be in [0, 1), got {delta!r}")
    spec = dataset.spec
    if isinstance(query, str):
        query = parse_query(query, privacy_unit=spec.privacy_unit)
    if query.table != dataset.name:
        raise ConfigurationError(
            f"the query reads table {query.table!r}, but the data is {dataset.name!r}"
        )
    columns = engine.columns()
    known = ", ".join(sorted(columns))
    for column in sorted(query.columns()):
        if column not in columns:
            raise ConfigurationError(f"unknown column {column!r}; the table has: {known}")
    if spec.privacy_unit is not None and spec.privacy_unit not in columns:
        raise ConfigurationError(
            f"the privacy unit column {spec.privacy_unit!r} is not in the table ({known})"
        )
    if spec.privacy_unit is not None and spec.privacy_unit in query.group_by:
        raise ConfigurationError("grouping by the privacy unit would release each unit")
    for agg in query.aggregates:
        if agg.kind is AggKind.COUNT_UNITS and spec.privacy_unit is None:
            raise ConfigurationError("COUNT(DISTINCT ...) needs a declared privacy unit")
    values, indices = _resolve_values(query, dataset, engine)
    public = all(g in spec.keys for g in query.group_by)
    keys = {g: spec.keys[g] for g in query.group_by if g in spec.keys}
    plan = Plan(
        unit=spec.privacy_unit,
        groups=query.group_by,
        values=tuple(values),
        where=query.where,
        keys=keys,
        max_groups_per_unit=spec.max_groups_per_unit,
        max_rows_per_group=spec.max_rows_per_group,
    )
    big_k, k = spec.max_groups_per_unit, spec.max_rows_per_group
    if noise is NoiseKind.GAUSSIAN and delta <= 0:
        raise ConfigurationError("Gaussian noise needs delta > 0")
    if not public and delta <= 0:
        raise ConfigurationError(
            f"grouping by {', '.join(g for g in query.group_by if g not in spec.keys)} "
            "without public keys selects the released groups privately, which needs delta "
            "> 0; give delta, or declare the keys"
        )

    # Budget: selection (private keys) first, then equal shares per statistic, with the
    # quantiles of one value sharing one tree, and COUNT(DISTINCT unit) reusing the
    # selection's noisy counts when there is one.
    eps_rest, delta_rest = float(epsilon), float(delta)
    selection = None
    threshold, selection_delta = 0, 0.0
    if not public:
        eps_sel = epsilon * SELECTION_SHARE
        delta_sel = delta if noise is NoiseKind.LAPLACE else delta / 2
        eps_rest, delta_rest = epsilon - eps_sel, delta - delta_sel
        selection = NoisyVector(
            "units (selection)",
            big_k,
            math.sqrt(big_k),
            big_k,
            True,
            eps_sel,
            0.0,
            NoiseKind.LAPLACE,
        )
        threshold, selection_delta = _threshold(selection, delta_sel)
    parts: list[tuple[int, float]] = []  # (aggregate index, weight)
    tree_values: dict[int, float] = {}
    for i, agg in enumerate(query.aggregates):
        if agg.kind is AggKind.COUNT_UNITS and selection is not None:
            continue
        if agg.kind is AggKind.QUANTILE:
            value = indices[i]
            assert value is not None
            tree_values[value] = tree_values.get(value, 0.0) + 1.0
            continue
        parts.append((i, 1.0))
    weights = [w for _, w in parts] + list(tree_values.values())
    shares = est.split(eps_rest, delta_rest, weights) if weights else []
    statistics: list[_Statistic] = []
    for (i, _), (eps_i, delta_i) in zip(parts, shares, strict=False):
        agg = query.aggregates[i]
        vi = indices[i]
        statistics.append(
            _Statistic(agg, vi, _vectors(agg, values, vi, big_k, k, eps_i, delta_i, noise))
        )
    trees: dict[int, NoisyVector] = {}
    for (value, _), (eps_t, delta_t) in zip(tree_values.items(), shares[len(parts) :], strict=True):
        nodes = min(2 * TREE_LEAVES - 1, k * TREE_LEVELS)
        trees[value] = NoisyVector(
            "quantile tree",
            big_k * k * TREE_LEVELS,
            math.sqrt(big_k * TREE_LEVELS) * k,
            big_k * nodes,
            True,
            eps_t,
            delta_t,
            noise,
        )
    for i, agg in enumerate(query.aggregates):
        if agg.kind is AggKind.QUANTILE or (
            agg.kind is AggKind.COUNT_UNITS and selection is not None
        ):
            statistics.append(_Statistic(agg, indices[i], []))
    statistics.sort(key=lambda s: query.aggregates.index(s.aggregate))
    histogram_vector = None
    for st in statistics:
        if st.aggregate.kind is AggKind.HISTOGRAM:
            histogram_vector = st.vectors[0][1]
    events: list[Event] = []
    if selection is not None:
        events.append(ApproxDpEvent(selection.epsilon, selection_delta))
    for st in statistics:
        events += [v.event for _, v in st.vectors]
    events += [t.event for t in trees.values()]
    public_keys = None
    if public:
        public_keys = list(itertools.product(*(spec.keys[g] for g in query.group_by)))
        if not query.group_by:
            public_keys = [()]
    return _Prepared(
        query=query,
        plan=plan,
        statistics=statistics,
        trees=trees,
        histogram_vector=histogram_vector,
        selection=selection,
        threshold=threshold,
        selection_delta=selection_delta,
        public_keys=public_keys,
        event=ComposedEvent(events),
        epsilon=float(epsilon),
        delta=float(delta),
        noise=noise,
    )


class Releaser:
    """Releases statistics from datasets, charging a ledger scope.

    ``scope`` defaults to ``<table>/<privacy unit>`` (``<table>/row`` without a unit). ``rng``
    defaults to a fresh secure generator per release; pass ``InsecureSeededRandom`` only in
    tests. ``alpha`` sets the confidence intervals (1 - alpha).
    """

    def __init__(
        self,
        ledger: Ledger,
        *,
        scope: str | Scope | None = None,
        engine: EngineKind = EngineKind.DUCKDB,
        cache: bool = True,
        rng: RandomSource | None = None,
        alpha: float = 0.05,
    ) -> None:
        if not isinstance(engine, EngineKind):
            raise ConfigurationError(f"engine must be an EngineKind, got {engine!r}")
        if not 0 < alpha < 1:
            raise ConfigurationError(f"alpha must be in (0, 1), got {alpha!r}")
        self.ledger = ledger
        self._scope = None if scope is None else Scope.parse(scope)
        self.engine_kind = engine
        self.cache = cache
        self._rng = rng
        self.alpha = alpha

    def scope_for(self, dataset: Dataset) -> Scope:
        if self._scope is not None:
            return self._scope
        return Scope(dataset.name, dataset.spec.privacy_unit or "row")

    # -- planning ------------------------------------------------------------------------------

    def explain(
        self,
        dataset: Dataset,
        query: str | Query,
        *,
        epsilon: float,
        delta: float = 0.0,
        noise: NoiseKind = NoiseKind.LAPLACE,
    ) -> Explanation:
        """The cost and the accuracy of a release, before making it: the mechanisms, their
        noise standard deviation and the (1 - alpha) bound on the noise of each released vector
        entry. Reads only the schema."""
        engine = make_engine(EngineKind.DUCKDB, dataset)
        try:
            prepared = prepare(dataset, query, engine, epsilon=epsilon, delta=delta, noise=noise)
        finally:
            engine.close()
        rows = []
        for st in prepared.statistics:
            for _, vector in st.vectors:
                rows.append(self._explain_vector(st.aggregate.name, vector))
        for value, tree in prepared.trees.items():
            names = [
                st.aggregate.name
                for st in prepared.statistics
                if st.aggregate.kind is AggKind.QUANTILE and st.value_index == value
            ]
            rows.append(self._explain_vector(", ".join(names), tree))
        selection = None
        if prepared.selection is not None:
            rows.append(self._explain_vector("group selection", prepared.selection))
            selection = (
                f"a group is released when its noisy number of units is at least "
                f"{prepared.threshold} (delta {prepared.selection_delta:.3g})"
            )
        return Explanation(
            scope=str(self.scope_for(dataset)),
            epsilon=prepared.epsilon,
            delta=prepared.delta,
            event=prepared.event,
            vectors=tuple(rows),
            selection=selection,
            alpha=self.alpha,
        )

    def _explain_vector(self, statistic: str, vector: NoisyVector) -> ExplainedVector:
        mech = vector.mechanism(vector.touched)
        return ExplainedVector(
            statistic=statistic,
            vector=vector.label,
            mechanism=mech.describe(),
            epsilon=vector.epsilon,
            delta=vector.delta,
            noise_std=mech.noise_std,
            error_bound=vector.error_bound(self.alpha),
        )

    def release(
        self,
        dataset: Dataset,
        query: str | Query,
        *,
        epsilon: float,
        delta: float = 0.0,
        noise: NoiseKind = NoiseKind.LAPLACE,
        purpose: str = "",
    ) -> Release:
        """Release ``query`` over ``dataset`` at (epsilon, delta), charged to the scope."""
        engine = make_engine(self.engine_kind, dataset)
        try:
            return self._release(dataset, query, engine, epsilon, delta, noise, purpose)
        finally:
            engine.close()

    def _release(
        self,
        dataset: Dataset,
        query: str | Query,
        engine: Engine,
        epsilon: float,
        delta: float,
        noise: NoiseKind,
        purpose: str,
    ) -> Release:
        prepared = prepare(dataset, query, engine, epsilon=epsilon, delta=delta, noise=noise)
        scope = self.scope_for(dataset)
        key = None
        if self.cache:
            key = self._cache_key(prepared, dataset, engine, scope)
            stored = self.ledger.cached_release(key)
            if stored is not None:
                data = json.loads(stored)
                return Release(
                    tuple(data["columns"]),
                    tuple(data["records"]),
                    str(scope),
                    prepared.epsilon,
                    prepared.delta,
                    prepared.event,
                    True,
                    data["alpha"],
                )
        exact = _exact(prepared, engine)
        if not purpose:
            purpose = _describe(prepared.query)
        with self.ledger.reserve(scope, prepared.event, purpose=purpose) as reservation:
            columns, records = _Computation(prepared, exact, self._rng, self.alpha).run()
            result = Release(
                columns,
                records,
                str(scope),
                prepared.epsilon,
                prepared.delta,
                prepared.event,
                False,
                self.alpha,
            )
        if key is not None:
            self.ledger.store_release(key, reservation, result.to_payload())
        return result

    @staticmethod
    def _cache_key(prepared: _Prepared, dataset: Dataset, engine: Engine, scope: Scope) -> str:
        identity = {
            "query": prepared.query.canonical(),
            "spec": dataset.spec.to_dict(),
            "epsilon": prepared.epsilon,
            "delta": prepared.delta,
            "noise": prepared.noise.value,
            "scope": str(scope),
            "data": engine.fingerprint(),
            "version": 1,
        }
        text = json.dumps(identity, sort_keys=True, default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True)
class _Exact:
    """What the engine computed: per-group aggregates, and per group and bin the leaf counts of
    each quantile tree and of a histogram. Nothing here has been released."""

    aggregates: dict[str, npt.NDArray[Any]]
    leaves: dict[int, dict[str, npt.NDArray[Any]]]
    histogram: dict[str, npt.NDArray[Any]] | None


def _exact(prepared: _Prepared, engine: Engine) -> _Exact:
    """Check the data, then run the plan's queries (steps 2 and 3 of a release). The slow path
    (units over their limits) runs only when there are such units."""
    plan = prepared.plan
    engine.check_values([v.sql for v in plan.values], plan.where)
    groups = [f"__g{i}" for i in range(max(1, len(plan.groups)))]
    fast = engine.fetch(plan.fast_sql())
    slow_units = sum(0.0 if v is None else float(v) for v in fast["__slow"].tolist())
    slow_needed = plan.unit is not None and slow_units > 0
    sums = [c for c in fast if c not in groups and c != "__slow"]
    frames = [fast]
    if slow_needed:
        frames.append(engine.fetch(plan.slow_sql()))
    aggregates = merge_sums(frames, groups, sums)
    # a group in which every unit's contribution was dropped is no candidate for release
    kept = np.asarray(aggregates["__units"], dtype=float) > 0
    aggregates = {c: np.asarray(v)[kept] for c, v in aggregates.items()}

    def leaf_counts(value: int, bin_sql: str) -> dict[str, npt.NDArray[Any]]:
        parts = [engine.fetch(plan.fast_leaf_sql(value, bin_sql))]
        if slow_needed:
            parts.append(engine.fetch(plan.slow_leaf_sql(value, bin_sql)))
        return merge_sums(parts, [*groups, "__bin"], ["__n"])

    leaves = {}
    for value in prepared.trees:
        v = plan.values[value]
        leaves[value] = leaf_counts(value, leaf_bin_sql(v.low, v.high, TREE_LEAVES))
    histogram = None
    for st in prepared.statistics:
        if st.aggregate.kind is AggKind.HISTOGRAM:
            assert st.value_index is not None
            histogram = leaf_counts(st.value_index, histogram_bin_sql(st.aggregate.edges))
    return _Exact(aggregates, leaves, histogram)


def _describe(query: Query) -> str:
    stats = ", ".join(a.name for a in query.aggregates)
    group = f" by {', '.join(query.group_by)}" if query.group_by else ""
    where = f" where {query.where}" if query.where else ""
    return f"{stats}{group} from {query.table}{where}"


def _threshold(selection: NoisyVector, delta: float) -> tuple[int, float]:
    """The least integer threshold tau for releasing a group when noisy units >= tau, and the
    delta it costs: with discrete Laplace noise of scale t on counts of units that one unit
    changes in at most K groups, a group only that unit is in is released with probability
    P(1 + Z >= tau); comparing with the mechanism that also noises empty groups, the whole
    release is (epsilon, e^epsilon K P(Z >= tau))-DP."""
    event = selection.mechanism(selection.touched).event
    assert isinstance(event, DiscreteLaplaceEvent)
    t = event.scale
    p = math.exp(-1.0 / t)
    big_k = selection.touched
    factor = math.exp(selection.epsilon) * big_k / (1 + p)
    # smallest tau >= 1 with factor * p**tau <= delta
    tau = max(1, math.ceil(math.log(delta / factor) / math.log(p)))
    while factor * p**tau > delta:
        tau += 1
    return tau, factor * p**tau


class _Computation:
    """Step 5 of a release: selection, noise and estimates, from exact aggregates."""

    def __init__(
        self, prepared: _Prepared, exact: _Exact, rng: RandomSource | None, alpha: float
    ) -> None:
        self.p = prepared
        self.agg = exact.aggregates
        self.leaves = exact.leaves
        self.histogram = exact.histogram
        self.rng = rng
        self.alpha = alpha
        self.groups = list(prepared.query.group_by)

    def _group_keys(self, frame: dict[str, npt.NDArray[Any]]) -> list[tuple[Any, ...]]:
        # tolist() turns numpy scalars into Python ones (an object column may still hold some)
        cols = [[plain(v) for v in frame[f"__g{i}"].tolist()] for i in range(len(self.groups))]
        return list(zip(*cols, strict=True))

    def run(self) -> tuple[tuple[str, ...], tuple[dict[str, Any], ...]]:
        p = self.p
        exact_keys = self._group_keys(self.agg) if self.groups else [()] * len(self.agg["__units"])
        position = {key: i for i, key in enumerate(exact_keys)}
        noisy_units: FloatArray | None = None
        if p.public_keys is not None:
            keys = p.public_keys
        else:
            assert p.selection is not None
            units = self.agg["__units"].astype(np.float64)
            noisy = p.selection.release(units, self.rng)
            keep = noisy >= p.threshold
            keys = [k for k, kept in zip(exact_keys, keep, strict=True) if kept]
            noisy_units = noisy[keep]
        rows = np.array([position.get(k, -1) for k in keys], dtype=np.int64)

        def column(name: str) -> FloatArray:
            data = self.agg[name].astype(np.float64)
            data = np.where(np.isnan(data), 0.0, data)  # SUM over no non-null value is NULL
            out = np.zeros(len(keys))
            present = rows >= 0
            out[present] = data[rows[present]]
            return out

        if any(st.aggregate.kind is AggKind.HISTOGRAM for st in p.statistics):
            return self._histogram(keys)
        results: dict[str, tuple[FloatArray, FloatArray, FloatArray]] = {}
        for st in p.statistics:
            results[st.aggregate.name] = self._statistic(st, column, noisy_units, keys, rows)
        names = [st.aggregate.name for st in p.statistics]
        if len(names) == 1:
            out_cols = [*self.groups, "value", "ci_low", "ci_high"]
        else:
            out_cols = list(self.groups)
            for n in names:
                out_cols += [n, f"{n}_ci_low", f"{n}_ci_high"]
        records = []
        for r, key in enumerate(keys):
            record: dict[str, Any] = dict(zip(self.groups, key, strict=True))
            for n in names:
                value, low, high = results[n]
                labels = (
                    ("value", "ci_low", "ci_high")
                    if len(names) == 1
                    else (n, f"{n}_ci_low", f"{n}_ci_high")
                )
                record.update(
                    zip(labels, (value[r].item(), low[r].item(), high[r].item()), strict=True)
                )
            records.append(record)
        return tuple(out_cols), tuple(records)

    def _statistic(
        self,
        st: _Statistic,
        column: Any,
        noisy_units: FloatArray | None,
        keys: list[tuple[Any, ...]],
        rows: npt.NDArray[np.int64],
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        agg, alpha = st.aggregate, self.alpha
        kind = agg.kind
        vectors = dict(st.vectors)
        if kind is AggKind.COUNT_UNITS and not vectors:
            assert noisy_units is not None
            assert self.p.selection is not None
            e = self.p.selection.error_bound(alpha)
            return _count(noisy_units, e)
        if kind in (AggKind.COUNT, AggKind.COUNT_UNITS):
            name = "__rows" if kind is AggKind.COUNT else "__units"
            vec = vectors["n" if kind is AggKind.COUNT else "u"]
            return _count(vec.release(column(name), self.rng), vec.error_bound(alpha))
        assert st.value_index is not None
        v = self.p.plan.values[st.value_index]
        i = st.value_index
        if kind is AggKind.SUM:
            vec = vectors["s"]
            noisy = vec.release(column(f"__s{i}"), self.rng)
            e = vec.error_bound(alpha)
            low_range = -np.inf if v.low < 0 else 0.0
            high_range = np.inf if v.high > 0 else 0.0
            value = est.clamp(noisy, low_range, high_range)
            return (
                value,
                est.clamp(noisy - e, low_range, high_range),
                est.clamp(noisy + e, low_range, high_range),
            )
        if kind is AggKind.MEAN:
            n = column(f"__c{i}")
            centred = column(f"__s{i}") - v.midpoint * n
            s_noisy = vectors["d"].release(centred, self.rng)
            n_noisy = vectors["c"].release(n, self.rng)
            es = vectors["d"].error_bound(alpha / 2)
            en = vectors["c"].error_bound(alpha / 2)
            value = est.clamp(v.midpoint + s_noisy / np.maximum(n_noisy, 1.0), v.low, v.high)
            lo, hi = est.ratio_interval(s_noisy, es, n_noisy, en)
            return (
                value,
                est.clamp(v.midpoint + lo, v.low, v.high),
                est.clamp(v.midpoint + hi, v.low, v.high),
            )
        if kind in (AggKind.VARIANCE, AggKind.STDDEV):
            n = column(f"__c{i}")
            s = column(f"__s{i}")
            squares = column(f"__q{i}")
            m = v.midpoint
            centred = s - m * n
            centred_sq = squares - 2 * m * s + m * m * n
            q_noisy = vectors["q"].release(centred_sq, self.rng)
            d_noisy = vectors["d"].release(centred, self.rng)
            n_noisy = vectors["c"].release(n, self.rng)
            eq = vectors["q"].error_bound(alpha / 3)
            ed = vectors["d"].error_bound(alpha / 3)
            en = vectors["c"].error_bound(alpha / 3)
            denominator = np.maximum(n_noisy, 1.0)
            r2 = v.radius**2
            variance = est.clamp(q_noisy / denominator - (d_noisy / denominator) ** 2, 0.0, r2)
            q_lo, q_hi = est.ratio_interval(q_noisy, eq, n_noisy, en)
            d_lo, d_hi = est.ratio_interval(d_noisy, ed, n_noisy, en)
            square_lo = np.where((d_lo <= 0) & (d_hi >= 0), 0.0, np.minimum(d_lo**2, d_hi**2))
            square_hi = np.maximum(d_lo**2, d_hi**2)
            var_lo = est.clamp(np.maximum(q_lo, 0.0) - square_hi, 0.0, r2)
            var_hi = est.clamp(q_hi - square_lo, 0.0, r2)
            var_lo = np.where(np.isfinite(var_lo), var_lo, 0.0)
            var_hi = np.where(np.isfinite(var_hi), var_hi, r2)
            if kind is AggKind.STDDEV:
                return np.sqrt(variance), np.sqrt(var_lo), np.sqrt(var_hi)
            return variance, var_lo, var_hi
        if kind is AggKind.QUANTILE:
            return self._quantile(st, keys)
        raise ConfigurationError(f"no estimator for {kind.value}")

    def _leaf_matrix(
        self, frame: dict[str, npt.NDArray[Any]], keys: list[tuple[Any, ...]], width: int
    ) -> FloatArray:
        matrix = np.zeros((len(keys), width))
        positions = row_positions(
            [frame[f"__g{j}"] for j in range(len(self.groups))], keys, len(frame["__bin"])
        )
        present = positions >= 0
        np.add.at(
            matrix,
            (positions[present], frame["__bin"].astype(np.int64)[present]),
            frame["__n"].astype(np.float64)[present],
        )
        return matrix

    def _quantile(
        self, st: _Statistic, keys: list[tuple[Any, ...]]
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        assert st.value_index is not None
        assert st.aggregate.quantile is not None
        v = self.p.plan.values[st.value_index]
        cache = self.__dict__.setdefault("_trees", {})
        if st.value_index not in cache:
            vector = self.p.trees[st.value_index]
            leaf = self._leaf_matrix(self.leaves[st.value_index], keys, TREE_LEAVES)
            levels = est.quantile_tree(leaf)
            flat = np.concatenate([lvl.reshape(-1) for lvl in levels])
            noisy_flat = vector.release(flat, self.rng)
            noisy_levels, start = [], 0
            for lvl in levels:
                noisy_levels.append(noisy_flat[start : start + lvl.size].reshape(lvl.shape))
                start += lvl.size
            prefixes, used = est.prefix_counts(noisy_levels)
            # one bound for every prefix of every boundary (union bound), and for the root
            bound = est.sum_noise_bound(vector, int(used.max()), self.alpha / (2 * TREE_LEAVES))
            cache[st.value_index] = (prefixes, bound)
        prefixes, bound = cache[st.value_index]
        q = st.aggregate.quantile
        total = prefixes[:, TREE_LEAVES]
        width = (v.high - v.low) / TREE_LEAVES

        def first_crossing(target: FloatArray, offset: float) -> FloatArray:
            crossed = prefixes + offset >= target[:, None]
            index = np.where(crossed.any(axis=1), crossed.argmax(axis=1), TREE_LEAVES)
            return np.asarray(v.low + index * width, dtype=np.float64)

        target = q * np.maximum(total, 0.0)
        value = first_crossing(target, 0.0)
        low = first_crossing(q * np.maximum(total - bound, 0.0), bound)
        high = first_crossing(q * (total + bound), -bound)
        return (
            est.clamp(value, v.low, v.high),
            est.clamp(np.minimum(low, value), v.low, v.high),
            est.clamp(np.maximum(high, value), v.low, v.high),
        )

    def _histogram(
        self, keys: list[tuple[Any, ...]]
    ) -> tuple[tuple[str, ...], tuple[dict[str, Any], ...]]:
        st = next(s for s in self.p.statistics if s.aggregate.kind is AggKind.HISTOGRAM)
        assert self.histogram is not None
        edges = st.aggregate.edges
        bins = len(edges) - 1
        matrix = self._leaf_matrix(self.histogram, keys, bins)
        vector = st.vectors[0][1]
        noisy = vector.release(matrix.reshape(-1), self.rng).reshape(matrix.shape)
        value, low, high = _count(noisy.reshape(-1), vector.error_bound(self.alpha))
        columns = (*self.groups, "bin_low", "bin_high", "value", "ci_low", "ci_high")
        records = []
        for r, key in enumerate(keys):
            for b in range(bins):
                j = r * bins + b
                record: dict[str, Any] = dict(zip(self.groups, key, strict=True))
                record.update(
                    bin_low=edges[b],
                    bin_high=edges[b + 1],
                    value=value[j].item(),
                    ci_low=low[j].item(),
                    ci_high=high[j].item(),
                )
                records.append(record)
        return columns, tuple(records)


def _count(noisy: FloatArray, bound: float) -> tuple[FloatArray, FloatArray, FloatArray]:
    return (
        np.maximum(noisy, 0.0),
        np.maximum(noisy - bound, 0.0),
        np.maximum(noisy + bound, 0.0),
    )
