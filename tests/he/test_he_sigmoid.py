"""Sigmoid polynomials: the reported error is the error on the whole range (not looser, not
tighter), the fit beats the textbook cubic on real logit ranges, and bad requests are refused."""

from __future__ import annotations

import numpy as np
import pytest

from veil.errors import ConfigurationError
from veil.he import FitMethod, LinearModel, fit_sigmoid, sigmoid


@pytest.mark.parametrize("method", list(FitMethod))
@pytest.mark.parametrize(("radius", "degree"), [(4.0, 3), (6.6, 7), (29.0, 7), (12.0, 15)])
def test_the_reported_error_bounds_the_whole_interval(
    method: FitMethod, radius: float, degree: int
) -> None:
    poly = fit_sigmoid(radius=radius, degree=degree, method=method)
    assert poly.degree == degree
    z = np.concatenate([np.linspace(-radius, radius, 200_003), [-radius, radius]])
    err = np.abs(poly(z) - sigmoid(z))
    # the bound holds on a grid ten times finer than the one it was measured on ...
    assert err.max() <= poly.max_error * (1 + 1e-3)
    # ... and is attained, so a wrong (inflated) report would fail too
    assert err.max() >= poly.max_error * (1 - 1e-3)


def test_the_fit_on_the_observed_range_beats_the_textbook_cubic(model: LinearModel) -> None:
    assert model.sigmoid is not None
    radius = model.sigmoid.radius
    lo, hi = model.logit_range
    assert radius >= max(-lo, hi)  # the polynomial covers every training logit
    z = np.linspace(-radius, radius, 10_001)
    textbook = 0.5 + 0.197 * z - 0.004 * z**3
    ours = model.sigmoid(z)
    assert np.abs(ours - sigmoid(z)).max() == pytest.approx(model.sigmoid.max_error, rel=1e-3)
    assert np.abs(ours - sigmoid(z)).max() < 0.05
    assert np.abs(textbook - sigmoid(z)).max() > 3 * model.sigmoid.max_error
    # at |z| = 28, a range real models reach, the textbook cubic is not a probability at all
    wide = fit_sigmoid(radius=29.0, degree=3)
    assert 0.5 + 0.197 * 28 - 0.004 * 28**3 < -80
    assert abs(wide(np.array([28.0]))[0] - sigmoid(np.array([28.0]))[0]) <= wide.max_error


def test_higher_degree_is_more_accurate() -> None:
    errors = [fit_sigmoid(radius=8.0, degree=d).max_error for d in (3, 5, 7, 9)]
    assert errors == sorted(errors, reverse=True)


@pytest.mark.parametrize(
    ("radius", "degree", "message"),
    [
        (0.0, 3, "positive and finite"),
        (float("inf"), 3, "positive and finite"),
        (5.0, 4, "must be odd"),
        (5.0, 17, "between 1 and 15"),
    ],
)
def test_bad_fits_are_refused(radius: float, degree: int, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        fit_sigmoid(radius=radius, degree=degree)


def test_sigmoid_does_not_overflow() -> None:
    z = np.array([-1000.0, 0.0, 1000.0])
    assert np.allclose(sigmoid(z), [0.0, 0.5, 1.0])
