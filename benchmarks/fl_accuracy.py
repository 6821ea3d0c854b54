"""Accuracy of federated training against central training, with and without DP.

Run from the repository root::

    .venv/bin/python benchmarks/fl_accuracy.py [--scenario hospitals] [--seeds 5] [--epsilons 1,8]

The question: does a federation that never pools its data learn as well as one model trained on
the pooled data, and what does differential privacy cost? For each seed (which fixes the split of
the data among the clients, the initial model and the shuffling) the scenario runs

* FedAvg without DP, and the central baseline: the same model and optimiser trained on the
  pooled training data for as many epochs as each client trains in the whole run, from the same
  initial model;
* FedAvg with record-level DP-SGD at each target epsilon (per record, at every party; delta
  1e-5), the noise multiplier calibrated by the PLD accountant and every spend charged to a
  ledger.

All accuracies are on the held-out test set (25% of the data, the same for every method of a
seed). The table shows the mean over seeds, the lowest and highest, and the mean of the paired
difference to central training, which is what the target speaks about: the federated model
within 2 points of the central one without DP.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time

from veil.federated.scenarios import SCENARIOS, DpMode, run_scenario


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--scenario", default="hospitals", choices=sorted(SCENARIOS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epsilons", default="1,8")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting's dropped Rényi orders
    logging.getLogger("veil.ledger").setLevel(logging.ERROR)  # the 80% budget alerts
    epsilons = [float(e) for e in args.epsilons.split(",") if e.strip()]
    spec = SCENARIOS[args.scenario]
    started = time.perf_counter()
    rows: dict[str, list[float]] = {"central (pooled data)": [], "FedAvg": []}
    for eps in epsilons:
        rows[f"FedAvg + DP-SGD, ε={eps:g}"] = []
    spent: dict[float, list[float]] = {eps: [] for eps in epsilons}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            plain = run_scenario(spec, seed=seed, rounds=args.rounds, central_baseline=True)
            assert plain.result.central is not None
            rows["central (pooled data)"].append(plain.result.central["accuracy"])
            rows["FedAvg"].append(plain.result.rounds[-1].test_accuracy)
            for eps in epsilons:
                run = run_scenario(
                    spec,
                    dp=DpMode.RECORD,
                    epsilon=eps,
                    seed=seed,
                    rounds=args.rounds,
                    central_baseline=False,
                    ledger_path=f"{tmp}/ledger-{seed}-{eps}.sqlite",
                )
                rows[f"FedAvg + DP-SGD, ε={eps:g}"].append(run.result.rounds[-1].test_accuracy)
                spent[eps].append(run.summary()["epsilon_spent"])
            print(f"seed {seed} done ({time.perf_counter() - started:.0f} s)", flush=True)
    central = rows["central (pooled data)"]
    print(
        f"\n### {spec.name}: {spec.description}; {args.rounds or spec.rounds} rounds, "
        f"{args.seeds} seeds\n"
    )
    print("| model | test accuracy (mean) | lowest | highest | minus central (mean, paired) |")
    print("|---|---|---|---|---|")
    for name, values in rows.items():
        diff = statistics.mean(v - c for v, c in zip(values, central, strict=True))
        print(
            f"| {name} | {statistics.mean(values):.3f} | {min(values):.3f} | {max(values):.3f} "
            f"| {diff:+.3f} |"
        )
    for eps in epsilons:
        print(f"\nε={eps:g}: largest party's spend per seed {[round(s, 3) for s in spent[eps]]}")
    gap = statistics.mean(f - c for f, c in zip(rows["FedAvg"], central, strict=True))
    verdict = "PASS" if gap >= -0.02 else "FAIL"
    print(f"\n* FedAvg minus central, mean over seeds = {gap:+.3f} (target >= -0.020): {verdict}")
    print(f"\nTotal wall time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
