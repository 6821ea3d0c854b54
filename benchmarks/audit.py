"""Privacy audits: the empirical epsilon of veil's mechanisms and DP-SGD next to their claims,
and membership inference (LiRA against the loss attack) with and without DP-SGD.

Run from the repository root::

    .venv/bin/python benchmarks/audit.py [--seeds 5] [--models 16] [--images 8] [--engine-seeds 8]
        [--out reports/benchmarks/audit]

What it measures (every figure is a 95% lower bound on epsilon or a rate with its 95%
interval, Clopper-Pearson for independent trials and a bootstrap over the independent training
runs for membership inference; fixed seeds, insecure seeded noise so that a run is
reproducible):

* **distinguishing audit** (Jagielski et al. 2020) of veil's integer Laplace mechanism at claimed
  epsilon 0.5, 1 and 2, 100,000 runs per neighbour: the bound as a fraction of the claim over the
  seeds, and the bound when the neighbours are 2 apart but the noise is for sensitivity 1. The
  floor for its time: drawing the same 200,000 noisy outputs alone.
* **one-run audit** (Steinke et al. 2023) and its **f-DP refinement** (Mahloujifar et al. 2024)
  of veil's integer Gaussian mechanism at claimed epsilon 1, 2, 4 and 8 with 10,000 canaries,
  and with noise 4x too small at 1,000 canaries. A one-run bound is capped by its number of
  guesses (about 4.5 when 500 guesses are all right), so a bug under a large claim needs more
  canaries than 1,000 to show.
* **DP-SGD with white-box gradient canaries**: the one-run audit of ``train_dpsgd`` through its
  audit hook (q = 0.2, 100 steps, 1,000 canaries) at claimed epsilon 1 and 8, and of the same
  trainer with its noise scaled for the averaged gradient.
* **membership inference** on digits: ``--models`` MLPs 64-128-10, each the target in turn;
  non-private (fitting 200 of 400 digits, 500 epochs of full-batch gradient descent) and DP-SGD
  at epsilon 1 and 8 (halves of 1,347 digits, 20 epochs, q = 0.2, C = 1). The floor is chance
  (AUC 0.5, TPR = FPR); under DP, the ceiling is the (ε, δ) limit TPR <= e^ε FPR + δ and,
  tighter, the trade-off curve of the run's events from the PLD accountant (checked at 0.1%,
  1% and 10% FPR with the TPR's lower and the FPR's upper confidence bound).

* **gradient inversion** of one client's update on digits (MLP 64-32-10 with sigmoid, random
  weights): label recovery, the analytic first-layer attack, DLG and Inverting Gradients, PSNR
  against the true image (best match for a sum), raw, clipped, clipped and noised, and summed
  over 16 clients, on ``--images`` images (or batches of 16), with the median and the worst
  over them of the best attack; the floor is the PSNR of the mean image.
* **Dinur-Nissim reconstruction** of 100 secret bits from 400 random subset sums: exact, with
  bounded noise, with Laplace noise per answer and no composition, and through veil's release
  engine under a ledger budget spent whole (each question at the epsilon that composes to the
  budget over 400), over ``--engine-seeds`` seeds of bits, questions and noise; the floor is
  chance.

Times are wall-clock with this process's CPU time in brackets (the machine may be shared).
Figures (ROC curves, the bounds against the claims) go to ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import veil.federated.training as federated_training
from _harness import machine, ratio_text
from veil.audit import (
    OneRunTest,
    accountant_tpr_limit,
    distinguishing_audit,
    one_run_audit,
)
from veil.audit.canaries import dpsgd_canary_audit
from veil.audit.mia import Attack, MembershipAudit, membership_audit, train_shadow_models
from veil.federated import ClientData, DpSgd, NoisySum, TrainConfig, data, models
from veil.privacy import (
    Domain,
    GaussianMechanism,
    InsecureSeededRandom,
    LaplaceMechanism,
    PldAccountant,
    dpsgd_noise_multiplier,
    gaussian_noise_multiplier,
)
from veil.reports.plots import epsilon_plot, have_matplotlib, roc_plot

DELTA = 1e-5


class Clock:
    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def spread(values: list[float], *, percent: bool = False) -> str:
    if percent:
        return f"{statistics.mean(values):.1%} ({min(values):.0%}-{max(values):.0%})"
    return f"{statistics.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def laplace_runs(epsilon: float, seed: int) -> Callable[[int, int], np.ndarray]:
    """veil's integer Laplace mechanism for sensitivity 1 at ``epsilon``, ``n`` runs at once."""
    rng = InsecureSeededRandom(seed)

    def run(value: int, n: int) -> np.ndarray:
        mech = LaplaceMechanism(
            sensitivity=1, epsilon=epsilon, dimension=n, max_changed=1, domain=Domain.INTEGERS
        )
        return np.asarray(mech.release(np.full(n, value), rng=rng), dtype=np.float64)

    return run


def distinguishing(seeds: int, rows: list[tuple[str, float, float]]) -> None:
    print("\n## Distinguishing audit: veil's integer Laplace mechanism, 100,000 runs per side\n")
    print(
        "| claimed ε | bound / claim, mean (min-max) over seeds | bug: neighbours 2 apart, "
        "bound | time per audit, wall [CPU] s | floor: drawing the outputs, s | ratio |"
    )
    print("|---|---|---|---|---|---|")
    for eps in (0.5, 1.0, 2.0):
        fractions = []
        times: list[tuple[float, float]] = []
        for seed in range(seeds):
            run = laplace_runs(eps, seed)
            clock = Clock()
            audit = distinguishing_audit(run, (0, 1), trials=100_000, claimed_epsilon=eps)
            times.append(clock.read())
            fractions.append(audit.epsilon_lower / eps)
        run = laplace_runs(eps, 99)
        bug = distinguishing_audit(run, (0, 2), trials=100_000, claimed_epsilon=eps)
        floor_clock = Clock()
        run(0, 100_000)
        run(1, 100_000)
        floor, _ = floor_clock.read()
        wall = statistics.median(t[0] for t in times)
        cpu = statistics.median(t[1] for t in times)
        print(
            f"| {eps:g} | {spread(fractions)} | {bug.epsilon_lower:.3f} "
            f"({'refuted' if bug.exceeds_claim else 'NOT refuted'}) | {wall:.2f} [{cpu:.2f}] "
            f"| {floor:.2f} | {ratio_text(wall, floor)} |"
        )
        rows.append((f"Laplace ε={eps:g}, distinguishing", statistics.mean(fractions) * eps, eps))


def gaussian_canaries(m: int, seed: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    included = np.random.default_rng(seed).random(m) < 0.5
    mech = GaussianMechanism(
        sensitivity=1, sigma=sigma, domain=Domain.INTEGERS, dimension=m, max_changed=1
    )
    scores = mech.release(included.astype(np.int64), rng=InsecureSeededRandom(seed))
    return np.asarray(scores, dtype=np.float64), included


def one_run(seeds: int, rows: list[tuple[str, float, float]]) -> None:
    print("\n## One-run audit: veil's integer Gaussian mechanism, 10,000 canaries\n")
    print(
        "| claimed ε | (ε, δ) test: bound / claim | f-DP test: bound / claim | bug σ/4, 1,000 "
        "canaries: (ε, δ) / f-DP bound | audit time, wall [CPU] s |"
    )
    print("|---|---|---|---|---|")
    for target in (1.0, 2.0, 4.0, 8.0):
        sigma = gaussian_noise_multiplier(epsilon=target, delta=DELTA)
        claim = GaussianMechanism(sensitivity=1, sigma=sigma, domain=Domain.INTEGERS).epsilon(DELTA)
        plain, fdp = [], []
        clock = Clock()
        for seed in range(seeds):
            scores, included = gaussian_canaries(10_000, seed, sigma)
            for test, out in ((OneRunTest.APPROXIMATE_DP, plain), (OneRunTest.GAUSSIAN_FDP, fdp)):
                audit = one_run_audit(
                    scores, included, claimed_epsilon=claim, delta=DELTA, test=test
                )
                out.append(audit.epsilon_lower / claim)
        wall, cpu = clock.read()
        scores, included = gaussian_canaries(1000, 5, sigma / 4)
        bugs = [
            one_run_audit(scores, included, claimed_epsilon=claim, delta=DELTA, test=t)
            for t in OneRunTest
        ]
        verdicts = " / ".join("refuted" if b.exceeds_claim else "not refuted" for b in bugs)
        print(
            f"| {claim:.3f} | {spread(plain)} | {spread(fdp)} | "
            f"{bugs[0].epsilon_lower:.2f} / {bugs[1].epsilon_lower:.2f} ({verdicts}) | "
            f"{wall / (2 * seeds):.2f} [{cpu / (2 * seeds):.2f}] |"
        )
        rows.append(
            (f"Gaussian, claim {claim:.2f}, one-run f-DP", statistics.mean(fdp) * claim, claim)
        )


class _NoiseForTheMean(NoisySum):
    """The bug, in veil's own trainer: noise calibrated to the averaged gradient (C / B)."""

    batch = 1

    def __init__(self, *, clip_norm: float, noise_multiplier: float, dimension: int) -> None:
        super().__init__(
            clip_norm=clip_norm / self.batch, noise_multiplier=noise_multiplier, dimension=dimension
        )


def canary_records(n: int) -> ClientData:
    """The real records the white-box audit trains on (two Gaussian classes in 8 dimensions)."""
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (n,), generator=gen)
    return ClientData(torch.randn(n, 8, generator=gen) + y[:, None].float(), y)


def linear_model() -> torch.nn.Module:
    return torch.nn.Linear(8, 2)


def dpsgd_canaries(seeds: int, rows: list[tuple[str, float, float]]) -> None:
    print("\n## DP-SGD with white-box gradient canaries (q = 0.2, 100 steps, 1,000 canaries)\n")
    print(
        "| target ε | noise multiplier | claim | bound, mean (min-max) over seeds | bug: noise "
        "scaled for the mean, bound | time per run, wall [CPU] s |"
    )
    print("|---|---|---|---|---|---|")
    records, batch, epochs = 1000, 200, 20
    train = canary_records(records)
    for target in (1.0, 8.0):
        z = dpsgd_noise_multiplier(
            epsilon=target, delta=DELTA, sampling_probability=batch / records, steps=100
        )
        dpsgd = DpSgd(noise_multiplier=z, clip_norm=1.0, batch_size=batch)
        bounds = []
        clock = Clock()
        claim = math.nan
        for seed in range(seeds):
            audit = dpsgd_canary_audit(
                dpsgd,
                train,
                linear_model,
                epochs=epochs,
                canaries=1000,
                delta=DELTA,
                rng=InsecureSeededRandom(seed),
                seed=seed,
            )
            claim = audit.claimed_epsilon or math.nan
            bounds.append(audit.epsilon_lower)
        wall, cpu = clock.read()
        _NoiseForTheMean.batch = batch
        with mock.patch.object(federated_training, "NoisySum", _NoiseForTheMean):
            bug = dpsgd_canary_audit(
                dpsgd,
                train,
                linear_model,
                epochs=epochs,
                canaries=1000,
                delta=DELTA,
                rng=InsecureSeededRandom(99),
                seed=99,
            )
        print(
            f"| {target:g} | {z:.4g} | {claim:.3f} | {spread(bounds)} | {bug.epsilon_lower:.2f} "
            f"({'refuted' if bug.exceeds_claim else 'not refuted: the cap of 1,000 canaries'}) | "
            f"{wall / seeds:.2f} [{cpu / seeds:.2f}] |"
        )
        rows.append((f"DP-SGD ε={target:g}, white-box", statistics.mean(bounds), claim))


def mia_row(name: str, audit: MembershipAudit, train: tuple[float, float]) -> list[str]:
    out = []
    for row in audit.summary():
        tpr1 = float(row["tpr@1%"])
        out.append(
            f"| {name} | {row['attack']} | {row['auc']:.3f} [{row['auc low']:.3f}, "
            f"{row['auc high']:.3f}] | {row['tpr@0.1%']:.2%} "
            f"[{row['tpr@0.1% low']:.2%}, {row['tpr@0.1% high']:.2%}] | {tpr1:.2%} "
            f"[{row['tpr@1% low']:.2%}, {row['tpr@1% high']:.2%}] | {ratio_text(tpr1, 0.01)} |"
        )
    out.append(
        f"| {name} | (test accuracy {audit.mean_accuracy:.3f}; {audit.targets} targets, "
        f"{audit.rocs[Attack.LOSS].negatives} non-members pooled; training "
        f"{train[0]:.1f} [{train[1]:.1f}] s) | | | | |"
    )
    return out


def shadow_event(z: float, members: int, batch: int) -> Any:
    return DpSgd(noise_multiplier=z, batch_size=batch).event(members, 20)


def mia(models_count: int, out: Path | None) -> None:
    print(f"\n## Membership inference on digits, {models_count} MLPs 64-128-10\n")
    digits = data.digits(clients=1, alpha=None, seed=0)
    lines = []
    curves: dict[str, Any] = {}
    population = ClientData(digits.x[:400], digits.y[:400])
    clock = Clock()
    shadows = train_shadow_models(
        lambda: models.Mlp(64, 10, (128,)),
        population,
        models=models_count,
        config=TrainConfig(local_epochs=500, learning_rate=1.0),
        holdout=digits.test,
        seed=0,
        threads=1,
    )
    train = clock.read()
    clock = Clock()
    plain = membership_audit(shadows)
    attack_time = clock.read()
    lines += mia_row("no DP", plain, train)
    loss1 = plain.rocs[Attack.LOSS].tpr_at(0.01).tpr
    lira1 = plain.rocs[Attack.LIRA_ONLINE].tpr_at(0.01).tpr
    curves["no DP"] = plain
    private: dict[float, MembershipAudit] = {}
    curves_dp: dict[float, Callable[[float], float]] = {}
    everyone = ClientData(digits.x, digits.y)
    members = len(everyone) // 2
    batch = members // 5
    for eps in (1.0, 8.0):
        shape = DpSgd(noise_multiplier=1.0, batch_size=batch)
        z = dpsgd_noise_multiplier(
            epsilon=eps,
            delta=DELTA,
            sampling_probability=shape.sampling_probability(members),
            steps=shape.steps(members, 20),
        )
        clock = Clock()
        shadows = train_shadow_models(
            lambda: models.Mlp(64, 10, (128,)),
            everyone,
            models=models_count,
            config=TrainConfig(local_epochs=20, learning_rate=0.5),
            holdout=digits.test,
            dpsgd=DpSgd(noise_multiplier=z, clip_norm=1.0, batch_size=batch),
            rng=InsecureSeededRandom(0),
            seed=0,
            threads=1,
        )
        train = clock.read()
        private[eps] = membership_audit(shadows)
        curve = accountant_tpr_limit(PldAccountant().compose(shadow_event(z, members, batch)))
        curves_dp[eps] = lambda fpr, c=curve: float(c(fpr))
        lines += mia_row(f"DP-SGD ε={eps:g} (z={z:.3g})", private[eps], train)
    print("| model | attack | AUC | TPR @ 0.1% FPR | TPR @ 1% FPR | TPR@1% / floor (1%) |")
    print("|---|---|---|---|---|---|")
    print("\n".join(lines))
    print(
        f"\nLiRA online / loss attack, TPR at 1% FPR without DP: {ratio_text(lira1, loss1)} "
        f"(target >= 3); attack evaluation {attack_time[0]:.2f} [{attack_time[1]:.2f}] s "
        "for all targets"
    )
    for eps, audit in private.items():
        worst = max(r.auc for r in audit.rocs.values())
        violations = audit.dp_bound_violations(epsilon=eps, delta=DELTA)
        above_curve = audit.limit_violations(curves_dp[eps])
        nodp_above = plain.limit_violations(curves_dp[eps])
        print(
            f"DP-SGD ε={eps:g}: highest AUC {worst:.3f}; (attack, FPR) pairs above the "
            f"(ε, δ) limit: {len(violations)}, above the accountant's trade-off curve: "
            f"{len(above_curve)} (the non-private models: {len(nodp_above)})"
        )
    if out is not None and have_matplotlib():
        roc_plot(
            out / "mia_roc_nodp.png",
            {a.value: (r.fpr, r.tpr) for a, r in plain.rocs.items()},
            title="membership inference, no DP (digits, 400 records)",
        )
        roc_plot(
            out / "mia_roc_dp1.png",
            {a.value: (r.fpr, r.tpr) for a, r in private[1.0].rocs.items()},
            title="membership inference, DP-SGD at ε = 1",
            dp_limit=(1.0, DELTA),
        )


def inversion(images: int) -> None:
    from sklearn.datasets import load_digits
    from torch import nn

    from veil.audit.inversion import (
        analytic_first_layer,
        client_update,
        dlg,
        inverting_gradients,
        psnr,
        recover_label,
    )

    print(f"\n## Gradient inversion: digits, MLP 64-32-10 (sigmoid), {images} images\n")
    bunch = load_digits()
    x_all, y_all = torch.tensor(bunch.data / 16.0), torch.tensor(bunch.target)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.Sigmoid(), nn.Linear(32, 10)).double()
    floor = [psnr(x_all.mean(dim=0), x_all[i : i + 1]) for i in range(images)]
    settings: list[tuple[str, dict[str, Any], int]] = [
        ("raw gradient", {}, 1),
        ("clipped to 1", {"clip_norm": 1.0}, 1),
        ("clipped, noise σ = 0.01", {"clip_norm": 1.0, "noise_multiplier": 0.01}, 1),
        ("clipped, noise σ = 1", {"clip_norm": 1.0, "noise_multiplier": 1.0}, 1),
        ("secure sum of 16 updates", {}, 16),
    ]
    print(
        "| update the server sees | labels recovered | analytic dB | DLG dB | Inverting Gradients "
        "dB | best attack, median (worst) dB | IG time per image, wall [CPU] s |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, kwargs, clients in settings:
        got: dict[str, list[float]] = {"analytic": [], "dlg": [], "ig": []}
        labels = 0
        clock = Clock()
        for k in range(images):
            idx = slice(k * clients, (k + 1) * clients)
            x, y = x_all[idx], y_all[idx]
            gen = torch.Generator().manual_seed(k)
            update = client_update(model, x, y, generator=gen, **kwargs)
            label = recover_label(model, update)
            labels += int(label in y.tolist())
            got["analytic"].append(psnr(analytic_first_layer(model, update), x))
            got["dlg"].append(psnr(dlg(model, update, label, features=64, steps=200), x))
            got["ig"].append(
                psnr(inverting_gradients(model, update, label, features=64, image_side=8), x)
            )
        wall, cpu = clock.read()
        cells = [
            f"{min(v):.1f}-{max(v):.1f}" if max(v) < 1e3 else f"{min(v):.0f}-{max(v):.0f}"
            for v in got.values()
        ]
        best = [max(per) for per in zip(*got.values(), strict=True)]
        print(
            f"| {name} | {labels}/{images} | {' | '.join(cells)} | "
            f"{statistics.median(best):.1f} ({max(best):.1f}) | "
            f"{wall / images:.2f} [{cpu / images:.2f}] |"
        )
    print(f"\nFloor: the mean image scores {min(floor):.1f}-{max(floor):.1f} dB on these images.")


def reconstruction(engine_seeds: int) -> None:
    from veil.audit.reconstruction import attack_secret_bits, reconstruction_attack

    print("\n## Dinur-Nissim reconstruction: 100 secret bits, 400 random subset sums\n")
    people, queries = 100, 400
    secret = np.random.default_rng(42).integers(0, 2, people)
    noise_rng = np.random.default_rng(1)
    lap_rng = InsecureSeededRandom(3)
    per_answer = LaplaceMechanism(sensitivity=1, epsilon=1.0, domain=Domain.INTEGERS)
    rows: list[tuple[str, Callable[[Any], float]]] = [
        ("exact answers", lambda ids: float(secret[list(ids)].sum())),
        (
            "uniform noise within √n/4 = 2.5",
            lambda ids: float(secret[list(ids)].sum() + noise_rng.uniform(-2.5, 2.5)),
        ),
        (
            "Laplace ε = 1 per answer, not composed (400 in all)",
            lambda ids: float(per_answer.release(int(secret[list(ids)].sum()), rng=lap_rng)),
        ),
    ]
    print("| answers | bits recovered | time, wall [CPU] s |")
    print("|---|---|---|")
    for name, ask in rows:
        clock = Clock()
        acc = reconstruction_attack(ask, people=people, queries=queries).accuracy(secret)
        wall, cpu = clock.read()
        print(f"| {name} | {acc:.1%} | {wall:.1f} [{cpu:.1f}] |")
    for budget in (4.0, 40.0):
        accuracies: list[float] = []
        clock = Clock()
        for seed in range(engine_seeds):
            bits = np.random.default_rng(seed).integers(0, 2, people)
            found, each, spent = attack_secret_bits(
                bits, queries=queries, epsilon=budget, delta=1e-5, seed=seed
            )
            accuracies.append(found.accuracy(bits))
        wall, cpu = clock.read()
        print(
            f"| veil's release engine, budget ε = {budget:g} spent whole (ε = {each:.4g} each; "
            f"the ledger's accountant: {spent:.3g} at δ = 1e-5), {engine_seeds} seeds of bits, "
            f"questions and noise | {spread(accuracies, percent=True)} | "
            f"{wall / engine_seeds:.1f} [{cpu / engine_seeds:.1f}] per seed |"
        )
    print("\nFloor: chance, 50%.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--models", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("reports/benchmarks/audit"))
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--engine-seeds", type=int, default=8)
    args = parser.parse_args()
    logging.getLogger("absl").setLevel(logging.ERROR)
    args.out.mkdir(parents=True, exist_ok=True)
    print(machine(f"torch {torch.__version__}, numpy {np.__version__}"))
    started = Clock()
    rows: list[tuple[str, float, float]] = []
    distinguishing(args.seeds, rows)
    one_run(args.seeds, rows)
    dpsgd_canaries(args.seeds, rows)
    mia(args.models, args.out)
    inversion(args.images)
    reconstruction(args.engine_seeds)
    if have_matplotlib():
        epsilon_plot(
            args.out / "epsilon.png", rows, title="empirical epsilon (mean bound) vs claim"
        )
        print(f"\nfigures in {args.out}")
    wall, cpu = started.read()
    print(f"\nTotal: {wall:.0f} s wall [{cpu:.0f} s CPU]")


if __name__ == "__main__":
    main()
