"""Accountants: one contract every accountant meets, then each against reference values."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from veil.errors import ConfigurationError, UnsupportedEventError
from veil.privacy import events as ev
from veil.privacy.accountants import (
    Accountant,
    AccountingMethod,
    NeighboringRelation,
    PldAccountant,
    PureDpAccountant,
    RdpAccountant,
    TightestAccountant,
    ZCdpAccountant,
    make_accountant,
)
from veil.privacy.accountants._dpa import dpa, rdp_delta, rdp_epsilon

REFERENCE = json.loads(
    (Path(__file__).parent / "reference" / "reference_eps.json").read_text(encoding="utf-8")
)


def dpsgd(q: float, sigma: float, steps: int) -> ev.Event:
    inner: ev.Event = (
        ev.GaussianEvent(sigma) if q >= 1 else ev.PoissonSampledEvent(q, ev.GaussianEvent(sigma))
    )
    return ev.SelfComposedEvent(inner, steps)


# --------------------------------------------------------------------------------------------
# The contract
# --------------------------------------------------------------------------------------------

# For each accountant: an event it composes, and one it must refuse.
CASES: dict[str, tuple[Callable[[], Accountant], ev.Event, ev.Event]] = {
    "pld": (PldAccountant, ev.GaussianEvent(2.0), ev.ZCdpEvent(0.1)),
    "rdp": (
        RdpAccountant,
        ev.PoissonSampledEvent(0.1, ev.GaussianEvent(1.5)),
        ev.PoissonSampledEvent(0.1, ev.LaplaceEvent(2.0)),
    ),
    "zcdp": (
        ZCdpAccountant,
        ev.DiscreteGaussianEvent(sigma=3.0, sensitivity=1),
        ev.PoissonSampledEvent(0.1, ev.GaussianEvent(1.0)),
    ),
    "pure": (PureDpAccountant, ev.LaplaceEvent(2.0), ev.GaussianEvent(1.0)),
    "tightest": (
        TightestAccountant,
        ev.LaplaceEvent(2.0),
        ev.SampledWithoutReplacementEvent(100, 10, ev.LaplaceEvent(1.0)),
    ),
}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> tuple[Callable[[], Accountant], ev.Event, ev.Event]:
    return CASES[request.param]


class TestContract:
    def test_nothing_composed_costs_nothing(self, case: Any) -> None:
        make, _, _ = case
        acct = make()
        assert acct.epsilon(1e-6) == 0.0
        assert acct.delta(0.5) == 0.0
        assert acct.history == ()

    def test_compose_chains_and_records_history(self, case: Any) -> None:
        make, good, _ = case
        acct = make()
        assert acct.supports(good)
        assert acct.compose(good, 3) is acct
        assert acct.history == ((good, 3),)
        assert 0 < acct.epsilon(1e-6) < math.inf

    def test_noop_and_zero_count_cost_nothing(self, case: Any) -> None:
        make, good, _ = case
        assert make().compose(ev.NoOpEvent()).epsilon(1e-6) == 0.0
        assert make().compose(good, 0).epsilon(1e-6) == 0.0
        assert make().compose(ev.SelfComposedEvent(good, 0)).epsilon(1e-6) == 0.0

    def test_more_releases_never_cost_less(self, case: Any) -> None:
        make, good, _ = case
        eps = [make().compose(good, k).epsilon(1e-6) for k in (1, 2, 4, 8)]
        assert eps == sorted(eps)
        assert eps[-1] > eps[0]

    def test_self_composition_equals_repeated_composition(self, case: Any) -> None:
        make, good, _ = case
        once = make().compose(good, 4).epsilon(1e-6)
        repeated = make()
        for _ in range(4):
            repeated.compose(good)
        nested = make().compose(ev.ComposedEvent([good, ev.SelfComposedEvent(good, 3)]))
        assert repeated.epsilon(1e-6) == pytest.approx(once, rel=1e-3)
        assert nested.epsilon(1e-6) == pytest.approx(once, rel=1e-3)

    def test_epsilon_and_delta_are_consistent(self, case: Any) -> None:
        make, good, _ = case
        acct = make().compose(good, 5)
        for delta in (1e-9, 1e-6, 1e-3):
            eps = acct.epsilon(delta)
            assert acct.delta(eps) <= delta * 1.01 + 1e-12
        deltas = [acct.delta(e) for e in (0.1, 0.5, 1.0, 2.0, 5.0)]
        assert deltas == sorted(deltas, reverse=True)

    def test_unsupported_event_is_refused_and_changes_nothing(self, case: Any) -> None:
        make, good, bad = case
        acct = make().compose(good)
        before = acct.epsilon(1e-6)
        assert not acct.supports(bad)
        assert acct.unsupported_reason(bad)
        with pytest.raises(UnsupportedEventError, match="compose"):
            acct.compose(bad)
        assert acct.epsilon(1e-6) == before
        assert acct.history == ((good, 1),)

    def test_non_private_release_is_infinitely_costly(self, case: Any) -> None:
        make, good, _ = case
        acct = make().compose(good).compose(ev.NonPrivateEvent())
        assert acct.epsilon(1e-6) == math.inf
        assert acct.delta(10.0) == 1.0

    @pytest.mark.parametrize("delta", [-0.1, 1.5, float("nan")])
    def test_bad_delta_is_a_configuration_error(self, case: Any, delta: float) -> None:
        make, good, _ = case
        with pytest.raises(ConfigurationError):
            make().compose(good).epsilon(delta)

    def test_bad_arguments_to_compose(self, case: Any) -> None:
        make, good, _ = case
        with pytest.raises(ConfigurationError):
            make().compose("gaussian")
        with pytest.raises(ConfigurationError):
            make().compose(good, -1)


# --------------------------------------------------------------------------------------------
# Reference values (dp-accounting 0.6.0 and Opacus 1.6.0; see reference/make_reference.py)
# --------------------------------------------------------------------------------------------

SETTINGS = REFERENCE["settings"]


@pytest.mark.parametrize("row", SETTINGS, ids=[r["name"] for r in SETTINGS])
def test_pld_matches_dp_accounting_and_lies_in_opacus_prv_bracket(row: dict[str, Any]) -> None:
    event = dpsgd(row["sampling_probability"], row["noise_multiplier"], row["steps"])
    eps = PldAccountant().compose(event).epsilon(row["delta"])
    if "analytic_gaussian" in row:
        # un-sampled Gaussians compose into one Gaussian, whose exact epsilon veil uses
        assert eps == pytest.approx(row["analytic_gaussian"], rel=1e-10)
        assert eps <= row["dp_accounting_pld"]
    else:
        assert eps == pytest.approx(row["dp_accounting_pld"], abs=1e-9)
    # Opacus' PRV accountant returns an upper bound that is at most eps_error=0.01 above the
    # estimate; a tight pessimistic PLD must lie below it and within 0.02 of it.
    assert row["opacus_prv_upper"] - 0.025 <= eps <= row["opacus_prv_upper"]


@pytest.mark.parametrize("row", SETTINGS, ids=[r["name"] for r in SETTINGS])
def test_rdp_matches_dp_accounting_and_opacus(row: dict[str, Any]) -> None:
    event = dpsgd(row["sampling_probability"], row["noise_multiplier"], row["steps"])
    eps = RdpAccountant().compose(event).epsilon(row["delta"])
    assert eps == pytest.approx(row["dp_accounting_rdp"], rel=1e-12)
    # Opacus evaluates other orders (no 11, none above 63) and sums fractional-order series
    # exactly; dp-accounting's fractional orders are slightly conservative.
    assert eps == pytest.approx(row["opacus_rdp"], rel=2e-3)


@pytest.mark.parametrize("row", SETTINGS, ids=[r["name"] for r in SETTINGS])
def test_tightest_is_pld_and_pld_never_exceeds_rdp(row: dict[str, Any]) -> None:
    event = dpsgd(row["sampling_probability"], row["noise_multiplier"], row["steps"])
    tight = TightestAccountant().compose(event)
    eps = tight.epsilons(row["delta"])
    assert set(eps) == {"PLD", "RDP"} | ({"zCDP"} if row["sampling_probability"] >= 1 else set())
    assert eps["PLD"] <= eps["RDP"]
    assert tight.epsilon(row["delta"]) == min(eps.values())


def test_abadi_mnist_values_named_in_the_issue() -> None:
    event = dpsgd(256 / 60000, 1.1, 14063)
    assert PldAccountant().compose(event).epsilon(1e-5) == pytest.approx(2.38, abs=0.005)
    assert RdpAccountant().compose(event).epsilon(1e-5) == pytest.approx(2.60, abs=0.005)


def _classic_rdp_epsilon(acct: RdpAccountant, delta: float) -> float:
    """Mironov (2017) Prop. 3, the conversion every paper before 2020 used."""
    return float(np.min(acct.rdp - math.log(delta) / (acct.orders - 1)))


@pytest.mark.parametrize(
    ("q", "sigma", "steps", "published"),
    [
        (0.01, 4.0, 10000, 1.26),  # Abadi et al. 2016, section 3.1
        (256 / 60000, 1.12, 14040, 2.92),  # TensorFlow Privacy tutorial README, 60 epochs
        (256 / 60000, 1.2, 2340, 1.20),  # same README, 10 epochs
        (256 / 60000, 1.1, 14063, 3.01),  # Opacus examples/mnist README, sigma 1.1
        (256 / 60000, 1.3, 3516, 1.19),  # same README, sigma 1.3
    ],
)
def test_published_epsilons_are_reproduced_with_the_classic_conversion(
    q: float, sigma: float, steps: int, published: float
) -> None:
    acct = RdpAccountant().compose(dpsgd(q, sigma, steps))
    assert round(_classic_rdp_epsilon(acct, 1e-5), 2) == published
    # and veil's own (improved) conversion is tighter than the published number
    assert acct.epsilon(1e-5) < published


def test_mixed_composition_reference() -> None:
    # 1 x Laplace(eps 0.5) + 10 x Gaussian(sigma 20) + 1000 x Poisson(0.01, Gaussian(1)),
    # dp-accounting 0.6.0 at delta 1e-5: PLD 2.3453, RDP 2.6050.
    mix = ev.ComposedEvent(
        [
            ev.LaplaceEvent(2.0),
            ev.SelfComposedEvent(ev.GaussianEvent(20.0), 10),
            dpsgd(0.01, 1.0, 1000),
        ]
    )
    assert PldAccountant().compose(mix).epsilon(1e-5) == pytest.approx(2.3453, abs=1e-4)
    assert RdpAccountant().compose(mix).epsilon(1e-5) == pytest.approx(2.6050, abs=1e-4)


def test_ten_small_laplace_releases() -> None:
    # Ten epsilon-0.1 Laplace releases at delta 1e-6: basic composition 1.0, tight 0.998978.
    acct = TightestAccountant().compose(ev.LaplaceEvent(10.0), 10)
    eps = acct.epsilons(1e-6)
    assert eps["pure-DP"] == pytest.approx(1.0)
    assert eps["PLD"] == pytest.approx(0.998978, abs=2e-6)
    assert acct.epsilon(1e-6) == eps["PLD"]


# --------------------------------------------------------------------------------------------
# Each accountant's own mathematics
# --------------------------------------------------------------------------------------------


def test_pure_composition_and_randomised_response_delta() -> None:
    acct = PureDpAccountant().compose(ev.LaplaceEvent(4.0)).compose(ev.PureDpEvent(0.5), 2)
    assert acct.epsilon(0.0) == pytest.approx(1.25)
    eps0 = 1.25
    for eps in (0.0, 0.3, 1.0):
        expected = (math.exp(eps0) - math.exp(eps)) / (1 + math.exp(eps0))
        assert acct.delta(eps) == pytest.approx(expected, rel=1e-12)
    assert acct.delta(1.25) == 0.0


def test_pure_amplification_by_subsampling() -> None:
    q, eps = 0.01, 2.0
    poisson = PureDpAccountant().compose(ev.PoissonSampledEvent(q, ev.PureDpEvent(eps)))
    assert poisson.epsilon(0) == pytest.approx(math.log1p(q * math.expm1(eps)))
    wor_event = ev.SampledWithoutReplacementEvent(1000, 10, ev.PureDpEvent(eps))
    assert not PureDpAccountant().supports(wor_event)  # needs replace-one neighbours
    replace = PureDpAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
    # the base release's epsilon under replace-one is twice its add/remove epsilon
    assert replace.compose(wor_event).epsilon(0) == pytest.approx(
        math.log1p(0.01 * math.expm1(2 * eps))
    )


def test_zcdp_parameters_and_conversion() -> None:
    acct = ZCdpAccountant()
    acct.compose(ev.GaussianEvent(2.0))  # 1/8
    acct.compose(ev.DiscreteGaussianEvent(sigma=4.0, sensitivity=2.0))  # 4/32 = 1/8
    acct.compose(ev.LaplaceEvent(2.0))  # (1/2)^2 / 2 = 1/8
    acct.compose(ev.ExponentialMechanismEvent(1.0))  # 1/8
    assert acct.rho == pytest.approx(0.5)
    # the conversion equals dp-accounting's on the same orders, and the classic bound
    # rho + 2 sqrt(rho log 1/delta) is never better
    orders = np.linspace(1.02, 200, 5000)
    expected, _ = dpa().rdp.rdp_privacy_accountant.compute_epsilon(orders, 0.5 * orders, 1e-6)
    assert acct.epsilon(1e-6) == pytest.approx(expected, rel=1e-4)
    assert acct.epsilon(1e-6) <= 0.5 + 2 * math.sqrt(0.5 * math.log(1e6))


def test_rdp_follows_dp_accounting_event_by_event() -> None:
    d = dpa()
    cases = [
        (ev.GaussianEvent(1.3), d.GaussianDpEvent(1.3)),
        (ev.LaplaceEvent(3.0), d.LaplaceDpEvent(3.0)),
        (
            ev.PoissonSampledEvent(0.05, ev.GaussianEvent(0.9)),
            d.PoissonSampledDpEvent(0.05, d.GaussianDpEvent(0.9)),
        ),
        (ev.ZCdpEvent(0.2), d.ZCDpEvent(0.2)),
    ]
    for ours, theirs in cases:
        mine = RdpAccountant().compose(ours, 7).rdp
        ref = d.rdp.RdpAccountant().compose(theirs, 7)
        np.testing.assert_allclose(mine, ref.rdp, rtol=1e-12)


def test_rdp_without_replacement_needs_replace_one() -> None:
    wor = ev.SampledWithoutReplacementEvent(60000, 256, ev.GaussianEvent(1.1))
    with pytest.raises(UnsupportedEventError, match="REPLACE_ONE"):
        RdpAccountant().compose(wor)
    acct = RdpAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE).compose(wor, 100)
    assert 0 < acct.epsilon(1e-5) < math.inf


def test_pld_discrete_gaussian_is_exact_and_vectors_are_refused() -> None:
    # at small sigma the discrete Gaussian is slightly *less* private than the continuous one
    dg = PldAccountant().compose(ev.DiscreteGaussianEvent(sigma=1.0, sensitivity=1)).epsilon(1e-5)
    g = PldAccountant().compose(ev.GaussianEvent(1.0)).epsilon(1e-5)
    assert dg > g
    vector = ev.DiscreteGaussianEvent(sigma=3.0, sensitivity=2.5, dimension=4)
    with pytest.raises(UnsupportedEventError, match="scalar query"):
        PldAccountant().compose(vector)
    # the tightest accountant falls back on zCDP/RDP for it
    assert TightestAccountant().compose(vector).epsilon(1e-5) < math.inf


def test_pld_subsampled_pure_event_and_approx_event() -> None:
    q, eps = 0.02, 1.0
    acct = PldAccountant().compose(ev.PoissonSampledEvent(q, ev.ExponentialMechanismEvent(eps)))
    amplified = math.log1p(q * math.expm1(eps))
    assert acct.epsilon(0.0) == pytest.approx(amplified, abs=2e-4)
    approx = PldAccountant().compose(ev.ApproxDpEvent(epsilon=0.5, delta=1e-7))
    assert approx.epsilon(1e-7) == pytest.approx(0.5, abs=2e-4)
    assert approx.delta(0.5) >= 1e-7


def test_tightest_drops_accountants_that_cannot_follow() -> None:
    acct = TightestAccountant().compose(ev.LaplaceEvent(5.0))
    assert {m.name for m in acct.members} == {"pure-DP", "zCDP", "RDP", "PLD"}
    acct.compose(dpsgd(0.01, 1.0, 10))
    assert {m.name for m in acct.members} == {"RDP", "PLD"}
    with pytest.raises(UnsupportedEventError, match="no accountant"):
        acct.compose(ev.SampledWithoutReplacementEvent(10, 2, ev.LaplaceEvent(1.0)))
    assert {m.name for m in acct.members} == {"RDP", "PLD"}


def test_make_accountant_gives_each_method() -> None:
    names = {m: make_accountant(m).name for m in AccountingMethod}
    assert names == {
        AccountingMethod.TIGHTEST: "tightest",
        AccountingMethod.PLD: "PLD",
        AccountingMethod.RDP: "RDP",
        AccountingMethod.ZCDP: "zCDP",
        AccountingMethod.PURE: "pure-DP",
    }
    with pytest.raises(ConfigurationError):
        make_accountant("pld")  # type: ignore[arg-type]


@pytest.mark.parametrize("delta", [1e-9, 1e-5, 0.01, 0.3])
def test_vectorised_rdp_conversion_equals_dp_accounting(delta: float) -> None:
    acct = RdpAccountant().compose(dpsgd(0.05, 1.2, 500))
    ref_eps, _ = dpa().rdp.rdp_privacy_accountant.compute_epsilon(acct.orders, acct.rdp, delta)
    assert rdp_epsilon(acct.orders, acct.rdp, delta) == pytest.approx(ref_eps, rel=1e-13)
    for eps in (0.1, 1.0, 3.0):
        ref_delta, _ = dpa().rdp.rdp_privacy_accountant.compute_delta(acct.orders, acct.rdp, eps)
        assert rdp_delta(acct.orders, acct.rdp, eps) == pytest.approx(ref_delta, rel=1e-12)


# --------------------------------------------------------------------------------------------
# Neighbouring relations, and numerical edges (found in review)
# --------------------------------------------------------------------------------------------

REPLACE = NeighboringRelation.REPLACE_ONE


def test_replace_one_doubles_the_sensitivity_of_unsampled_releases_everywhere() -> None:
    # Parameters are per unit (add/remove); a replacement moves a Gaussian sum by up to 2.
    d = dpa()
    reference = d.pld.PLDAccountant(d.NeighboringRelation.REPLACE_ONE).compose(
        d.GaussianDpEvent(1.0)
    )
    fast = PldAccountant(neighboring_relation=REPLACE).compose(ev.GaussianEvent(1.0))
    mixed = (
        PldAccountant(neighboring_relation=REPLACE)
        .compose(ev.LaplaceEvent(1e9))
        .compose(ev.GaussianEvent(1.0))
    )
    unsampled = PldAccountant(neighboring_relation=REPLACE).compose(
        ev.PoissonSampledEvent(1.0, ev.GaussianEvent(1.0))
    )
    for acct in (fast, mixed, unsampled):
        assert acct.epsilon(1e-5) == pytest.approx(reference.get_epsilon(1e-5), abs=2e-4)
    assert fast.epsilon(1e-5) == pytest.approx(
        PldAccountant().compose(ev.GaussianEvent(0.5)).epsilon(1e-5), rel=1e-12
    )
    rdp = RdpAccountant(neighboring_relation=REPLACE).compose(ev.GaussianEvent(1.0))
    assert rdp.epsilon(1e-5) >= fast.epsilon(1e-5)
    pure = PureDpAccountant(neighboring_relation=REPLACE).compose(ev.LaplaceEvent(10.0))
    assert pure.epsilon(0) == pytest.approx(0.2)
    zcdp = ZCdpAccountant(neighboring_relation=REPLACE).compose(ev.GaussianEvent(2.0))
    assert zcdp.rho == pytest.approx(4 / 8)


def test_poisson_sampling_under_replace_one_follows_dp_accounting() -> None:
    d = dpa()
    ours = PldAccountant(neighboring_relation=REPLACE).compose(
        ev.PoissonSampledEvent(0.01, ev.GaussianEvent(1.0)), 50
    )
    theirs = d.pld.PLDAccountant(d.NeighboringRelation.REPLACE_ONE).compose(
        d.PoissonSampledDpEvent(0.01, d.GaussianDpEvent(1.0)), 50
    )
    assert ours.epsilon(1e-5) == pytest.approx(theirs.get_epsilon(1e-5), abs=1e-9)
    # and it is never cheaper than add/remove
    assert ours.epsilon(1e-5) > PldAccountant().compose(
        ev.PoissonSampledEvent(0.01, ev.GaussianEvent(1.0)), 50
    ).epsilon(1e-5)


@pytest.mark.parametrize("mu", [0.05, 0.3, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("delta", [1e-12, 1e-8, 1e-5, 1e-2])
def test_closed_form_gaussian_epsilon_is_never_below_the_root(mu: float, delta: float) -> None:
    from veil.privacy.accountants.pld import gaussian_delta, gaussian_epsilon
    from veil.privacy.calibration import gaussian_noise_multiplier

    eps = gaussian_epsilon(mu, delta)
    assert gaussian_delta(mu, eps) <= delta
    assert gaussian_delta(mu, eps * (1 - 1e-6)) > delta or eps < 1e-6  # and it is tight
    sigma = gaussian_noise_multiplier(epsilon=eps, delta=delta)
    assert gaussian_delta(1 / sigma, eps) <= delta


def test_a_tiny_negative_renyi_divergence_does_not_zero_the_epsilon() -> None:
    acct = RdpAccountant().compose(ev.GaussianEvent(0.1), 100)
    rdp = acct.rdp
    eps = rdp_epsilon(acct.orders, rdp, 1e-5)
    rdp[3] = -1e-18
    assert rdp_epsilon(acct.orders, rdp, 1e-5) == pytest.approx(eps, rel=1e-6)
    assert rdp_delta(acct.orders, rdp, 1.0) > 0


def test_zero_repetitions_of_a_non_private_release_cost_nothing() -> None:
    event = ev.PoissonSampledEvent(0.5, ev.SelfComposedEvent(ev.NonPrivateEvent(), 0))
    assert PureDpAccountant().compose(event).epsilon(1e-6) == 0.0
    assert TightestAccountant().compose(event).epsilon(1e-6) == 0.0
