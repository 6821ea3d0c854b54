"""Membership inference against trained models: the loss-threshold attack, LiRA and RMIA.

Every attack scores a candidate record ``(x, y)`` against a model; a higher score means "more
likely a member of the training set". Scores are built from the **logit-scaled confidence**

    φ(x, y) = log p_y − log(1 − p_y) = z_y − logsumexp_{j≠y} z_j

computed from the logits ``z`` in float64 (for a one-logit binary model, ``φ = z`` if ``y = 1``
and ``-z`` otherwise). Computing it from probabilities, or a loss from float32 logits, saturates:
confident records all get loss exactly 0 and the attack sees ties (AUC 0.5 where there is signal).

* **Loss threshold** (Yeom, Giacomelli, Fredrikson and Jha 2018): the score is φ itself, a
  monotone function of minus the loss, so thresholding it is thresholding the loss.
* **RMIA** (Zarifzadeh, Liu and Shokri 2024): the ratio ``Pr(x|θ) / Pr(x)`` of the target's
  probability of the true label to its mean over the reference models, compared with the same
  ratio on population samples ``z`` no model trained on (held-out records): the score is the
  fraction of ``z`` that ``x`` beats. It needs few reference models.
* **LiRA** (Carlini, Chien, Nasr, Song, Terzis and Tramèr 2022): shadow models are trained on
  random halves of a population that contains the candidates. For each record, φ under the
  shadow models that did (IN) and did not (OUT) train on it is modelled as Gaussian; with few
  shadow models, one variance per side is shared by all records ("fixed variance"). *Online*, the
  score is the log-likelihood ratio ``log N(φ; μ_in, σ_in²) − log N(φ; μ_out, σ_out²)``;
  *offline* (OUT models only, reusable for any target), it is ``−log P[N(μ_out, σ_out²) ≥ φ]``.

Shadow models come in pairs trained on complementary halves (:func:`train_shadow_models`), so
every record has IN and OUT models. :func:`membership_audit` evaluates the attacks the way the
LiRA paper does: each model in turn is the target and the others, *except its complementary
partner*, are its shadows; the scores of all targets are pooled into one ROC per attack (members
are the positives), so there are enough non-members to read the TPR at a low FPR. The partner is
left out because it is IN exactly where the target is OUT: with it, a member of the target has
one IN shadow fewer than a non-member, and RMIA's mean over the reference models would read
membership off that imbalance even from a target that learned nothing. Without it every record
has as many IN as OUT shadows, whatever the target trained on.

The pooled scores are not independent (the same records and shadow models serve every target),
so the confidence intervals of :class:`MembershipAudit` come from a bootstrap over the
independent units of the experiment: each complementary pair of targets (trained on one random
split) is one unit, resampled whole.

A DP guarantee bounds every attack: an ``(ε, δ)``-DP training run allows at most
``TPR <= e^ε FPR + δ`` at every threshold, and the accountant's trade-off curve for the run's
events bounds it more tightly (:mod:`veil.audit.tradeoff`).
:meth:`MembershipAudit.dp_bound_violations` and :meth:`MembershipAudit.limit_violations` check
the bootstrap lower bound of each attack's TPR against the limit at the upper bound of its FPR,
with a Bonferroni correction over every (attack, FPR) point tested.

Needs the ``federated`` extra (PyTorch).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import numpy.typing as npt
import torch
from scipy import stats
from torch import nn
from torch.func import functional_call

from veil.audit.stats import Roc
from veil.audit.tradeoff import dp_tpr_limit
from veil.errors import ConfigurationError, DataError
from veil.federated.dp import DpSgd
from veil.federated.messages import TrainConfig
from veil.federated.training import (
    ClientData,
    ParamLayout,
    evaluate,
    train_clients,
    train_dpsgd,
)
from veil.privacy.random import RandomSource

__all__ = [
    "Attack",
    "Interval",
    "MembershipAudit",
    "ShadowModels",
    "confidence_scores",
    "lira_offline",
    "lira_online",
    "membership_audit",
    "model_confidences",
    "rmia",
    "train_shadow_models",
]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

# Standard deviations below this are floored (a model that gives every record the same φ).
_MIN_STD = 1e-6


class Attack(enum.Enum):
    """The membership inference attacks :func:`membership_audit` runs."""

    LOSS = "loss"
    LIRA_OFFLINE = "lira-offline"
    LIRA_ONLINE = "lira-online"
    RMIA = "rmia"


def confidence_scores(logits: torch.Tensor | npt.ArrayLike, labels: npt.ArrayLike) -> FloatArray:
    """φ = z_y − logsumexp_{j≠y} z_j for each row of ``logits`` (float64; see the module
    docstring). One column means a binary model with logit ``z``: φ = ±z."""
    z = torch.as_tensor(logits).detach().to(torch.float64)
    y = torch.as_tensor(np.asarray(labels)).long().reshape(-1)
    if z.dim() != 2 or z.shape[0] != y.shape[0]:
        raise DataError(f"need logits (records, classes) and one label each, got {tuple(z.shape)}")
    if z.shape[1] == 1:
        sign = torch.where(y == 1, 1.0, -1.0).to(torch.float64)
        return (sign * z[:, 0]).numpy()
    if int(y.min()) < 0 or int(y.max()) >= z.shape[1]:
        raise DataError(f"labels must be in [0, {z.shape[1]})")
    true = z.gather(1, y[:, None])[:, 0]
    others = z.scatter(1, y[:, None], -math.inf)
    return (true - torch.logsumexp(others, dim=1)).numpy()


@torch.no_grad()
def model_confidences(
    layout: ParamLayout, parameters: npt.ArrayLike, data: ClientData, *, batch: int = 4096
) -> FloatArray:
    """φ of every record of ``data`` under the model ``parameters`` (a flat vector for
    ``layout``'s module)."""
    dtype = data.x.dtype if data.x.is_floating_point() else torch.float32
    params = layout.unflatten(torch.tensor(np.asarray(parameters), dtype=dtype))
    out = []
    for lo in range(0, len(data), batch):
        logits = functional_call(layout.module, params, (data.x[lo : lo + batch],))
        out.append(confidence_scores(logits, data.y[lo : lo + batch].numpy()))
    return np.concatenate(out) if out else np.zeros(0)


@dataclasses.dataclass(frozen=True)
class ShadowModels:
    """What the attacks need from shadow models: ``confidences[j, i]`` is φ of population record
    ``i`` under model ``j``, ``keep[j, i]`` whether model ``j`` trained on it; ``accuracy[j]`` is
    model ``j``'s accuracy on held-out data (for the report), and ``reference[j, k]`` φ of
    held-out record ``k`` (no model trained on it; RMIA's population samples ``z``), if any."""

    confidences: FloatArray
    keep: BoolArray
    accuracy: FloatArray
    reference: FloatArray | None = None

    def __post_init__(self) -> None:
        if self.confidences.shape != self.keep.shape or self.confidences.ndim != 2:
            raise DataError("confidences and keep must be (models, records) of the same shape")
        if not np.all(np.isfinite(self.confidences)):
            raise DataError("shadow confidences must be finite")
        if self.reference is not None and (
            self.reference.ndim != 2 or self.reference.shape[0] != self.keep.shape[0]
        ):
            raise DataError("reference confidences must be (models, held-out records)")

    @property
    def models(self) -> int:
        return int(self.keep.shape[0])


def _check_shadows(shadow: FloatArray, keep: BoolArray, target: FloatArray) -> None:
    if shadow.ndim != 2 or shadow.shape != keep.shape or shadow.shape[1] != target.size:
        raise DataError(
            "need shadow confidences and keep of shape (models, records) and one target "
            f"confidence per record; got {shadow.shape}, {keep.shape}, {target.shape}"
        )


def _side_stats(shadow: FloatArray, mask: BoolArray) -> tuple[FloatArray, float]:
    """Per-record means over the models selected by ``mask`` and one pooled std."""
    counts = mask.sum(axis=0)
    if np.any(counts == 0):
        raise DataError(
            "some record has no shadow model on one side (IN or OUT); train shadow models in "
            "complementary pairs (train_shadow_models does) and use at least 4"
        )
    mean = (shadow * mask).sum(axis=0) / counts
    resid = np.where(mask, shadow - mean[None, :], 0.0)
    dof = max(int(mask.sum()) - shadow.shape[1], 1)
    std = max(math.sqrt(float(np.sum(resid**2)) / dof), _MIN_STD)
    return mean, std


def lira_offline(target: npt.ArrayLike, shadow: npt.ArrayLike, keep: npt.ArrayLike) -> FloatArray:
    """LiRA offline scores of each record's ``target`` confidence against the OUT shadow models
    (``shadow`` and ``keep`` are ``(models, records)``; only OUT entries are used)."""
    t = np.asarray(target, dtype=np.float64).reshape(-1)
    s = np.asarray(shadow, dtype=np.float64)
    k = np.asarray(keep, dtype=bool)
    _check_shadows(s, k, t)
    mu_out, sd_out = _side_stats(s, ~k)
    return np.asarray(-stats.norm.logsf((t - mu_out) / sd_out), dtype=np.float64)


def lira_online(target: npt.ArrayLike, shadow: npt.ArrayLike, keep: npt.ArrayLike) -> FloatArray:
    """LiRA online scores: the Gaussian log-likelihood ratio of IN against OUT, fixed variance."""
    t = np.asarray(target, dtype=np.float64).reshape(-1)
    s = np.asarray(shadow, dtype=np.float64)
    k = np.asarray(keep, dtype=bool)
    _check_shadows(s, k, t)
    mu_in, sd_in = _side_stats(s, k)
    mu_out, sd_out = _side_stats(s, ~k)
    return np.asarray(
        stats.norm.logpdf(t, mu_in, sd_in) - stats.norm.logpdf(t, mu_out, sd_out),
        dtype=np.float64,
    )


def _log_probability(phi: FloatArray) -> FloatArray:
    """log p from φ = log p − log(1 − p), stably: ``−softplus(−φ)``."""
    return np.asarray(-np.logaddexp(0.0, -phi), dtype=np.float64)


def rmia(
    target: npt.ArrayLike,
    shadow: npt.ArrayLike,
    target_population: npt.ArrayLike,
    shadow_population: npt.ArrayLike,
) -> FloatArray:
    """RMIA scores (Zarifzadeh, Liu and Shokri 2024), online: for each candidate ``x``, the
    fraction of population samples ``z`` with ``Pr(x|θ)/Pr(x) >= Pr(z|θ)/Pr(z)`` (γ = 1), where
    ``Pr(·)`` is the mean probability of the true label under all the reference models.

    ``target`` and ``shadow`` (``(models, records)``) are φ of the candidates under the target
    and the reference models; ``target_population`` and ``shadow_population`` the same for the
    population samples, on which no model trained. Ties in the fraction are broken by the raw
    ratio (a term below one step of the fraction)."""
    t = np.asarray(target, dtype=np.float64).reshape(-1)
    s = np.asarray(shadow, dtype=np.float64)
    tz = np.asarray(target_population, dtype=np.float64).reshape(-1)
    sz = np.asarray(shadow_population, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] != t.size or sz.ndim != 2 or sz.shape != (s.shape[0], tz.size):
        raise DataError("need (models, records) reference confidences for candidates and samples")
    if tz.size == 0:
        raise DataError("RMIA needs population samples")

    def log_ratio(own: FloatArray, refs: FloatArray) -> FloatArray:
        mean_log = np.log(np.mean(np.exp(_log_probability(refs)), axis=0))
        return np.asarray(_log_probability(own) - mean_log, dtype=np.float64)

    rx = log_ratio(t, s)
    rz = np.sort(log_ratio(tz, sz))
    fraction = np.searchsorted(rz, rx, side="right") / rz.size
    tie_break = 0.5 / (rz.size + 1) * (1.0 / (1.0 + np.exp(-np.clip(rx, -700, 700))))
    return np.asarray(fraction + tie_break, dtype=np.float64)


def _halves(records: int, pairs: int, seed: int) -> BoolArray:
    rng = np.random.default_rng(seed)
    keep = np.zeros((2 * pairs, records), dtype=bool)
    for p in range(pairs):
        chosen = rng.permutation(records)[: records // 2]
        keep[2 * p, chosen] = True
        keep[2 * p + 1] = ~keep[2 * p]
    return keep


def train_shadow_models(
    make_model: Callable[[], nn.Module],
    population: ClientData,
    *,
    models: int,
    config: TrainConfig,
    holdout: ClientData | None = None,
    dpsgd: DpSgd | None = None,
    seed: int = 0,
    rng: RandomSource | None = None,
    threads: int | None = None,
) -> ShadowModels:
    """Train ``models`` models (an even number >= 4) on random halves of ``population``, in
    complementary pairs, with veil's trainers, and record every model's φ on every record.

    Without ``dpsgd`` the models train together (one batched ``vmap`` over the cohort, through
    :func:`veil.federated.train_clients`) with ``config`` (its ``local_epochs`` are the epochs);
    with it, each model trains with DP-SGD (:func:`veil.federated.train_dpsgd`) drawing its
    noise from ``rng``. All models start from one initialisation (``make_model()`` under
    ``torch.manual_seed(seed)``), as the batched trainer needs; they differ by their data (and
    under DP-SGD by their noise). ``seed`` also fixes the halves and the minibatch order.
    ``threads`` sets PyTorch's intra-op threads while training (restored afterwards); on a busy
    machine 1 is often many times faster than the default.
    """
    if not isinstance(models, int) or models < 4 or models % 2:
        raise ConfigurationError(f"models must be an even integer >= 4, got {models!r}")
    n = len(population)
    if n < 4:
        raise DataError("the population needs at least 4 records")
    if dpsgd is not None and rng is None:
        raise ConfigurationError("DP-SGD shadow models need rng= (the noise source)")
    keep = _halves(n, models // 2, seed)
    confidences = np.empty((models, n))
    accuracy = np.full(models, math.nan)
    reference = np.empty((models, len(holdout))) if holdout is not None and len(holdout) else None
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        module = make_model()
    layout = ParamLayout(module)
    start = np.asarray(layout.vector(), dtype=np.float64)
    halves = [
        ClientData(population.x[torch.from_numpy(np.flatnonzero(k))], population.y[k]) for k in keep
    ]
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        if dpsgd is None:
            generator = torch.Generator().manual_seed(seed)
            outcomes = train_clients(layout, start, halves, config, generator=generator)
        else:
            assert rng is not None
            outcomes = [train_dpsgd(layout, start, h, config, dpsgd, rng=rng) for h in halves]
    finally:
        torch.set_num_threads(before)
    for j, outcome in enumerate(outcomes):
        params = start + outcome.update
        confidences[j] = model_confidences(layout, params, population)
        if holdout is not None and reference is not None:
            accuracy[j] = evaluate(layout, params, holdout)["accuracy"]
            reference[j] = model_confidences(layout, params, holdout)
    return ShadowModels(confidences, keep, accuracy, reference)


@dataclasses.dataclass(frozen=True)
class Interval:
    """A statistic of the pooled ROC with its bootstrap confidence interval."""

    estimate: float
    lower: float
    upper: float


# (members' scores, non-members' scores) of one target model
TargetScores = tuple[FloatArray, FloatArray]


@dataclasses.dataclass(frozen=True)
class MembershipAudit:
    """Each attack's pooled ROC over the target models (leave-one-model-out).

    ``scores[attack][t]`` are target ``t``'s scores of its members and non-members, and
    ``units[t]`` the independent unit target ``t`` belongs to (targets trained on complementary
    halves of one split share a unit). Intervals come from a two-stage bootstrap, ``resamples``
    times from a fixed seed (an audit is reproducible): the units are drawn with replacement, then
    each drawn target's members and non-members with replacement, and the pooled statistic is
    recomputed; the interval is its percentiles. Between targets, the scores are dependent (the
    same records, overlapping shadow models), so only whole units are treated as independent;
    within one target model, records are, as in every membership inference evaluation. With
    few units (8 models are 4) the interval is approximate; more models make it reliable."""

    rocs: Mapping[Attack, Roc]
    targets: int
    shadow_models: int
    records: int
    mean_accuracy: float
    scores: Mapping[Attack, tuple[TargetScores, ...]] = dataclasses.field(default_factory=dict)
    units: tuple[int, ...] = ()
    resamples: int = 1000

    def _bootstrap(self) -> bool:
        """Whether the per-target scores are there (an audit built by hand may lack them; its
        intervals are then Clopper-Pearson bounds on the pooled scores, as if independent)."""
        return len(self.units) == self.targets > 0 and all(a in self.scores for a in self.rocs)

    def _resampled(self, attack: Attack, statistic: Callable[[Roc], Sequence[float]]) -> FloatArray:
        """``statistic`` of the pooled ROC of ``attack`` on each bootstrap resample of the units
        (one row per resample)."""
        per_target = self.scores[attack]
        labels = sorted(set(self.units))
        members = {u: [t for t, v in enumerate(self.units) if v == u] for u in labels}
        gen = np.random.default_rng(0)
        out = []
        for _ in range(self.resamples):
            drawn = [
                t for i in gen.integers(0, len(labels), len(labels)) for t in members[labels[i]]
            ]
            pos = np.concatenate([_redraw(per_target[t][0], gen) for t in drawn])
            neg = np.concatenate([_redraw(per_target[t][1], gen) for t in drawn])
            out.append(statistic(Roc.from_scores(pos, neg)))
        return np.asarray(out, dtype=np.float64)

    def _intervals(
        self, attack: Attack, fprs: tuple[float, ...], confidence: float
    ) -> tuple[Interval, list[Interval]]:
        roc = self.rocs[attack]
        points = [roc.tpr_at(f, confidence=confidence) for f in fprs]
        if not self._bootstrap():
            return Interval(roc.auc, math.nan, math.nan), [
                Interval(p.tpr, p.tpr_lower, p.tpr_upper) for p in points
            ]
        tail = (1.0 - confidence) / 2.0
        values = self._resampled(attack, lambda r: [r.auc, *(r.tpr_at(f).tpr for f in fprs)])
        lo, hi = np.quantile(values, [tail, 1.0 - tail], axis=0)
        auc = Interval(roc.auc, float(lo[0]), float(hi[0]))
        tprs = [Interval(p.tpr, float(lo[i + 1]), float(hi[i + 1])) for i, p in enumerate(points)]
        return auc, tprs

    def auc_interval(self, attack: Attack, *, confidence: float = 0.95) -> Interval:
        """The pooled AUC with a two-sided bootstrap interval (``nan`` bounds without per-target
        scores)."""
        return self._intervals(attack, (), confidence)[0]

    def tpr_interval(self, attack: Attack, fpr: float, *, confidence: float = 0.95) -> Interval:
        """The pooled TPR at ``fpr`` (:meth:`Roc.tpr_at`) with a two-sided bootstrap interval
        of the same statistic."""
        return self._intervals(attack, (fpr,), confidence)[1][0]

    def summary(self, *, confidence: float = 0.95) -> list[dict[str, float | str]]:
        """One row per attack: AUC, advantage, TPR at 0.1% and 1% FPR, each interval at
        ``confidence`` on its own (no correction for reading several)."""
        rows: list[dict[str, float | str]] = []
        for attack, roc in self.rocs.items():
            auc, tprs = self._intervals(attack, (0.001, 0.01), confidence)
            row: dict[str, float | str] = {
                "attack": attack.value,
                "auc": roc.auc,
                "auc low": auc.lower,
                "auc high": auc.upper,
                "advantage": roc.advantage,
            }
            for p, name in zip(tprs, ("0.1%", "1%"), strict=True):
                row[f"tpr@{name}"] = p.estimate
                row[f"tpr@{name} low"] = p.lower
                row[f"tpr@{name} high"] = p.upper
            rows.append(row)
        return rows

    def limit_violations(
        self,
        limit: Callable[[float], float],
        *,
        fprs: tuple[float, ...] = (0.001, 0.01, 0.1),
        significance: float = 0.05,
    ) -> list[tuple[Attack, float, float, float]]:
        """``(attack, fpr, tpr lower bound, limit)`` wherever an attack's TPR is significantly
        above ``limit`` (a function of the FPR, e.g. from :mod:`veil.audit.tradeoff`); an empty
        list when every ROC lies under the curve.

        At each ``fpr`` the threshold is the pooled ROC's (:meth:`Roc.tpr_at`); its TPR's lower
        bound and its FPR's upper bound are one-sided at ``significance / (2 k)``, ``k`` being the
        number of (attack, FPR) points tested (Bonferroni), so that the chance of any false
        violation is at most ``significance``. The bounds are percentiles of the two-stage
        bootstrap (class docstring)."""
        tests = len(self.rocs) * len(fprs)
        level = significance / (2 * tests)
        out = []
        for attack, roc in self.rocs.items():
            points = [roc.tpr_at(f, confidence=1.0 - 2 * level) for f in fprs]
            lows = [p.tpr_lower for p in points]
            highs = [p.fpr_upper for p in points]
            if self._bootstrap():
                cut = [p.threshold for p in points]

                def rates_at_cuts(r: Roc, cut: list[float] = cut) -> list[float]:
                    return [x for c in cut for x in _rates_at(r, c)]

                rates = self._resampled(attack, rates_at_cuts)
                lows = list(np.quantile(rates[:, 1::2], level, axis=0))
                highs = list(np.quantile(rates[:, 0::2], 1.0 - level, axis=0))
            for target, low, fpr_high in zip(fprs, lows, highs, strict=True):
                bound = float(limit(float(fpr_high)))
                if low > bound:
                    out.append((attack, target, float(low), bound))
        return out

    def dp_bound_violations(
        self,
        *,
        epsilon: float,
        delta: float,
        fprs: tuple[float, ...] = (0.001, 0.01, 0.1),
        significance: float = 0.05,
    ) -> list[tuple[Attack, float, float, float]]:
        """:meth:`limit_violations` against the ``(epsilon, delta)``-DP limit
        ``TPR <= min(e^ε · FPR + δ, 1 − e^{−ε}(1 − δ − FPR))``.

        The limit is read at the upper bound of the threshold's FPR: the empirical FPR of a
        threshold picked for the best TPR is itself an estimate, and with a few false positives
        in thousands it can be well below the true rate."""

        def limit(fpr: float) -> float:
            return float(dp_tpr_limit(fpr, epsilon=epsilon, delta=delta))

        return self.limit_violations(limit, fprs=fprs, significance=significance)


def _redraw(values: FloatArray, gen: np.random.Generator) -> FloatArray:
    """A bootstrap resample (with replacement) of one target's records."""
    return values[gen.integers(0, values.size, values.size)]


def _rates_at(roc: Roc, threshold: float) -> tuple[float, float]:
    """``(fpr, tpr)`` of guessing "member" for scores at or above ``threshold``."""
    i = int(np.searchsorted(-roc.thresholds, -threshold, side="right")) - 1
    return float(roc.fpr[max(i, 0)]), float(roc.tpr[max(i, 0)])


def _partner(keep: BoolArray, t: int) -> int | None:
    """The model trained on exactly the records model ``t`` left out, if there is one."""
    for j in range(keep.shape[0]):
        if j != t and np.array_equal(keep[j], ~keep[t]):
            return j
    return None


def membership_audit(shadows: ShadowModels, *, targets: int | None = None) -> MembershipAudit:
    """Run every :class:`Attack` with each of the first ``targets`` models (default: all) as the
    target and the remaining models, except the target's complementary partner (the model
    trained on exactly the records the target left out), as its shadows; pool the scores into one
    ROC per attack. RMIA runs when the shadow models carry held-out ``reference`` confidences.
    A target and its partner form one independent unit of the bootstrap intervals."""
    m = shadows.models
    count = m if targets is None else targets
    if not 1 <= count <= m:
        raise ConfigurationError(f"targets must be between 1 and {m}, got {targets!r}")
    if m < 4:
        raise ConfigurationError("need at least 4 models (a target, its partner and a pair)")
    pooled: dict[Attack, tuple[list[FloatArray], list[FloatArray]]] = {}
    units: list[int] = []
    for t in range(count):
        partner = _partner(shadows.keep, t)
        units.append(t if partner is None else min(t, partner))
        others = np.arange(m) != t
        if partner is not None:
            others[partner] = False
        target = shadows.confidences[t]
        member = shadows.keep[t]
        shadow = shadows.confidences[others]
        keep = shadows.keep[others]
        scores = {
            Attack.LOSS: target,
            Attack.LIRA_OFFLINE: lira_offline(target, shadow, keep),
            Attack.LIRA_ONLINE: lira_online(target, shadow, keep),
        }
        if shadows.reference is not None and shadows.reference.shape[1]:
            scores[Attack.RMIA] = rmia(
                target, shadow, shadows.reference[t], shadows.reference[others]
            )
        for attack, s in scores.items():
            pos, neg = pooled.setdefault(attack, ([], []))
            pos.append(s[member])
            neg.append(s[~member])
    rocs = {
        a: Roc.from_scores(np.concatenate(pos), np.concatenate(neg))
        for a, (pos, neg) in pooled.items()
    }
    acc = shadows.accuracy[~np.isnan(shadows.accuracy)]
    return MembershipAudit(
        rocs=rocs,
        targets=count,
        shadow_models=int(others.sum()),
        records=int(shadows.keep.shape[1]),
        mean_accuracy=float(acc.mean()) if acc.size else math.nan,
        scores={a: tuple(zip(pos, neg, strict=True)) for a, (pos, neg) in pooled.items()},
        units=tuple(units),
    )
