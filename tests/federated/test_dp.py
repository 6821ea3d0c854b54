"""Client-level DP-FedAvg and record-level DP-SGD: noise, accounting, and the ledger."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
import torch
from scipy import stats
from tests.federated.conftest import synthetic

from veil.errors import BudgetExceededError, ConfigurationError
from veil.federated import (
    AdaptiveClipping,
    ClientSampling,
    DpAggregator,
    DpSgd,
    NoisySum,
    RoundContext,
    Simulation,
    Strategy,
    TrainConfig,
    TrainResult,
    models,
)
from veil.federated.strategies import Sgd
from veil.ledger import Ledger
from veil.privacy import InsecureSeededRandom, PldAccountant, RdpAccountant
from veil.privacy.events import GaussianEvent, PoissonSampledEvent


def _context(dim: int, population: int, q: float, seed: int = 0) -> RoundContext:
    return RoundContext(1, dim, population, int(q * population), q, InsecureSeededRandom(seed))


class NoiseOnTheMean(DpAggregator):
    """A deliberately broken variant: the noise of z·C is added after dividing by the expected
    number of clients, to the mean rather than the sum."""

    def aggregate(self, results, context):  # type: ignore[no-untyped-def]
        expected = context.sampling_probability * context.population
        clipped = [r.update * min(1.0, self.clip_norm / np.linalg.norm(r.update)) for r in results]
        noise = NoisySum(
            clip_norm=self.clip_norm,
            noise_multiplier=self.noise_multiplier,
            dimension=context.dimension,
        )
        return noise.release(np.sum(clipped, axis=0) / expected, context.rng)


class MeanSensitivityOnTheSum(DpAggregator):
    """A deliberately broken variant: the sum is noised for the mean's sensitivity C/m."""

    def aggregate(self, results, context):  # type: ignore[no-untyped-def]
        expected = context.sampling_probability * context.population
        clipped = [r.update * min(1.0, self.clip_norm / np.linalg.norm(r.update)) for r in results]
        noise = NoisySum(
            clip_norm=self.clip_norm / expected,
            noise_multiplier=self.noise_multiplier,
            dimension=context.dimension,
        )
        return noise.release(np.sum(clipped, axis=0), context.rng) / expected


def _noise_is_calibrated(aggregator: DpAggregator, *, z: float, clip: float) -> tuple[bool, float]:
    """Is the noise in the released sum N(0, (z·C)²) per coordinate? 20 clients at q = 0.5 of 40,
    each sending an update of norm 3·C (so it is clipped); 50,000 coordinates. The sample
    variance's 99.99% chi-square interval decides (false alarm 1e-4)."""
    dim = 50_000
    rng = np.random.default_rng(5)
    results = []
    exact = np.zeros(dim)
    for i in range(20):
        u = rng.normal(size=dim)
        u *= 3 * clip / np.linalg.norm(u)
        results.append(TrainResult(1, f"c{i}", u, 10))
        exact += u / 3
    released = aggregator.aggregate(results, _context(dim, 40, 0.5))
    noise = released * 20 - exact  # expected clients: 0.5 x 40 = 20
    var = float(noise.var())
    lo, hi = stats.chi2.ppf([5e-5, 1 - 5e-5], dim - 1) / (dim - 1) * (z * clip) ** 2
    return lo <= var <= hi, math.sqrt(var)


def test_dp_fedavg_noise_has_the_calibrated_standard_deviation() -> None:
    ok, sd = _noise_is_calibrated(
        DpAggregator(noise_multiplier=1.3, clip_norm=0.5), z=1.3, clip=0.5
    )
    assert ok, f"noise sd {sd:.5f}, expected {1.3 * 0.5:.5f}"


@pytest.mark.parametrize(
    ("broken", "wrong_by"), [(NoiseOnTheMean, 20.0), (MeanSensitivityOnTheSum, 1 / 20)]
)
def test_the_same_check_catches_noise_scaled_for_the_mean(broken, wrong_by) -> None:
    ok, sd = _noise_is_calibrated(broken(noise_multiplier=1.3, clip_norm=0.5), z=1.3, clip=0.5)
    assert not ok
    assert sd == pytest.approx(wrong_by * 1.3 * 0.5, rel=0.05)


def test_the_same_check_catches_too_much_noise() -> None:
    ok, _ = _noise_is_calibrated(DpAggregator(noise_multiplier=1.4, clip_norm=0.5), z=1.3, clip=0.5)
    assert not ok


def test_noisy_sum_grid_costs_under_a_thousandth_more_noise() -> None:
    for dim in (1, 100, 1_000_000):
        ns = NoisySum(clip_norm=1.0, noise_multiplier=1.0, dimension=dim)
        assert 1.0 <= ns.sigma <= 1.001
        assert math.log2(ns.granularity).is_integer()


@pytest.mark.parametrize(
    ("records", "epochs", "batch", "z"), [(600, 3, 32, 1.1), (5000, 2, 256, 0.8)]
)
def test_dpsgd_accounting_matches_dp_accounting(records, epochs, batch, z) -> None:
    dpsgd = DpSgd(noise_multiplier=z, batch_size=batch)
    q = batch / records
    steps = math.ceil(epochs * records / batch)
    ours = dpsgd.event(records, epochs)
    reference = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), steps
    )
    rdp = dp_accounting.rdp.RdpAccountant().compose(reference).get_epsilon(1e-5)
    assert RdpAccountant().compose(ours).epsilon(1e-5) == pytest.approx(rdp, rel=1e-12)
    pld = dp_accounting.pld.PLDAccountant().compose(reference).get_epsilon(1e-5)
    assert PldAccountant().compose(ours).epsilon(1e-5) == pytest.approx(pld, rel=1e-3)


def _dp_sim(ledger: Ledger, rounds: int, *, z: float = 1.0, seed: int = 0) -> Simulation:
    data = synthetic([30] * 10)
    torch.manual_seed(0)  # the same initial model every time
    return Simulation(
        model=models.LogisticRegression(5, 1).double(),
        data=data,
        rounds=rounds,
        config=TrainConfig(learning_rate=0.5),
        strategy=Strategy(DpAggregator(noise_multiplier=z, clip_norm=0.5), Sgd()),
        sampling=ClientSampling(fraction=0.5, poisson=True),
        ledger=ledger,
        client_scope="hospitals/client",
        seed=seed,
    )


def test_every_dp_fedavg_round_is_charged_and_the_run_stops_at_the_budget(ledger) -> None:
    per_round = PoissonSampledEvent(0.5, GaussianEvent(1.0))
    budget = PldAccountant().compose(per_round, 4).epsilon(1e-5) * 1.0001
    ledger.set_budget("hospitals/client", epsilon=budget, delta=1e-5)
    result = _dp_sim(ledger, rounds=10).run()
    assert len(result.rounds) == 4
    assert result.stopped is not None and "round 5 not run" in result.stopped
    status = ledger.status("hospitals/client")
    assert status.events == 4 and status.spent_epsilon <= budget
    assert result.rounds[-1].epsilon_spent == pytest.approx(status.spent_epsilon)
    eps = [r.epsilon_spent for r in result.rounds]
    assert eps == sorted(eps) and eps[0] > 0


def test_a_private_simulation_refuses_to_run_without_a_ledger() -> None:
    with pytest.raises(ConfigurationError, match="ledger"):
        Simulation(
            model=models.LogisticRegression(5, 1),
            data=synthetic([10, 10]),
            rounds=1,
            config=TrainConfig(),
            strategy=Strategy(DpAggregator(noise_multiplier=1.0, clip_norm=1.0), Sgd()),
        )


def test_seeded_simulations_repeat_and_different_seeds_differ(ledger) -> None:
    ledger.set_budget("hospitals/client", epsilon=100.0, delta=1e-5)
    a = _dp_sim(ledger, 2, seed=1).run().parameters
    b = _dp_sim(ledger, 2, seed=1).run().parameters
    c = _dp_sim(ledger, 2, seed=2).run().parameters
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-6


def test_adaptive_clipping_tracks_the_target_quantile() -> None:
    """Every update has norm 2: with target quantile 0.5 the clip norm must move from 0.1 up to
    about 2 and stay near it."""
    agg = DpAggregator(
        noise_multiplier=0.5,
        adaptive=AdaptiveClipping(initial_clip_norm=0.1, learning_rate=0.2, target_quantile=0.5),
    )
    dim = 10
    for r in range(80):
        results = []
        for i in range(100):
            u = np.full(dim, 2 / math.sqrt(dim))
            within = float(np.linalg.norm(u) <= agg.clip_norm)
            results.append(TrainResult(1, f"c{i}", u, 1, {"within_clip": within}))
        ctx = _context(dim, 100, 1.0, seed=r)
        agg.aggregate(results, ctx)
        agg.after_round(results, ctx)
    assert 1.5 < agg.clip_norm < 2.7
    assert agg.clip_history[0] == 0.1 and len(agg.clip_history) == 81


def test_adaptive_clipping_splits_the_noise_so_the_round_costs_z() -> None:
    agg = DpAggregator(noise_multiplier=1.0, adaptive=AdaptiveClipping(count_noise=5.0))
    z_update = agg.update_noise_multiplier(expected=100)
    assert z_update > 1.0
    assert (z_update**-2 + (2 * 5.0) ** -2) ** -0.5 == pytest.approx(1.0)
    assert agg.round_event(sampling_probability=0.1) == PoissonSampledEvent(0.1, GaussianEvent(1.0))
    tight = DpAggregator(noise_multiplier=3.0, adaptive=AdaptiveClipping(count_noise=1.0))
    with pytest.raises(ConfigurationError, match="count_noise"):
        tight.update_noise_multiplier(expected=20)


def test_record_level_dp_charges_each_party_and_stops_when_all_are_spent(ledger) -> None:
    data = synthetic([60, 90, 120])
    dpsgd = DpSgd(noise_multiplier=1.0, clip_norm=1.0, batch_size=30)
    per_round = {n: dpsgd.event(n, 1) for n in (60, 90, 120)}
    # room for exactly 2 rounds of the smallest party (the largest q), more for the others
    budget = PldAccountant().compose(per_round[60], 2).epsilon(1e-5) * 1.0001
    for cid in data.client_ids:
        ledger.set_budget(f"hospitals/record@{cid}", epsilon=budget, delta=1e-5)
    sim = Simulation(
        model=models.LogisticRegression(5, 1).double(),
        data=data,
        rounds=20,
        config=TrainConfig(learning_rate=0.5),
        record_dp=dpsgd,
        ledger=ledger,
        record_scope="hospitals/record",
        seed=3,
    )
    result = sim.run()
    assert result.stopped is not None and "every party" in result.stopped
    assert result.rounds[0].completed == 3
    for cid in data.client_ids:
        status = ledger.status(f"hospitals/record@{cid}")
        assert status.spent_epsilon <= budget
        assert status.events >= 2
    assert ledger.status("hospitals/record@c0").events == 2
    assert result.rounds[-1].record_epsilon_max <= budget


def test_dpsgd_samples_about_the_expected_batch(ledger) -> None:
    from veil.federated import ParamLayout, train_dpsgd

    data = synthetic([400])
    layout = ParamLayout(models.LogisticRegression(5, 1).double())
    out = train_dpsgd(
        layout,
        layout.vector(),
        data.client(0),
        TrainConfig(local_epochs=5),
        DpSgd(noise_multiplier=1.0, batch_size=40),
        rng=InsecureSeededRandom(0),
    )
    assert out.metrics["dp_steps"] == 50
    assert 35 < out.metrics["mean_batch"] < 45


def test_budget_errors_surface_before_training_when_nothing_fits(ledger) -> None:
    ledger.set_budget("hospitals/client", epsilon=0.01, delta=1e-5)
    result = _dp_sim(ledger, 3).run()
    assert result.rounds == () and result.stopped is not None
    assert ledger.status("hospitals/client").events == 0
    with pytest.raises(BudgetExceededError):
        ledger.reserve("hospitals/client", PoissonSampledEvent(0.5, GaussianEvent(1.0)))


# --------------------------------------------------------------------------------------------
# The noise that DP-SGD and adaptive clipping actually draw
# --------------------------------------------------------------------------------------------


def _dpsgd_noise_sd(z: float = 1.0, clip: float = 1.0) -> tuple[float, float, int]:
    """One DP-SGD step with every record sampled (n = B, q = 1) and learning rate 1: the
    update is minus the noisy clipped sum over B, so the noise is recovered exactly from it.
    Returns the noise's sample standard deviation, the calibrated one, and the coordinates."""
    from veil.federated import ClientData, ParamLayout, clipped_gradient_sum, train_dpsgd

    torch.manual_seed(11)
    model = models.Mlp(10, 10, hidden=(1000,))
    layout = ParamLayout(model)
    x = torch.randn(64, 10) * 4
    y = torch.randint(0, 10, (64,))
    dpsgd = DpSgd(noise_multiplier=z, clip_norm=clip, batch_size=64)
    start = layout.vector()
    out = train_dpsgd(
        layout,
        start,
        ClientData(x, y),
        TrainConfig(learning_rate=1.0),
        dpsgd,
        rng=InsecureSeededRandom(3),
    )
    assert out.metrics["dp_steps"] == 1 and out.metrics["mean_batch"] == 64
    flat = torch.tensor(start, dtype=torch.float32)
    exact = clipped_gradient_sum(layout, flat, x, y, clip)
    grid = NoisySum(clip_norm=clip, noise_multiplier=z, dimension=layout.size)
    rounded = np.rint(exact / grid.granularity) * grid.granularity
    noise = -out.update * 64 - rounded
    return float(noise.std()), grid.sigma, layout.size


def _sd_ok(measured: float, expected: float, n: int) -> bool:
    lo, hi = stats.chi2.ppf([5e-5, 1 - 5e-5], n - 1) / (n - 1)
    return lo <= (measured / expected) ** 2 <= hi


def test_dpsgd_noise_has_the_calibrated_standard_deviation() -> None:
    measured, expected, n = _dpsgd_noise_sd()
    assert _sd_ok(measured, expected, n), f"sd {measured:.5f}, expected {expected:.5f}"


def test_the_dpsgd_check_catches_noise_scaled_for_the_averaged_gradient(monkeypatch) -> None:
    import veil.federated.training as training

    class ForTheMean(NoisySum):  # the bug: sensitivity of the mean, C/B, on the sum
        def __init__(self, *, clip_norm: float, noise_multiplier: float, dimension: int) -> None:
            super().__init__(
                clip_norm=clip_norm / 64, noise_multiplier=noise_multiplier, dimension=dimension
            )

    monkeypatch.setattr(training, "NoisySum", ForTheMean)
    measured, _, n = _dpsgd_noise_sd()
    expected = NoisySum(clip_norm=1.0, noise_multiplier=1.0, dimension=n).sigma
    assert not _sd_ok(measured, expected, n)


def _adaptive_fraction_sd(trials: int = 3000) -> float:
    """The noise in the released fraction of clients within the clip norm, recovered from the
    clip norm's geometric step: b̃ = γ - log(C₁/C₀)/η."""
    agg = DpAggregator(
        noise_multiplier=1.0,
        adaptive=AdaptiveClipping(
            initial_clip_norm=1.0, learning_rate=0.5, target_quantile=0.5, count_noise=5.0
        ),
    )
    results = [TrainResult(1, f"c{i}", np.zeros(3), 1, {"within_clip": 1.0}) for i in range(100)]
    fractions = []
    rng = InsecureSeededRandom(9)
    for _ in range(trials):
        agg.reset()
        agg.after_round(results, RoundContext(1, 3, 100, 100, 1.0, rng))
        fractions.append(0.5 - math.log(agg.clip_norm) / 0.5)
    assert abs(np.mean(fractions) - 1.0) < 0.01  # every client was within: unbiased around 1
    return float(np.std(fractions))


def test_adaptive_clipping_count_noise_is_calibrated() -> None:
    # noise on Σ(2b - 1) is 2σ_b; on the fraction it is 2σ_b / (2 E) = σ_b / E = 0.05
    assert _sd_ok(_adaptive_fraction_sd(), 5.0 / 100, 3000)


def test_the_adaptive_check_catches_half_the_count_noise(monkeypatch) -> None:
    import veil.federated.dp as dp

    real = dp.discrete_gaussian
    monkeypatch.setattr(
        dp, "discrete_gaussian", lambda rng, n, *, sigma: real(rng, n, sigma=sigma / 2)
    )
    assert not _sd_ok(_adaptive_fraction_sd(), 5.0 / 100, 3000)


# --------------------------------------------------------------------------------------------
# Settings refused before anything is spent
# --------------------------------------------------------------------------------------------


def test_dp_with_a_sampling_the_accountant_does_not_describe_is_refused(ledger) -> None:
    with pytest.raises(ConfigurationError, match="Poisson"):
        Simulation(
            model=models.LogisticRegression(5, 1),
            data=synthetic([10] * 10),
            rounds=1,
            config=TrainConfig(),
            strategy=Strategy(DpAggregator(noise_multiplier=1.0, clip_norm=1.0), Sgd()),
            sampling=ClientSampling(fraction=0.3),  # fixed size, not Poisson
            ledger=ledger,
            client_scope="hospitals/client",
        )


def test_adaptive_clipping_without_enough_count_noise_is_refused_before_any_spend(ledger) -> None:
    ledger.set_budget("hospitals/client", epsilon=100.0, delta=1e-5)
    with pytest.raises(ConfigurationError, match="count_noise"):
        Simulation(
            model=models.LogisticRegression(5, 1),
            data=synthetic([10] * 10),
            rounds=1,
            config=TrainConfig(),
            strategy=Strategy(
                DpAggregator(noise_multiplier=1.0, adaptive=AdaptiveClipping()), Sgd()
            ),
            sampling=ClientSampling(fraction=1.0),
            ledger=ledger,
            client_scope="hospitals/client",
        )
    assert ledger.status("hospitals/client").events == 0


def test_a_private_round_does_not_start_unpaid(ledger) -> None:
    from veil.errors import LocalProtocolError
    from veil.federated import FederatedServer

    server = FederatedServer(
        parameters=np.zeros(3),
        clients=[f"c{i}" for i in range(10)],
        strategy=Strategy(DpAggregator(noise_multiplier=1.0, clip_norm=1.0), Sgd()),
        config=TrainConfig(),
        rounds=1,
        sampling=ClientSampling(fraction=0.5, poisson=True),
    )
    rng = InsecureSeededRandom(0)
    with pytest.raises(LocalProtocolError, match="paid"):
        server.start_round(rng)
    ledger.set_budget("hospitals/client", epsilon=100.0, delta=1e-5)
    wrong = ledger.reserve("hospitals/client", PoissonSampledEvent(0.5, GaussianEvent(2.0)))
    with pytest.raises(LocalProtocolError, match="paid"):
        server.start_round(rng, reservation=wrong)
    wrong.commit()
    right = ledger.reserve("hospitals/client", server.round_event())
    server.start_round(rng, reservation=right)
    right.commit()


def test_client_level_dp_withholds_who_took_part(ledger) -> None:
    ledger.set_budget("hospitals/client", epsilon=100.0, delta=1e-5)
    result = _dp_sim(ledger, 2).run()
    for r in result.rounds:
        assert r.sampled is None and r.completed is None and r.dropped is None
        assert r.bytes_sent is None and r.bytes_received is None
        assert math.isnan(r.train_loss)
        assert 0 <= r.test_accuracy <= 1


def test_ghost_clipping_keeps_every_contribution_within_c_for_large_batches() -> None:
    from veil.federated import ParamLayout, clipped_gradient_sum

    torch.manual_seed(2)
    layout = ParamLayout(models.LogisticRegression(5, 1))
    flat = torch.tensor(layout.vector(), dtype=torch.float32)
    x = (torch.randn(1, 5) * 10).repeat(5000, 1)  # one example, 5,000 times
    y = torch.ones(5000, dtype=torch.long)
    one = clipped_gradient_sum(layout, flat, x[:1], y[:1], 1.0)
    many = clipped_gradient_sum(layout, flat, x, y, 1.0) / 5000
    assert 0.98 < np.linalg.norm(many) < 1.0
    assert float(np.dot(many, one)) > 0.98 * float(np.dot(one, one))  # same direction


def test_dpsgd_noise_drawn_ahead_is_seeded_and_the_hook_keeps_it_in_turn() -> None:
    """train_dpsgd draws the noise one step ahead on a second thread, from a stream seeded from
    the seeded source: the same seed trains the same model, another seed another one. In turn
    (draw_noise_ahead=False), the source is read sample, noise, sample, ...: an audit hook that
    adds nothing keeps the noise in turn, so it trains the in-turn model, not the ahead one."""
    from veil.federated import ParamLayout, train_dpsgd

    data = synthetic([300])
    torch.manual_seed(3)
    layout = ParamLayout(models.Mlp(5, 2, hidden=(16,)).double())
    dpsgd = DpSgd(noise_multiplier=1.0, batch_size=30)

    def run(seed: int, *, hook: bool = False, ahead: bool = True) -> np.ndarray:
        nothing = np.zeros(layout.size)
        return train_dpsgd(
            layout,
            layout.vector(),
            data.client(0),
            TrainConfig(local_epochs=2),
            dpsgd,
            rng=InsecureSeededRandom(seed),
            add_before_noise=(lambda t, q: nothing) if hook else None,
            draw_noise_ahead=ahead,
        ).update

    ahead = run(4)
    in_turn = run(4, ahead=False)
    assert np.array_equal(ahead, run(4))
    assert not np.allclose(ahead, run(5))
    assert np.array_equal(in_turn, run(4, hook=True))
    assert not np.allclose(ahead, in_turn)


def test_dpsgd_noise_ahead_gets_a_core_of_its_own(monkeypatch) -> None:
    """Ahead, the noise thread runs only with a core to spare: torch's threads are capped at the
    cores less one for the call and restored after; on one core the same stream is drawn in
    turn, so the seeded model is the same."""
    from concurrent.futures import ThreadPoolExecutor

    from veil.federated import ParamLayout, train_dpsgd, training

    data = synthetic([200])
    torch.manual_seed(3)
    layout = ParamLayout(models.Mlp(5, 2, hidden=(8,)).double())
    seen: list[int] = []
    threads: list[str] = []

    def hook(t: int, s: np.ndarray) -> None:  # observes only: the noise stays ahead
        seen.append(torch.get_num_threads())

    class Counting(ThreadPoolExecutor):
        def __init__(self, *args: object, **kwargs: object) -> None:
            threads.append("noise")
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(training, "ThreadPoolExecutor", Counting)

    def run(cores: int) -> np.ndarray:
        monkeypatch.setattr(training, "_usable_cores", lambda: cores)
        return train_dpsgd(
            layout,
            layout.vector(),
            data.client(0),
            TrainConfig(local_epochs=1),
            DpSgd(noise_multiplier=1.0, batch_size=20),
            rng=InsecureSeededRandom(6),
            observe_noisy_sum=hook,
        ).update

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = run(2)
        assert set(seen) == {1} and threads == ["noise"]
        assert torch.get_num_threads() == 2
        seen.clear()
        one = run(1)
        assert set(seen) == {2} and threads == ["noise"]  # no second thread
        assert np.array_equal(one, two)
        seen.clear()
        run(4)  # cores to spare: torch's threads are left alone
        assert set(seen) == {2} and threads == ["noise", "noise"]
    finally:
        torch.set_num_threads(before)


def test_noisy_sum_takes_its_own_noise_once() -> None:
    """Noise drawn ahead is added once, by the NoisySum that drew it: reused noise would release
    the difference of two sums exactly, and another NoisySum's noise may be weaker."""
    noise = NoisySum(clip_norm=1.0, noise_multiplier=1.0, dimension=4)
    weaker = NoisySum(clip_norm=1.0, noise_multiplier=0.01, dimension=4)
    drawn = noise.draw(InsecureSeededRandom(0))
    released = noise.release(np.zeros(4), InsecureSeededRandom(1), noise=drawn)
    assert np.all(released != 0)  # the grid steps of σ = 1 (times the grid) were added
    with pytest.raises(ConfigurationError, match="already used"):
        noise.release(np.ones(4), InsecureSeededRandom(1), noise=drawn)
    with pytest.raises(ConfigurationError, match="another NoisySum"):
        noise.release(
            np.ones(4), InsecureSeededRandom(1), noise=weaker.draw(InsecureSeededRandom(2))
        )
    buffer = np.zeros(4)
    assert noise.release(np.ones(4), InsecureSeededRandom(1), out=buffer) is buffer
    for bad in (np.zeros(4, dtype=np.float32), np.zeros(5), np.zeros((4, 2))[:, 0]):
        with pytest.raises(ConfigurationError, match="out must be"):
            noise.release(np.ones(4), InsecureSeededRandom(1), out=bad)


def test_noise_drawn_into_float64_is_the_same_noise() -> None:
    """The grid steps drawn into a float64 buffer are those of an int64 draw from the same seed,
    and release the same sum, within float64's integers and beyond them (the int64 path); a
    buffer of another type or shape is refused."""
    noise = NoisySum(clip_norm=1.0, noise_multiplier=1.0, dimension=1000)
    as_int = np.empty(1000, dtype=np.int64)
    as_float = np.empty(1000)
    integers = noise.draw(InsecureSeededRandom(4), out=as_int)
    floats = noise.draw(InsecureSeededRandom(4), out=as_float)
    assert np.array_equal(as_float, as_int) and np.any(as_int != 0)
    total = np.linspace(-3.0, 3.0, 1000)
    total[0] = 2.0**60 * noise.granularity  # a grid index beyond 2**52
    released_int = noise.release(total, InsecureSeededRandom(5), noise=integers)
    released_float = noise.release(total, InsecureSeededRandom(5), noise=floats)
    assert np.array_equal(released_int, released_float)
    assert released_float[0] == (2**60 + int(as_int[0])) * noise.granularity
    for bad in (np.empty(1000, dtype=np.float32), np.empty(999), np.empty((1000, 2))[:, 0]):
        with pytest.raises(ConfigurationError, match="out must be"):
            noise.draw(InsecureSeededRandom(4), out=bad)
