"""Contribution bounding, checked on random data: every unit's contribution really is bounded,
and nothing is dropped that the bounds allow."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from veil.analytics import Dataset, NoiseKind, TableSpec
from veil.analytics.engines import DuckDBEngine
from veil.analytics.release import _exact, prepare

rows = st.lists(
    st.tuples(
        st.integers(0, 6),  # unit
        st.one_of(st.none(), st.integers(0, 4)),  # group (NULL is a group too)
        st.one_of(st.none(), st.floats(-50, 150, allow_nan=False)),  # value (NULL ignored)
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows, st.integers(1, 3), st.integers(1, 3))
def test_each_units_contribution_is_bounded(
    data: list[tuple[int, int | None, float | None]], big_k: int, k: int
) -> None:
    table = pa.table(
        {
            "unit": pa.array([r[0] for r in data], pa.int64()),
            "grp": pa.array([r[1] for r in data], pa.int64()),
            "x": pa.array([r[2] for r in data], pa.float64()),
        }
    )
    spec = TableSpec(
        "t",
        privacy_unit="unit",
        bounds={"x": (0.0, 100.0)},
        max_groups_per_unit=big_k,
        max_rows_per_group=k,
    )
    dataset = Dataset(table, spec)
    engine = DuckDBEngine(dataset)
    prepared = prepare(
        dataset,
        "SELECT grp, SUM(x), COUNT(*) FROM t GROUP BY grp",
        engine,
        epsilon=1.0,
        delta=1e-6,
        noise=NoiseKind.LAPLACE,
    )
    contrib = engine.fetch(prepared.plan.contributions_sql())
    per_group = _exact(prepared, engine).aggregates
    engine.close()

    truth: dict[tuple[int, Any], list[float | None]] = defaultdict(list)
    for unit, group, value in data:
        truth[(unit, group)].append(value)
    groups_of: dict[int, set[Any]] = defaultdict(set)
    for unit, group in truth:
        groups_of[unit].add(group)

    kept: dict[int, list[Any]] = defaultdict(list)
    for i in range(len(contrib["__u"])):
        unit = int(contrib["__u"][i])
        group = contrib["__g0"][i]
        group = (
            None if group is None or (isinstance(group, float) and group != group) else int(group)
        )
        n_rows = int(contrib["__rows"][i])
        total = float(contrib["__s0"][i]) if contrib["__s0"][i] is not None else 0.0
        assert (unit, group) in truth, "a contribution to a group the unit is not in"
        kept[unit].append(group)
        assert n_rows == min(k, len(truth[(unit, group)])), "rows per group not bounded right"
        clamped = sorted(min(max(v, 0.0), 100.0) for v in truth[(unit, group)] if v is not None)
        # the kept rows are n_rows of the unit's rows; their non-null clamped values sum to
        # something between the smallest and the largest such selection
        chosen = min(n_rows, len(clamped))
        low = sum(clamped[: max(0, chosen - (len(truth[(unit, group)]) - len(clamped)))])
        high = sum(clamped[-chosen:]) if chosen else 0.0
        assert low - 1e-9 <= total <= high + 1e-9
        assert total <= k * 100.0
    for unit, groups in groups_of.items():
        assert len(kept[unit]) == min(big_k, len(groups)), "groups per unit not bounded right"
        assert len(set(kept[unit])) == len(kept[unit])
    # the release's per-group totals come from a second, independent random choice, so they
    # must agree with any valid choice: exactly min(K, groups) units per unit, and between the
    # fewest and the most rows that K groups of at most k rows each can hold
    assert int(per_group["__units"].sum()) == sum(min(big_k, len(g)) for g in groups_of.values())
    fewest = most = 0
    for unit, groups in groups_of.items():
        sizes = sorted(min(k, len(truth[(unit, g)])) for g in groups)
        fewest += sum(sizes[: min(big_k, len(sizes))])
        most += sum(sizes[-min(big_k, len(sizes)) :])
    assert fewest <= int(per_group["__rows"].sum()) <= most
