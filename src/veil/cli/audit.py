"""``veil audit``: attacks and DP audits that set an empirical epsilon next to the claim."""

from __future__ import annotations

import enum
import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import typer
from rich.table import Table

from veil.audit.dp import EpsilonAudit, OneRunTest, distinguishing_audit, one_run_audit
from veil.audit.stats import Roc
from veil.cli._common import console, fmt, parse_enum, print_json
from veil.errors import ConfigurationError
from veil.privacy.mechanisms import Domain, GaussianMechanism, LaplaceMechanism
from veil.privacy.random import InsecureSeededRandom, RandomSource, SecureRandom

app = typer.Typer(
    help="Privacy audits: empirical epsilon of a mechanism, membership inference on a model.",
    no_args_is_help=True,
)


class MechanismKind(enum.Enum):
    LAPLACE = "laplace"
    GAUSSIAN = "gaussian"


class DpMethod(enum.Enum):
    DISTINGUISHING = "distinguishing"
    ONE_RUN = "one_run"
    ONE_RUN_FDP = "one_run_fdp"


class Dataset(enum.Enum):
    DIGITS = "digits"
    BREAST_CANCER = "breast_cancer"


def _source(seed: int | None) -> RandomSource:
    return SecureRandom() if seed is None else InsecureSeededRandom(seed)


def _build(
    kind: MechanismKind,
    *,
    epsilon: float,
    delta: float,
    sensitivity: float,
    dimension: int,
    domain: Domain,
) -> LaplaceMechanism | GaussianMechanism:
    if kind is MechanismKind.LAPLACE:
        return LaplaceMechanism(
            sensitivity=sensitivity,
            epsilon=epsilon,
            dimension=dimension,
            max_changed=1,
            domain=domain,
        )
    return GaussianMechanism(
        sensitivity=sensitivity,
        epsilon=epsilon,
        delta=delta,
        dimension=dimension,
        max_changed=1,
        domain=domain,
    )


@app.command("dp")
def dp(
    mechanism: str = typer.Option("laplace", "--mechanism", help="laplace or gaussian."),
    epsilon: float = typer.Option(..., "--epsilon", help="The claimed epsilon."),
    delta: float | None = typer.Option(
        None, "--delta", help="The claimed delta [default: 0 for Laplace, 1e-5 for Gaussian]."
    ),
    sensitivity: float = typer.Option(
        1.0, "--sensitivity", help="The sensitivity the noise is calibrated for."
    ),
    shift: float | None = typer.Option(
        None,
        "--shift",
        help="How far the two neighbouring inputs really differ [default: --sensitivity]; "
        "larger than --sensitivity plays a calibration bug that the audit should catch.",
    ),
    method: str = typer.Option(
        "distinguishing",
        "--method",
        help="distinguishing (many runs), one-run (canaries) or one-run-fdp (canaries, tested "
        "against the Gaussian trade-off curve of the claim).",
    ),
    trials: int = typer.Option(
        100_000, "--trials", help="Runs on each neighbour (distinguishing audit)."
    ),
    canaries: int = typer.Option(10_000, "--canaries", help="Canaries (one-run audit)."),
    seed: int | None = typer.Option(
        None, "--seed", help="Seeded, insecure noise for a reproducible audit [default: secure]."
    ),
    check: bool = typer.Option(
        False, "--check", help="Exit with status 1 when the audit refutes the claim."
    ),
    report: Path | None = typer.Option(  # noqa: B008
        None, "--report", help="Write an HTML (and Markdown) report into this folder."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Audit one of veil's mechanisms at a claimed (EPSILON, DELTA): an empirical lower bound on
    epsilon from an attack on two neighbouring inputs (0 and --shift).

    Example: veil audit dp --epsilon 1 --shift 2 (noise for sensitivity 1, neighbours 2 apart:
    the bound exceeds the claim). Whole-number --sensitivity and --shift audit veil's integer
    mechanisms; others its mechanisms on reals.
    """
    kind: MechanismKind = parse_enum(MechanismKind, mechanism, "--mechanism")
    how: DpMethod = parse_enum(DpMethod, method, "--method")
    d = delta if delta is not None else (0.0 if kind is MechanismKind.LAPLACE else 1e-5)
    if kind is MechanismKind.GAUSSIAN and d <= 0:
        raise ConfigurationError("the Gaussian mechanism needs --delta > 0")
    step = sensitivity if shift is None else shift
    if not math.isfinite(step) or step <= 0:
        raise ConfigurationError(f"--shift must be a finite number > 0, got {step!r}")
    rng = _source(seed)
    # whole numbers are audited on veil's integer mechanisms (exact, and fast to calibrate)
    whole = float(sensitivity).is_integer() and float(step).is_integer()
    domain = Domain.INTEGERS if whole else Domain.REALS
    claim = _build(
        kind, epsilon=epsilon, delta=d, sensitivity=sensitivity, dimension=1, domain=domain
    )
    claimed = claim.epsilon if isinstance(claim, LaplaceMechanism) else claim.epsilon(d)
    kept: dict[float, npt.NDArray[np.float64]] = {}
    if how is DpMethod.DISTINGUISHING:

        def run(value: float, n: int) -> npt.NDArray[np.float64]:
            mech = _build(
                kind, epsilon=epsilon, delta=d, sensitivity=sensitivity, dimension=n, domain=domain
            )
            data = np.full(n, int(value) if whole else value)
            out = np.asarray(mech.release(data, rng=rng), dtype=np.float64)
            kept[value] = out
            return out

        audit = distinguishing_audit(
            run, (0.0, step), trials=trials, claimed_epsilon=claimed, delta=d
        )
        half = trials // 2
        roc = Roc.from_scores(kept[step][half:], kept[0.0][half:])
        if audit.details["upward"] == 0.0:
            roc = Roc.from_scores(-kept[step][half:], -kept[0.0][half:])
    else:
        if canaries < 10:
            raise ConfigurationError(f"--canaries must be at least 10, got {canaries}")
        included = np.random.default_rng(seed).random(canaries) < 0.5
        mech = _build(
            kind,
            epsilon=epsilon,
            delta=d,
            sensitivity=sensitivity,
            dimension=canaries,
            domain=domain,
        )
        values = included * (int(step) if whole else step)
        scores = np.asarray(mech.release(values, rng=rng), dtype=np.float64)
        test = OneRunTest.GAUSSIAN_FDP if how is DpMethod.ONE_RUN_FDP else OneRunTest.APPROXIMATE_DP
        if test is OneRunTest.GAUSSIAN_FDP and d <= 0:
            raise ConfigurationError("the f-DP one-run audit needs --delta > 0")
        if test is OneRunTest.GAUSSIAN_FDP and kind is not MechanismKind.GAUSSIAN:
            # the f-DP test assumes the Gaussian trade-off curve: on another mechanism it can
            # "refute" a correct claim
            raise ConfigurationError(
                "the f-DP one-run audit assumes the Gaussian mechanism's trade-off curve; "
                "use --method one-run for other mechanisms"
            )
        audit = one_run_audit(scores, included, claimed_epsilon=claimed, delta=d, test=test)
        roc = Roc.from_scores(scores[included], scores[~included])
    if as_json:
        print_json({"mechanism": claim.describe(), "shift": step, **audit.to_dict()})
    else:
        console.print(f"{claim.describe()}, neighbours 0 and {step:g}")
        console.print(audit.describe())
    if report is not None:
        html = _dp_report(report, claim.describe(), step, audit, roc)
        if not as_json:
            console.print(f"report written to {html}")
    if check and audit.exceeds_claim:
        raise typer.Exit(1)


def _dp_report(folder: Path, mechanism: str, shift: float, audit: EpsilonAudit, roc: Roc) -> Path:
    from veil.reports import Report
    from veil.reports.plots import epsilon_plot, have_matplotlib, roc_plot

    rep = Report("veil audit: empirical epsilon")
    rep.paragraph(f"{mechanism}, audited on neighbouring inputs 0 and {shift:g}.")
    rep.paragraph(audit.describe())
    rep.table(
        ["quantity", "value"],
        [
            ["claimed epsilon", fmt(audit.claimed_epsilon or 0.0, 6)],
            ["empirical epsilon (lower bound)", fmt(audit.epsilon_lower, 6)],
            ["confidence", f"{audit.confidence:.0%}"],
            ["delta", f"{audit.delta:g}"],
            *[[k.replace("_", " "), fmt(v, 6)] for k, v in audit.details.items()],
        ],
    )
    folder.mkdir(parents=True, exist_ok=True)
    if have_matplotlib():
        epsilon_plot(
            folder / "epsilon.png",
            [(audit.method.value, audit.epsilon_lower, audit.claimed_epsilon or 0.0)],
            title="empirical epsilon next to the claim",
        )
        rep.image("epsilon.png", "The lower bound (bar) and the claimed epsilon (red mark).")
        roc_plot(
            folder / "roc.png",
            {f"{audit.method.value} test": (roc.fpr, roc.tpr)},
            title=f"the attack's ROC (AUC {roc.auc:.3f})",
            dp_limit=(audit.claimed_epsilon or 0.0, audit.delta),
        )
        rep.image("roc.png", "ROC of the attack with the limit the claim allows (dotted).")
    html, _ = rep.write(folder)
    return html


@app.command("mia")
def mia(
    dataset: str = typer.Option("digits", "--dataset", help="digits or breast-cancer."),
    population: int = typer.Option(
        400, "--population", help="Records the attack is run on (each model trains on half)."
    ),
    models_: int = typer.Option(8, "--models", help="Models trained (an even number >= 4)."),
    epochs: int = typer.Option(500, "--epochs", help="Training epochs of each model."),
    learning_rate: float = typer.Option(1.0, "--learning-rate", help="Gradient descent step."),
    hidden: int = typer.Option(128, "--hidden", help="Width of the MLP's hidden layer."),
    dp_epsilon: float | None = typer.Option(
        None, "--dp-epsilon", help="Train with DP-SGD at this epsilon [default: no DP]."
    ),
    delta: float = typer.Option(1e-5, "--delta", help="DP-SGD's delta."),
    clip: float = typer.Option(1.0, "--clip", help="DP-SGD's per-example clipping norm."),
    batch_fraction: float = typer.Option(
        0.2, "--batch-fraction", help="DP-SGD's expected batch as a fraction of the records."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the halves, initialisation and noise."),
    threads: int = typer.Option(1, "--threads", help="PyTorch threads while training."),
    report: Path | None = typer.Option(  # noqa: B008
        None, "--report", help="Write an HTML (and Markdown) report into this folder."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Membership inference (loss threshold, LiRA offline and online) against MLPs trained by
    veil on halves of a data set, each model the target in turn; with --dp-epsilon, under DP-SGD
    (noise from a seeded generator: an audit is a simulation)."""
    from veil.audit.mia import membership_audit, train_shadow_models
    from veil.federated import ClientData, DpSgd, TrainConfig, data, models
    from veil.privacy.calibration import dpsgd_noise_multiplier

    which: Dataset = parse_enum(Dataset, dataset, "--dataset")
    fed = (data.digits if which is Dataset.DIGITS else data.breast_cancer)(
        clients=1, alpha=None, seed=seed
    )
    n = len(fed.y)
    if not 8 <= population <= n:
        raise ConfigurationError(f"--population must be between 8 and {n}, got {population}")
    if epochs < 1 or hidden < 1 or threads < 1:
        raise ConfigurationError("--epochs, --hidden and --threads must be at least 1")
    pop = ClientData(fed.x[:population], fed.y[:population])
    features = int(fed.x.shape[1])
    classes = 1 if fed.classes == 2 else fed.classes

    def make() -> Any:
        return models.Mlp(features, classes, (hidden,))

    dpsgd = None
    z = None
    if dp_epsilon is not None:
        if not 0 < batch_fraction <= 1:
            raise ConfigurationError(f"--batch-fraction must be in (0, 1], got {batch_fraction}")
        members = population // 2
        batch = max(1, round(batch_fraction * members))
        shape = DpSgd(noise_multiplier=1.0, clip_norm=clip, batch_size=batch)
        z = dpsgd_noise_multiplier(
            epsilon=dp_epsilon,
            delta=delta,
            sampling_probability=shape.sampling_probability(members),
            steps=shape.steps(members, epochs),
        )
        dpsgd = DpSgd(noise_multiplier=z, clip_norm=clip, batch_size=batch)
    shadows = train_shadow_models(
        make,
        pop,
        models=models_,
        config=TrainConfig(local_epochs=epochs, learning_rate=learning_rate),
        holdout=fed.test,
        dpsgd=dpsgd,
        rng=InsecureSeededRandom(seed) if dpsgd is not None else None,
        seed=seed,
        threads=threads,
    )
    audit = membership_audit(shadows)
    rows = audit.summary()
    violations = audit.dp_bound_violations(epsilon=dp_epsilon, delta=delta) if dp_epsilon else None
    setting = (
        f"{fed.name}: {models_} MLPs (hidden {hidden}) on halves of {population} records, "
        + (
            f"DP-SGD at epsilon {dp_epsilon:g} (delta {delta:g}, noise multiplier {z:.4g})"
            if dpsgd is not None and z is not None
            else "no DP"
        )
        + f"; mean test accuracy {audit.mean_accuracy:.3f}"
    )
    if as_json:
        print_json(
            {
                "setting": setting,
                "attacks": rows,
                "dp_limit_violations": None
                if violations is None
                else [
                    {"attack": a.value, "fpr": f, "tpr_lower": lo, "limit": lim}
                    for a, f, lo, lim in violations
                ],
            }
        )
    else:
        console.print(setting)
        table = Table()
        for col in ("attack", "AUC", "advantage", "TPR @ 0.1% FPR", "TPR @ 1% FPR"):
            table.add_column(col, justify="left" if col == "attack" else "right")
        for r in rows:
            table.add_row(*_row_cells(r))
        console.print(table)
        if violations is not None:
            console.print(
                "every attack within the DP limit TPR <= e^ε·FPR + δ"
                if not violations
                else f"DP LIMIT EXCEEDED by {len(violations)} attack/FPR pair(s): {violations}"
            )
    if report is not None:
        html = _mia_report(report, setting, audit, rows, dp_epsilon, delta, violations)
        if not as_json:
            console.print(f"report written to {html}")


def _row_cells(r: dict[str, float | str]) -> list[str]:
    def rate(name: str) -> str:
        return (
            f"{float(r[name]):.2%} [{float(r[name + ' low']):.2%}, {float(r[name + ' high']):.2%}]"
        )

    return [
        str(r["attack"]),
        f"{float(r['auc']):.3f}",
        f"{float(r['advantage']):.3f}",
        rate("tpr@0.1%"),
        rate("tpr@1%"),
    ]


def _mia_report(
    folder: Path,
    setting: str,
    audit: Any,
    rows: list[dict[str, float | str]],
    dp_epsilon: float | None,
    delta: float,
    violations: list[Any] | None,
) -> Path:
    from veil.reports import Report
    from veil.reports.plots import have_matplotlib, roc_plot

    rep = Report("veil audit: membership inference")
    rep.paragraph(setting)
    rep.paragraph(
        f"Each of the {audit.targets} models is the target in turn, the others except its "
        "complementary partner its shadow models; scores are pooled over targets. Intervals "
        "are 95% bootstrap intervals over the independent pairs of models and their records."
    )
    rep.table(
        ["attack", "AUC", "advantage", "TPR @ 0.1% FPR", "TPR @ 1% FPR"],
        [_row_cells(r) for r in rows],
    )
    if violations is not None:
        rep.paragraph(
            "No attack exceeds the DP limit TPR ≤ e^ε·FPR + δ (lower confidence bounds)."
            if not violations
            else f"The DP limit is exceeded: {violations}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    if have_matplotlib():
        roc_plot(
            folder / "roc.png",
            {a.value: (roc.fpr, roc.tpr) for a, roc in audit.rocs.items()},
            title="membership inference ROC (log-log)",
            dp_limit=None if dp_epsilon is None else (dp_epsilon, delta),
        )
        rep.image("roc.png", "ROC curves of the attacks; the dotted line is the DP limit.")
    html, _ = rep.write(folder)
    return html


@app.command("inversion")
def inversion(
    images: int = typer.Option(3, "--images", help="Digits images attacked (one client each)."),
    clip: float | None = typer.Option(
        None, "--clip", help="Clip each client's gradient to this L2 norm [default: no clipping]."
    ),
    noise: float = typer.Option(
        0.0, "--noise", help="Gaussian noise multiplier on the update (needs --clip)."
    ),
    clients: int = typer.Option(
        1, "--clients", help="Updates summed before the server sees them (secure aggregation)."
    ),
    steps: int = typer.Option(1000, "--steps", help="Optimisation steps of Inverting Gradients."),
    seed: int = typer.Option(0, "--seed", help="Seed of the model, the images and the noise."),
    report: Path | None = typer.Option(  # noqa: B008
        None, "--report", help="Write an HTML report (PSNR table, reconstructed images) here."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Gradient inversion of a federated update on digits (MLP 64-32-10 with sigmoid): label
    recovery, the analytic first-layer attack, DLG and Inverting Gradients, each measured by
    PSNR against the true image and against the mean-image baseline."""
    import torch
    from torch import nn

    from veil.audit.inversion import (
        analytic_first_layer,
        client_update,
        dlg,
        inverting_gradients,
        psnr,
        recover_label,
    )
    from veil.federated.data import _sklearn

    if images < 1 or clients < 1 or steps < 1:
        raise ConfigurationError("--images, --clients and --steps must be at least 1")
    if noise and clip is None:
        raise ConfigurationError("--noise needs --clip (the noise is scaled to the clip norm)")
    bunch = _sklearn().load_digits()  # type: ignore[attr-defined]
    x_all = torch.tensor(np.asarray(bunch.data) / 16.0)
    y_all = torch.tensor(np.asarray(bunch.target))
    mean_image = x_all.mean(dim=0, keepdim=True)
    order = np.random.default_rng(seed).permutation(len(y_all))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(64, 32), nn.Sigmoid(), nn.Linear(32, 10)).double()
    names = ("analytic", "DLG", "inverting gradients")
    rows: list[dict[str, Any]] = []
    pictures: list[tuple[str, list[npt.NDArray[np.float64]]]] = []
    for k in range(images):
        idx = torch.from_numpy(order[k * clients : (k + 1) * clients].copy())
        x, y = x_all[idx], y_all[idx]
        update = client_update(
            model,
            x,
            y,
            clip_norm=clip,
            noise_multiplier=noise,
            generator=torch.Generator().manual_seed(seed * 1000 + k),
        )
        label = recover_label(model, update)
        recs = [
            analytic_first_layer(model, update),
            dlg(model, update, label, features=64, steps=200, seed=seed),
            inverting_gradients(
                model, update, label, features=64, steps=steps, image_side=8, seed=seed
            ),
        ]
        row: dict[str, Any] = {
            "image": k,
            "label_recovered": bool(label in y.tolist()),
            "mean_image_psnr": psnr(mean_image, x),
        }
        row.update({n: psnr(r, x) for n, r in zip(names, recs, strict=True)})
        rows.append(row)
        pictures.append((f"client {k}", [x[0].numpy()] + [r[0].numpy() for r in recs]))
    defence = (
        f"clip {clip:g}" if clip is not None else "no clipping"
    ) + f", noise multiplier {noise:g}, {clients} update(s) summed"
    if as_json:
        print_json({"defence": defence, "images": rows})
    else:
        console.print(f"digits, MLP 64-32-10 (sigmoid); {defence}; PSNR in dB (best match)")
        table = Table()
        for col in ("image", "label", "mean image", *names):
            table.add_column(col, justify="right")
        for r in rows:
            table.add_row(
                str(r["image"]),
                "yes" if r["label_recovered"] else "no",
                *[fmt(r[c], 3) for c in ("mean_image_psnr", *names)],
            )
        console.print(table)
    if report is not None:
        from veil.reports import Report
        from veil.reports.plots import have_matplotlib, image_grid

        rep = Report("veil audit: gradient inversion")
        rep.paragraph(
            f"Digits, MLP 64-32-10 (sigmoid), {defence}. PSNR in dB against the true image "
            "(best match among the summed clients); the mean image is what a server knows "
            "without the update."
        )
        rep.table(
            ["image", "label recovered", "mean image", *names],
            [
                [r["image"], "yes" if r["label_recovered"] else "no"]
                + [fmt(r[c], 3) for c in ("mean_image_psnr", *names)]
                for r in rows
            ],
        )
        report.mkdir(parents=True, exist_ok=True)
        if have_matplotlib():
            image_grid(report / "reconstructions.png", pictures, side=8)
            rep.image(
                "reconstructions.png",
                "Each row: the true image (first client), then the analytic, DLG and Inverting "
                "Gradients reconstructions.",
            )
        html, _ = rep.write(report)
        if not as_json:
            console.print(f"report written to {html}")


class Answers(enum.Enum):
    EXACT = "exact"
    ENGINE = "engine"


@app.command("reconstruction")
def reconstruction(
    people: int = typer.Option(100, "--people", help="People, each with one secret bit."),
    queries: int = typer.Option(400, "--queries", help="Random subset-sum questions asked."),
    answers: str = typer.Option(
        "engine", "--answers", help="engine (veil's release engine and ledger) or exact."
    ),
    epsilon: float = typer.Option(
        4.0,
        "--epsilon",
        help="The ledger's budget for all questions (engine), spent whole: each asks the epsilon "
        "that composes to it over the questions.",
    ),
    seed: int = typer.Option(
        0, "--seed", help="Seed of the secret bits, the subsets and the engine's (insecure) noise."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Dinur-Nissim reconstruction: ask random subset sums of secret bits and decode them with a
    linear program, against exact answers or through veil's release engine with a budget."""

    from veil.audit.reconstruction import attack_secret_bits, reconstruction_attack

    mode: Answers = parse_enum(Answers, answers, "--answers")
    if people < 2 or queries < 1:
        raise ConfigurationError("--people must be at least 2 and --queries at least 1")
    secret = np.random.default_rng(seed).integers(0, 2, people)
    spent = 0.0
    if mode is Answers.EXACT:
        result = reconstruction_attack(
            lambda ids: float(secret[list(ids)].sum()), people=people, queries=queries, seed=seed
        )
    else:
        result, _, spent = attack_secret_bits(
            secret, queries=queries, epsilon=epsilon, delta=1e-5, seed=seed
        )
    accuracy = result.accuracy(secret)
    if as_json:
        print_json(
            {
                "answers": mode.value,
                "people": people,
                "queries": queries,
                "accuracy": accuracy,
                "epsilon_spent": spent,
            }
        )
    else:
        how = (
            "exact answers"
            if mode is Answers.EXACT
            else (
                f"veil's release engine, budget epsilon {epsilon:g} (spent {spent:.3g} by the "
                "ledger's accountant at delta 1e-5)"
            )
        )
        console.print(
            f"{people} secret bits, {queries} subset sums, {how}: {accuracy:.1%} reconstructed "
            "(chance 50%)"
        )
