"""``veil demo``: a tour of what veil does, on bundled data, written up as a report.

Each part of veil adds its scenario here as it lands. Today: the privacy core (secure noise,
accounting), the ledger, DP statistics, federated learning and encrypted credit scoring.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import typer
from rich.progress import Progress

from veil.cli._common import console, fmt
from veil.cli._demo_audit import audit_section
from veil.datasets import census2000, data_path
from veil.errors import BudgetExceededError, MissingDependencyError
from veil.ledger import Ledger
from veil.privacy import samplers
from veil.privacy.accountants import PldAccountant, RdpAccountant
from veil.privacy.events import GaussianEvent, PoissonSampledEvent, SelfComposedEvent
from veil.privacy.mechanisms import Domain, GaussianMechanism, LaplaceMechanism
from veil.privacy.random import SecureRandom
from veil.reports import Report
from veil.reports.plots import have_matplotlib, line_plot, pmf_plot


def demo(
    out: Path = typer.Option(  # noqa: B008 - typer's idiom
        Path("veil-demo"), "--out", help="Folder for the report (created if needed)."
    ),
) -> None:
    """Run the tour on bundled data and write a report (HTML and Markdown) to OUT."""
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    plots = have_matplotlib()
    report = Report(
        "veil demo: secure noise, tight accounting, an enforced budget, DP statistics, "
        "federated learning, encrypted scoring, privacy audits"
    )
    report.paragraph(
        "Everything below ran on this machine just now, on the US Census 2000 PUMS excerpt "
        "bundled with veil (29,501 people, one row each). Noise came from veil's cryptographically "
        "secure generator."
    )
    if not plots:
        report.paragraph("matplotlib is not installed (pip install 'veil[reports]'): no plots.")
    _noise(report, out, plots)
    _accounting(report, out, plots)
    _ledger(report, out)
    _statistics(report, out, plots)
    _federated(report, out, plots)
    _encrypted_scoring(report)
    audit_section(report, out, plots)
    html_path, _ = report.write(out)
    console.print(f"\n[bold]report written to {out}[/bold]  (open {html_path.name})")


def _noise(report: Report, out: Path, plots: bool) -> None:
    console.rule("1. secure, exact noise")
    rng = SecureRandom()
    n = 1_000_000
    rows = []
    panels = []

    def laplace_pmf(k: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        return np.exp(-np.abs(k) / 3.0)

    def gauss_pmf(k: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        return np.exp(-(k.astype(np.float64) ** 2) / 18.0)

    cases: list[tuple[str, Callable[[], npt.NDArray[np.int64]], Any]] = [
        (
            "discrete Laplace, scale 3",
            lambda: samplers.discrete_laplace(rng, n, scale=3.0),
            laplace_pmf,
        ),
        (
            "discrete Gaussian, sigma 3",
            lambda: samplers.discrete_gaussian(rng, n, sigma=3.0),
            gauss_pmf,
        ),
    ]
    for name, draw, pmf in cases:
        start = time.perf_counter()
        x = draw()
        seconds = time.perf_counter() - start
        support = np.arange(-15, 16)
        weights = pmf(np.arange(-200, 201))
        expected = pmf(support) / weights.sum() * n
        observed = np.array([(x == k).sum() for k in support])
        rows.append(
            [
                name,
                f"{n:,}",
                f"{seconds:.3f}",
                f"{n / seconds / 1e6:.2f}",
                f"{x.mean():+.4f}",
                f"{x.var():.3f}",
            ]
        )
        panels.append((name, support, observed, expected))
        console.print(f"{name}: {n:,} samples in {seconds:.3f} s ({n / seconds / 1e6:.2f} M/s)")
    report.heading("1. Secure, exact noise")
    report.paragraph(
        "veil adds integer noise drawn exactly from the discrete Laplace and discrete Gaussian "
        "distributions (Canonne, Kamath, Steinke 2020), with no floating-point arithmetic in any "
        "decision, from an AES-CTR generator keyed by the operating system. Real values are "
        "rounded to a power-of-two grid first, which closes the floating-point side channel that "
        "breaks textbook Laplace noise (Mironov 2012)."
    )
    report.table(["distribution", "samples", "seconds", "million/s", "mean", "variance"], rows)
    if plots:
        pmf_plot(out / "noise.png", panels)
        report.image("noise.png", "One million draws of each, against the exact probability mass.")


def _accounting(report: Report, out: Path, plots: bool) -> None:
    console.rule("2. tight accounting")
    q, sigma, delta = 256 / 60000, 1.1, 1e-5
    steps_per_epoch = 60000 / 256
    epochs = [1, 5, 10, 20, 40, 60]
    pld, rdp = [], []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("PLD and RDP accounting of DP-SGD", total=len(epochs))
        for e in epochs:
            ev = SelfComposedEvent(
                PoissonSampledEvent(q, GaussianEvent(sigma)), int(np.ceil(e * steps_per_epoch))
            )
            pld.append(PldAccountant().compose(ev).epsilon(delta))
            rdp.append(RdpAccountant().compose(ev).epsilon(delta))
            progress.advance(task)
    console.print(
        f"DP-SGD on MNIST (Abadi et al.), 60 epochs: PLD epsilon {pld[-1]:.4f}, RDP {rdp[-1]:.4f}"
    )
    report.heading("2. Tight accounting")
    report.paragraph(
        "Every release is recorded as a privacy event; accountants compose events into "
        "(epsilon, delta). The privacy loss distribution (PLD) accountant is the tightest; Rényi "
        "DP (RDP) is faster and looser. Below: DP-SGD as trained by Abadi et al. (2016) on MNIST "
        "(Poisson sampling q = 256/60000, noise multiplier 1.1, delta = 1e-5). Published "
        "references computed with dp-accounting and Opacus give 2.382 (PLD) and 2.597 (RDP) at "
        "60 epochs."
    )
    report.table(
        ["epochs", "steps", "epsilon (PLD)", "epsilon (RDP)", "RDP overstates by"],
        [
            [e, int(np.ceil(e * steps_per_epoch)), f"{p:.4f}", f"{r:.4f}", f"{r / p - 1:.1%}"]
            for e, p, r in zip(epochs, pld, rdp, strict=True)
        ],
    )
    if plots:
        line_plot(
            out / "accounting.png",
            x=epochs,
            series={"PLD": pld, "RDP": rdp},
            xlabel="epochs",
            ylabel="epsilon at delta 1e-5",
            title="DP-SGD on MNIST: privacy spent per epoch",
        )
        report.image("accounting.png", "Epsilon after each epoch, by accountant.")


def _ledger(report: Report, out: Path) -> None:
    console.rule("3. an enforced, persistent budget")
    db = out / "ledger.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    data = census2000()
    scope = "census2000/person"
    rows = []
    with Ledger(str(db), actor="demo@veil") as ledger:
        ledger.set_budget(scope, epsilon=3.0, delta=1e-6, purpose="annual release")
        releases = [
            (
                "people in the sample",
                LaplaceMechanism(epsilon=0.1, sensitivity=1, domain=Domain.INTEGERS),
                len(data),
            ),
            (
                "people with 16+ years of education",
                LaplaceMechanism(epsilon=0.1, sensitivity=1, domain=Domain.INTEGERS),
                int((data.educ >= 16).sum()),
            ),
            (
                "people by years of education (9..16)",
                LaplaceMechanism(
                    epsilon=0.2, sensitivity=1, domain=Domain.INTEGERS, dimension=8, max_changed=1
                ),
                np.array([(data.educ == k).sum() for k in range(9, 17)]),
            ),
            (
                "total log weekly income, clamped to [0, 10]",
                GaussianMechanism(epsilon=0.3, delta=1e-7, sensitivity=10.0),
                float(np.clip(data.lweekinc, 0, 10).sum()),
            ),
        ]
        for what, mech, truth in releases:
            noisy = ledger.release(scope, mech, truth, purpose=what)
            shown_truth = truth.tolist() if isinstance(truth, np.ndarray) else truth
            shown_noisy = noisy.tolist() if isinstance(noisy, np.ndarray) else noisy
            rows.append(
                [
                    what,
                    mech.describe(),
                    _short(shown_noisy),
                    _short(shown_truth),
                    fmt(mech.error_bound(alpha=0.05), 3),
                ]
            )
            console.print(f"released {what}: {_short(shown_noisy)}")
        status = ledger.status(scope)
        console.print(
            f"spent epsilon {status.spent_epsilon:.4f} of {status.budget.epsilon} "
            f"({', '.join(f'{k} {v:.4f}' for k, v in status.by_accountant.items())})"
        )
        greedy = LaplaceMechanism(epsilon=2.5, sensitivity=1, domain=Domain.INTEGERS)
        try:
            ledger.release(scope, greedy, len(data), purpose="one more, too expensive")
            refused = "NOT refused (this is a bug)"
        except BudgetExceededError as exc:
            refused = str(exc)
        console.print(f"[yellow]refused:[/yellow] {refused}")
        history = ledger.history()
        verified = ledger.verify()
    (out / "ledger-history.json").write_text(
        json.dumps([e.to_dict() for e in history], indent=2), encoding="utf-8"
    )
    tampered = out / "ledger-tampered.sqlite"
    shutil.copyfile(db, tampered)
    with sqlite3.connect(tampered) as conn:
        conn.execute(
            "UPDATE veil_ledger_entries SET payload = ? WHERE seq = 2",
            ('{"scale":1000.0,"sensitivity":1.0,"dimension":1,"type":"discrete_laplace"}',),
        )
    with Ledger(str(tampered)) as copy:
        tamper_report = copy.verify()
    console.print(
        f"ledger verifies: {verified.ok}; tampered copy verifies: {tamper_report.ok} "
        f"({'; '.join(tamper_report.problems)})"
    )

    report.heading("3. An enforced, persistent budget")
    report.paragraph(
        f"The scope {scope} (each person in the census excerpt) got a budget of epsilon 3, "
        "delta 1e-6 in a SQLite ledger. Each release reserved its cost before any noise was "
        "drawn, then committed. The 95% error bound is known before release, from public "
        "parameters only."
    )
    report.table(
        ["release", "mechanism", "noisy value", "true value (not released)", "95% error bound"],
        rows,
    )
    report.paragraph(
        f"Spent: epsilon {status.spent_epsilon:.4f} at delta 1e-6 (tightest accountant; "
        + ", ".join(f"{k}: {v:.4f}" for k, v in status.by_accountant.items())
        + "). Adding up the four releases' own epsilons (0.1 + 0.1 + 0.2, and 0.3 at delta "
        "1e-7) would have counted 0.7."
    )
    report.paragraph("A further release at epsilon 2.5 was refused, before any noise was drawn:")
    report.code(refused)
    report.paragraph(
        f"The history (ledger-history.json) has {verified.entries} hash-chained entries and "
        f"verifies (head {verified.head_hash[:16]}...). A copy with one past spend rewritten to "
        "look cheaper does not: " + "; ".join(tamper_report.problems) + "."
    )
    report.table(
        ["seq", "kind", "what", "event", "status"],
        [
            [e.seq, e.kind, e.purpose, e.event.describe() if e.event else "", e.status or ""]
            for e in history
        ],
    )


def _short(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _statistics(report: Report, out: Path, plots: bool) -> None:
    console.rule("4. DP statistics: census and Adult")
    try:
        from veil.analytics import Dataset, Releaser, TableSpec
        from veil.analytics.study import utility_study, write_study_report
    except MissingDependencyError as exc:
        report.heading("4. DP statistics")
        report.paragraph(f"Skipped: {exc}")
        return
    census = Dataset(
        data_path("census2000.csv"), TableSpec("census2000", bounds={"lweekinc": (0.0, 10.0)})
    )
    sql = "SELECT state, AVG(lweekinc) FROM census2000 GROUP BY state"
    truth = dict(
        census.register("t").execute("SELECT state, avg(lweekinc) FROM t GROUP BY state").fetchall()
    )
    with Ledger(str(out / "ledger.sqlite"), actor="demo@veil") as ledger:
        releaser = Releaser(ledger, scope="census2000/person")
        explanation = releaser.explain(census, sql, epsilon=1.0, delta=1e-7)
        result = releaser.release(
            census, sql, epsilon=1.0, delta=1e-7, purpose="mean log weekly income by state"
        )
        spent = ledger.status("census2000/person")
        adult = Dataset(
            data_path("adult.parquet"),
            TableSpec("adult", keys={"education": ADULT_EDUCATION}),
        )
        ledger.set_budget("adult/person", epsilon=1.0, purpose="Adult release")
        adult_sql = (
            "SELECT education, AVG(CASE WHEN income = '>50K' THEN 1 ELSE 0 END) AS share "
            "FROM adult GROUP BY education"
        )
        adult_result = Releaser(ledger, scope="adult/person").release(
            adult, adult_sql, epsilon=1.0, purpose="share earning over 50K by education"
        )
    console.print(
        f"released the mean log weekly income of {len(result.records)} states at epsilon 1 "
        f"(scope now at epsilon {spent.spent_epsilon:.3f} of 3)"
    )
    rows = utility_study(census, sql, epsilons=[0.1, 0.3, 1, 3, 10], repeats=10, delta=1e-7)
    study_dir = out / "census-study"
    write_study_report(
        rows, study_dir, title="utility study: mean log weekly income by state", query_text=sql
    )

    report.heading("4. DP statistics from the census and from Adult")
    report.paragraph(
        "veil.analytics runs the query inside DuckDB, bounds each person's contribution and "
        "clamps values to declared bounds there, and adds exact discrete noise in Python; the "
        "ledger is charged before any noise is drawn. The states are not declared public, so "
        "veil also chooses privately which states have enough people to be released (a "
        "threshold on a noisy count, which costs a small delta). Before releasing, the "
        "accuracy is known from public facts only:"
    )
    report.table(
        ["statistic", "noisy vector", "mechanism", "epsilon", "noise bound (95%)"],
        [
            [v.statistic, v.vector, v.mechanism, f"{v.epsilon:.3f}", fmt(v.error_bound, 3)]
            for v in explanation.vectors
        ],
    )
    if explanation.selection:
        report.paragraph(explanation.selection + ".")
    report.paragraph(
        "Released: the mean log weekly income by state at epsilon 1, delta 1e-7, with 95% "
        "intervals (the true value is shown here for the tour only; it is not released):"
    )
    report.table(
        ["state", "released mean", "95% interval", "true value (not released)"],
        [
            [
                r["state"],
                f"{r['value']:.3f}",
                f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]",
                f"{truth[r['state']]:.3f}",
            ]
            for r in sorted(result.records, key=lambda r: r["state"])
        ],
    )
    report.paragraph(
        "A utility study on the data owner's side (charged to nothing, never released) "
        "measures the error at several epsilons:"
    )
    report.table(
        ["epsilon", "mean relative error", "within 10%", "interval coverage", "states released"],
        [
            [
                f"{r.epsilon:g}",
                f"{r.mean_relative_error:.2%}",
                f"{r.within_10_percent:.0%}",
                f"{r.ci_coverage:.0%}",
                f"{r.groups_released:.0%}",
            ]
            for r in rows
        ],
    )
    if plots:
        for name in ("utility_error.png", "utility_within.png"):
            shutil.copyfile(study_dir / name, out / f"census-{name}")
        report.image(
            "census-utility_error.png",
            "Privacy-utility curve: mean relative error against epsilon.",
        )
    report.paragraph(
        "UCI Adult: the share of people earning over $50K by education level, at epsilon 1. "
        "The education levels are public (they are listed in the data set's documentation), so "
        "every level gets an answer and no delta is spent on choosing them."
    )
    report.table(
        ["education", "share over 50K", "95% interval"],
        [
            [r["education"], f"{r['value']:.3f}", f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]"]
            for r in adult_result.records
        ],
    )
    console.print(
        f"released the share over 50K for {len(adult_result.records)} education "
        "levels of UCI Adult at epsilon 1"
    )


def _federated(report: Report, out: Path, plots: bool) -> None:
    try:
        from veil.federated.scenarios import SCENARIOS, DpMode, FlRun, run_scenario, write_outputs
    except MissingDependencyError as exc:
        report.heading("5. Federated learning")
        report.paragraph(f"Skipped: {exc}")
        return
    runs: list[FlRun] = []
    folder = out / "federated-hospitals"
    with Progress(console=console, transient=True) as progress:
        plan = [
            (DpMode.NONE, None, "none"),
            (DpMode.RECORD, 8.0, "none"),
            (DpMode.RECORD, 1.0, "none"),
            (DpMode.NONE, None, "secagg+"),
            (DpMode.DISTRIBUTED, 8.0, "secagg+"),
        ]
        task = progress.add_task("federated hospitals", total=len(plan) * 30 + 10)
        for mode, eps, secure in plan:
            ledger = f"ledger-{mode.value}-epsilon-{eps:g}.sqlite" if eps else ""
            runs.append(
                run_scenario(
                    SCENARIOS["hospitals"],
                    dp=mode,
                    epsilon=eps,
                    ledger_path=str(folder / ledger) if eps else None,
                    central_baseline=not runs,
                    on_round=lambda _: progress.advance(task),
                    secure_aggregation=secure,
                )
            )
        progress.update(task, description="federated shakespeare")
        speech = run_scenario(
            SCENARIOS["shakespeare"],
            rounds=10,
            on_round=lambda _: progress.advance(task),
        )
    write_outputs(runs, folder, plots=plots)
    write_outputs([speech], out / "federated-shakespeare", plots=plots)
    central = runs[0].result.central or {}
    report.heading("5. Federated learning: three hospitals, then Shakespeare")
    report.paragraph(
        "Three hospitals hold the breast cancer records (569 patients), split with Dirichlet(0.5) "
        "label skew so that their mixes of benign and malignant tumours differ. They train one "
        "MLP with FedAvg for 30 rounds, without sharing a record: each round every hospital "
        "trains one local epoch and sends its update; the server averages them. The same model "
        "trained centrally on the pooled data for 30 epochs is the baseline. With record-level "
        "DP, each hospital runs DP-SGD (per-sample clipping, exact discrete Gaussian noise) and "
        "each patient's loss is charged to that hospital's own scope in the ledger. Under "
        "SecAgg+ the server never sees one hospital's update, only the sum of the masked "
        "updates; with distributed DP the hospitals add the noise themselves before masking, "
        "enough that any two of the three survivors' noise meets the target, so the server "
        "never sees a sum without noise either."
    )
    rows = [
        [
            "central (pooled data, not private)",
            f"{central.get('accuracy', float('nan')):.3f}",
            "-",
            "-",
            "-",
        ]
    ]
    for r in runs:
        s = r.summary()
        rows.append(
            [
                _fl_label(r, DpMode),
                f"{s['final_test_accuracy']:.3f}",
                "-" if s["epsilon_spent"] is None else f"{s['epsilon_spent']:.3f}",
                f"{s['rounds_run']}",
                f"{(s['bytes_sent'] + s['bytes_received']) / 1e6:.2f}"
                if s["bytes_sent"] is not None and s["bytes_received"] is not None
                else "withheld",
            ]
        )
    report.table(
        [
            "model",
            "test accuracy",
            "ε spent (largest party or per client)",
            "rounds",
            "MB exchanged",
        ],
        rows,
    )
    for r in runs:
        if r.dp is DpMode.DISTRIBUTED:
            s = r.summary()
            ratio = s["noise_multiplier"] * s["model_parameters"] ** 0.5 / s["clients"]
            report.paragraph(
                f"Distributed DP protects each hospital's whole update, not one patient: with "
                f"{s['clients']} hospitals, noise of {s['noise_multiplier']:.2f} times the clip "
                f"norm on each of {s['model_parameters']} parameters is about {ratio:.0f} times "
                "the largest possible sum of the clipped updates. Its accuracy is close to "
                "guessing and moves a lot with the seed; client-level DP pays off with hundreds "
                "of clients, not three (record-level DP-SGD above is the setting for a few "
                "hospitals)."
            )
    if plots:
        for name in ("accuracy.png", "epsilon.png"):
            shutil.copyfile(folder / name, out / f"federated-{name}")
        report.image("federated-accuracy.png", "Test accuracy per round, federated vs central.")
        report.image("federated-epsilon.png", "Epsilon spent per round (ledger), per target.")
    s = speech.summary()
    report.paragraph(
        f"Shakespeare: {speech.clients} speaking roles, each a client holding its own lines, "
        f"train a character LSTM ({speech.parameters:,} parameters) to predict the next "
        f"character. After {s['rounds_run']} rounds the federated model predicts "
        f"{s['final_test_accuracy']:.1%} of held-out characters; the same model trained "
        f"centrally for as many epochs, {s['central_test_accuracy']:.1%}."
    )
    console.print(
        f"federated hospitals: FedAvg {runs[0].summary()['final_test_accuracy']:.3f}, central "
        f"{central.get('accuracy', float('nan')):.3f}; DP-SGD at ε=8 and ε=1: "
        f"{runs[1].summary()['final_test_accuracy']:.3f}, "
        f"{runs[2].summary()['final_test_accuracy']:.3f}"
    )


def _fl_label(run: Any, modes: Any) -> str:
    secure = " under SecAgg+" if run.secure_aggregation == "secagg+" else ""
    if run.dp is modes.NONE:
        return f"FedAvg{secure}"
    if run.dp is modes.DISTRIBUTED:
        return f"FedAvg + distributed DP{secure}, target ε={run.epsilon:g}"
    return f"FedAvg + DP-SGD, target ε={run.epsilon:g}{secure}"


# The education levels of UCI Adult, as its documentation (adult.names) lists them.
ADULT_EDUCATION = (
    "Preschool",
    "1st-4th",
    "5th-6th",
    "7th-8th",
    "9th",
    "10th",
    "11th",
    "12th",
    "HS-grad",
    "Some-college",
    "Assoc-voc",
    "Assoc-acdm",
    "Bachelors",
    "Masters",
    "Prof-school",
    "Doctorate",
)


def _encrypted_scoring(report: Report) -> None:
    console.rule("6. encrypted credit scoring")
    try:
        from veil.he.scenarios import run_credit_scenario
    except MissingDependencyError as exc:
        report.heading("6. Encrypted credit scoring")
        report.paragraph(f"Skipped: {exc}")
        return
    with console.status("German credit: training, serving, scoring encrypted"):
        result = run_credit_scenario(workers=2)
    model = result.model
    poly = model.sigmoid
    assert poly is not None
    rows = []
    for r in result.runs:
        rows.append(
            [
                f"{r.mode.value}, {r.packing.value}",
                f"N={r.poly_modulus_degree}, {r.modulus_bits} bits",
                f"{r.key_bundle_bytes / 2**20:.2f}",
                f"{r.upload_bytes_per_query / 2**10:,.0f}",
                f"{r.ms_per_applicant:.2f}",
                f"{r.max_abs_dp:.1e}",
                f"{r.decisions_agree:.1%}",
            ]
        )
        console.print(
            f"{r.mode.value}, {r.packing.value}: {r.applicants} applicants, "
            f"{r.ms_per_applicant:.2f} ms each, max |p_enc - p_clear| {r.max_abs_dp:.1e}, "
            f"decisions agree {r.decisions_agree:.1%}"
        )
    report.heading("6. Encrypted credit scoring: German credit")
    report.paragraph(
        f"A lender trained a logistic regression on the German credit data (800 applicants; "
        f"{model.features} features after one-hot encoding; test accuracy "
        f"{result.test_accuracy:.3f}) and served it with `veil he serve` ({result.workers} "
        "worker processes, mutual TLS on loopback). Each of the 200 held-out applicants "
        "encoded and encrypted its features with CKKS (TenSEAL / Microsoft SEAL, 128-bit "
        "parameters), uploaded its public evaluation keys once, and decrypted its own score: "
        "the server saw neither the features nor the score and held no secret key. In logit "
        "mode the server returns the encrypted logit and the applicant applies the sigmoid; in "
        "probability mode the server evaluates a degree-"
        f"{poly.degree} polynomial fitted to the model's logit range [-{poly.radius:.2f}, "
        f"{poly.radius:.2f}] (max error {poly.max_error:.4f}). Batches pack one applicant per "
        "slot (up to 4,096 at N = 8192; a batch costs about the same whether full or not, "
        "so its time per applicant falls as it fills). Times include "
        "encryption, the gRPC call and decryption."
    )
    report.table(
        [
            "mode",
            "parameters",
            "key bundle MiB",
            "upload per query KiB",
            "ms per applicant",
            "max abs(p_enc - p_clear)",
            "decisions as the clear model",
        ],
        rows,
    )
    report.paragraph(
        "Only slot 0 of a single-applicant result can be read: the server multiplies the "
        "rotated sums by a one-hot mask, so the partial sums of weights times features that a "
        "plain rotate-and-sum leaves in the other slots (enough to read every weight from one "
        "query) are gone."
    )
