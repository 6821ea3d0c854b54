"""Linear models for encrypted scoring: trained in the clear with scikit-learn, saved to a model
file, and the feature encoding that client and server share.

A model file is JSON in two parts. The *public* part (:meth:`LinearModel.public_spec`) is what a
client needs to prepare a query: the columns, how each is encoded (numbers standardised,
categories one-hot then standardised) and the sigmoid polynomial of the probability mode. The
*private* part is the weights and the bias, which only the server reads. A client that encodes
its rows with the public part and a server that holds the weights compute the same logit
``z = w . x + b`` as the clear model.
"""

from __future__ import annotations

import csv
import dataclasses
import enum
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from veil.errors import ConfigurationError, DataError, MissingDependencyError
from veil.he.sigmoid import FitMethod, SigmoidPolynomial, fit_sigmoid, sigmoid

__all__ = [
    "FeatureEncoder",
    "LinearModel",
    "ModelKind",
    "read_rows",
    "scorecard_model",
    "train_model",
]

FORMAT = "veil-he-model"
VERSION = 1


class ModelKind(enum.Enum):
    LOGISTIC = "logistic"
    LINEAR = "linear"


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """The rows of a CSV file with a header, as dictionaries of strings (UTF-8, with or without
    the byte order mark spreadsheets write)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path} is not a readable CSV file: {exc}") from None
    if not rows:
        raise DataError(f"{path} has no data rows")
    return rows


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True)
class FeatureEncoder:
    """Numbers standardised; categories one-hot (one column per category seen in training),
    then standardised. ``means`` and ``scales`` are over the encoded columns."""

    numeric: tuple[str, ...]
    categorical: dict[str, tuple[str, ...]]
    means: tuple[float, ...]
    scales: tuple[float, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        return self.numeric + tuple(self.categorical)

    @property
    def feature_names(self) -> list[str]:
        names = list(self.numeric)
        for col, cats in self.categorical.items():
            names += [f"{col}={c}" for c in cats]
        return names

    @property
    def width(self) -> int:
        return len(self.numeric) + sum(len(c) for c in self.categorical.values())

    @classmethod
    def fit(cls, rows: Sequence[Mapping[str, str]], columns: Sequence[str]) -> FeatureEncoder:
        numeric: list[str] = []
        categorical: dict[str, tuple[str, ...]] = {}
        for col in columns:
            values = [r[col] for r in rows]
            if all(_is_number(v) for v in values):
                numeric.append(col)
            else:
                categorical[col] = tuple(sorted(set(values)))
        raw = cls(tuple(numeric), categorical, (), ())._raw(rows)
        means = raw.mean(axis=0)
        scales = raw.std(axis=0)
        scales[scales == 0] = 1.0
        return cls(tuple(numeric), categorical, tuple(means.tolist()), tuple(scales.tolist()))

    def _raw(self, rows: Iterable[Mapping[str, str]]) -> npt.NDArray[np.float64]:
        out: list[list[float]] = []
        for i, row in enumerate(rows, start=1):
            vec: list[float] = []
            for col in self.numeric:
                text = row.get(col)
                if text is None:
                    raise DataError(f"row {i} has no column {col!r}")
                if not _is_number(text):
                    raise DataError(f"row {i}: {col} must be a number, found {text!r}")
                vec.append(float(text))
            for col, cats in self.categorical.items():
                text = row.get(col)
                if text is None:
                    raise DataError(f"row {i} has no column {col!r}")
                if text not in cats:
                    raise DataError(
                        f"row {i}: {col} is {text!r}, which the model did not see in training; "
                        f"expected one of: {', '.join(repr(c) for c in cats)}"
                    )
                vec += [1.0 if text == c else 0.0 for c in cats]
            out.append(vec)
        return np.asarray(out, dtype=np.float64).reshape(len(out), self.width)

    def encode(self, rows: Iterable[Mapping[str, str]]) -> npt.NDArray[np.float64]:
        """The standardised feature matrix (one row per input row)."""
        raw = self._raw(rows)
        out: npt.NDArray[np.float64] = (raw - np.asarray(self.means)) / np.asarray(self.scales)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "numeric": list(self.numeric),
            "categorical": {k: list(v) for k, v in self.categorical.items()},
            "means": list(self.means),
            "scales": list(self.scales),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureEncoder:
        enc = cls(
            numeric=tuple(str(c) for c in data["numeric"]),
            categorical={str(k): tuple(str(c) for c in v) for k, v in data["categorical"].items()},
            means=tuple(float(m) for m in data["means"]),
            scales=tuple(float(s) for s in data["scales"]),
        )
        if len(enc.means) != enc.width or len(enc.scales) != enc.width:
            raise ValueError("means and scales do not match the encoded width")
        return enc


@dataclasses.dataclass(frozen=True)
class LinearModel:
    """``z = weights . encode(row) + bias``; for a logistic model the score is ``sigma(z)``."""

    kind: ModelKind
    target: str
    positive: str | None
    encoder: FeatureEncoder
    weights: tuple[float, ...]
    bias: float
    logit_range: tuple[float, float]
    """Smallest and largest ``z`` on the training data."""
    sigmoid: SigmoidPolynomial | None
    metrics: dict[str, float]

    @property
    def features(self) -> int:
        return self.encoder.width

    def logits(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """The clear model on encoded features: the floor every encrypted result is held to."""
        return np.asarray(x @ np.asarray(self.weights) + self.bias, dtype=np.float64)

    def scores(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        z = self.logits(x)
        return sigmoid(z) if self.kind is ModelKind.LOGISTIC else z

    @property
    def score_bound(self) -> float | None:
        """Eight times the largest score on the training data: what batch scoring must be able to
        represent (``None`` when the training range is unknown, as for a scorecard)."""
        lo, hi = self.logit_range
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return None
        return 8.0 * max(abs(lo), abs(hi), 1.0)

    def public_spec(self) -> dict[str, Any]:
        """What a client may know: everything but the weights and the bias."""
        return {
            "format": FORMAT + "-public",
            "version": VERSION,
            "kind": self.kind.value,
            "target": self.target,
            "positive": self.positive,
            "encoder": self.encoder.to_dict(),
            "features": self.features,
            "score_bound": self.score_bound,
            "sigmoid": None if self.sigmoid is None else self.sigmoid.to_dict(),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "kind": self.kind.value,
            "target": self.target,
            "positive": self.positive,
            "encoder": self.encoder.to_dict(),
            "weights": list(self.weights),
            "bias": self.bias,
            "logit_range": list(self.logit_range),
            "sigmoid": None if self.sigmoid is None else self.sigmoid.to_dict(),
            "metrics": self.metrics,
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> LinearModel:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigurationError(f"model file {path} does not exist") from None
        except (ValueError, UnicodeDecodeError):
            raise ConfigurationError(f"{path} is not a veil model file (not JSON)") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ConfigurationError(
                f"{path} is not a veil model file; make one with `veil he train`"
            )
        try:
            model = cls(
                kind=ModelKind(data["kind"]),
                target=str(data["target"]),
                positive=data.get("positive"),
                encoder=FeatureEncoder.from_dict(data["encoder"]),
                weights=tuple(float(w) for w in data["weights"]),
                bias=float(data["bias"]),
                logit_range=(float(data["logit_range"][0]), float(data["logit_range"][1])),
                sigmoid=None
                if data.get("sigmoid") is None
                else SigmoidPolynomial.from_dict(data["sigmoid"]),
                metrics={str(k): float(v) for k, v in data.get("metrics", {}).items()},
            )
        except (KeyError, TypeError, ValueError, AssertionError):
            raise ConfigurationError(f"{path} is a damaged veil model file") from None
        if len(model.weights) != model.features:
            raise ConfigurationError(f"{path}: weights do not match the encoded features")
        return model


def train_model(
    rows: Sequence[Mapping[str, str]],
    *,
    target: str,
    kind: ModelKind = ModelKind.LOGISTIC,
    positive: str | None = None,
    degree: int = 7,
    method: FitMethod = FitMethod.CHEBYSHEV,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[LinearModel, list[dict[str, str]]]:
    """Train on ``rows`` (all columns but ``target`` are features); returns the model and the
    held-out test rows. A logistic model also gets its sigmoid polynomial, fitted to the range
    of its training logits widened by 10%."""
    try:
        from sklearn.linear_model import LinearRegression, LogisticRegression
        from sklearn.model_selection import train_test_split
    except ImportError as exc:
        raise MissingDependencyError("scikit-learn", "he") from exc
    if not rows or target not in rows[0]:
        found = ", ".join(rows[0]) if rows else "no columns"
        raise DataError(f"target column {target!r} is not in the data (columns: {found})")
    if not 0 < test_fraction < 1:
        raise ConfigurationError(f"test fraction must be in (0, 1); got {test_fraction}")
    columns = [c for c in rows[0] if c != target]
    labels = [r[target] for r in rows]
    if kind is ModelKind.LOGISTIC:
        classes = sorted(set(labels))
        if len(classes) != 2:
            raise DataError(
                f"a logistic model needs a target with two classes; {target} has {len(classes)}"
            )
        if positive is None:
            positive = "1" if classes == ["0", "1"] else classes[-1]
        if positive not in classes:
            raise ConfigurationError(
                f"positive class {positive!r} is not one of {target}'s classes {classes}"
            )
        y = np.array([1 if v == positive else 0 for v in labels])
    else:
        if not all(_is_number(v) for v in labels):
            raise DataError(f"a linear model needs a numeric target; {target} is not")
        y = np.array([float(v) for v in labels])
        positive = None
    idx = np.arange(len(rows))
    train_idx, test_idx = train_test_split(
        idx,
        test_size=test_fraction,
        random_state=seed,
        stratify=y if kind is ModelKind.LOGISTIC else None,
    )
    train_rows = [rows[i] for i in train_idx]
    test_rows = [rows[i] for i in test_idx]
    encoder = FeatureEncoder.fit(train_rows, columns)
    x_train, x_test = encoder.encode(train_rows), encoder.encode(test_rows)
    if kind is ModelKind.LOGISTIC:
        clf = LogisticRegression(C=1.0, max_iter=5000)
        clf.fit(x_train, y[train_idx])
        weights, bias = clf.coef_[0], float(clf.intercept_[0])
    else:
        reg = LinearRegression()
        reg.fit(x_train, y[train_idx])
        weights, bias = np.asarray(reg.coef_), float(reg.intercept_)
    z_train = x_train @ weights + bias
    z_test = x_test @ weights + bias
    metrics: dict[str, float] = {"train_rows": float(len(train_rows))}
    metrics["test_rows"] = float(len(test_rows))
    poly = None
    if kind is ModelKind.LOGISTIC:
        metrics["test_accuracy"] = float(np.mean((z_test > 0) == (y[test_idx] == 1)))
        radius = 1.1 * float(np.max(np.abs(z_train)))
        poly = fit_sigmoid(radius=radius, degree=degree, method=method)
    else:
        resid = z_test - y[test_idx]
        metrics["test_rmse"] = float(np.sqrt(np.mean(resid**2)))
    model = LinearModel(
        kind=kind,
        target=target,
        positive=positive,
        encoder=encoder,
        weights=tuple(float(w) for w in weights),
        bias=bias,
        logit_range=(float(z_train.min()), float(z_train.max())),
        sigmoid=poly,
        metrics=metrics,
    )
    return model, test_rows


def scorecard_model(
    *,
    points: Mapping[str, Mapping[str, float]],
    per_unit: Mapping[str, float] | None = None,
    base: float = 0.0,
    kind: ModelKind = ModelKind.LINEAR,
    logit_range: tuple[float, float] | None = None,
    degree: int = 7,
    target: str = "score",
) -> LinearModel:
    """A model file for a scorecard built elsewhere: ``score = base + sum of the points of each
    attribute's category + sum of per_unit[col] * value``. Features are not standardised (a
    scorecard's points apply to raw values). For ``kind=LOGISTIC`` the score is a log-odds and
    ``logit_range`` (the scores the card can produce) sets the sigmoid polynomial's interval."""
    per_unit = dict(per_unit or {})
    if not points and not per_unit:
        raise ConfigurationError("a scorecard needs points for at least one attribute")
    for col, cats in points.items():
        if not cats:
            raise ConfigurationError(f"scorecard attribute {col!r} has no categories")
    numeric = tuple(per_unit)
    categorical = {col: tuple(cats) for col, cats in points.items()}
    width = len(numeric) + sum(len(c) for c in categorical.values())
    encoder = FeatureEncoder(numeric, categorical, (0.0,) * width, (1.0,) * width)
    weights = [float(per_unit[c]) for c in numeric]
    for col, cats in points.items():
        weights += [float(cats[c]) for c in categorical[col]]
    if not all(math.isfinite(w) for w in [*weights, base]):
        raise ConfigurationError("scorecard points must be finite numbers")
    poly = None
    if kind is ModelKind.LOGISTIC:
        if logit_range is None:
            raise ConfigurationError(
                "a logistic scorecard needs logit_range, the log-odds its scores span"
            )
        poly = fit_sigmoid(
            radius=1.1 * max(abs(logit_range[0]), abs(logit_range[1])), degree=degree
        )
    lo_hi = logit_range or (float("nan"), float("nan"))
    return LinearModel(
        kind=kind,
        target=target,
        positive="1" if kind is ModelKind.LOGISTIC else None,
        encoder=encoder,
        weights=tuple(weights),
        bias=float(base),
        logit_range=(float(lo_hi[0]), float(lo_hi[1])),
        sigmoid=poly,
        metrics={},
    )
