"""Metrics for risk models: family deviances, D², RMSE/MAE, Lorenz-curve Gini, actual/expected by decile.

All functions take the observed target ``y`` and the predicted mean ``mu`` on the target's own scale
(for a count with exposure, ``mu`` is the expected count ``exposure * rate``), so deviances are
exposure-aware without extra arguments. Optional ``weight`` multiplies each row's unit deviance.
Summed deviances come from ``sklearn.metrics`` (``mean_poisson_deviance``, ``mean_gamma_deviance``,
``mean_tweedie_deviance``, ``mean_squared_error``, ``log_loss``); :func:`unit_deviance` gives the per-row
terms (which scikit-learn does not expose) for the same formulas.
"""

from __future__ import annotations

import numpy as np

from geoembed.errors import InputError

FAMILIES = ("poisson", "gamma", "tweedie", "gaussian", "binomial")
_EPS = 1e-12


def _xlogy_ratio(y: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """y * log(y / mu) with the limit 0 at y = 0."""
    out = np.zeros_like(mu, dtype=float)
    pos = y > 0
    out[pos] = y[pos] * np.log(y[pos] / mu[pos])
    return out


def unit_deviance(y, mu, family: str, power: float = 1.5) -> np.ndarray:
    """Per-row unit deviance d(y, mu) of ``family`` (Tweedie uses ``power`` in (1, 2)).

    poisson: 2 (y log(y/mu) - (y - mu)); gamma: 2 (-log(y/mu) + (y - mu)/mu);
    tweedie: 2 (y^(2-p)/((1-p)(2-p)) - y mu^(1-p)/(1-p) + mu^(2-p)/(2-p)); gaussian: (y - mu)^2;
    binomial: 2 (y log(y/mu) + (1-y) log((1-y)/(1-mu))).
    """
    y = np.asarray(y, dtype=float)
    mu = np.asarray(mu, dtype=float)
    if family == "gaussian":
        return (y - mu) ** 2
    if family == "poisson":
        mu = np.maximum(mu, _EPS)
        return 2.0 * (_xlogy_ratio(y, mu) - (y - mu))
    if family == "gamma":
        mu = np.maximum(mu, _EPS)
        return 2.0 * (-np.log(y / mu) + (y - mu) / mu)
    if family == "tweedie":
        p = float(power)
        if p in (1.0, 2.0):
            return unit_deviance(y, mu, "poisson" if p == 1.0 else "gamma")
        mu = np.maximum(mu, _EPS)
        return 2.0 * (np.power(y, 2 - p) / ((1 - p) * (2 - p)) - y * np.power(mu, 1 - p) / (1 - p)
                      + np.power(mu, 2 - p) / (2 - p))
    if family == "binomial":
        mu = np.clip(mu, _EPS, 1 - _EPS)
        return 2.0 * (_xlogy_ratio(y, mu) + _xlogy_ratio(1 - y, 1 - mu))
    raise InputError(f"unknown family {family!r}; use one of {list(FAMILIES)}")


def mean_deviance(y, mu, family: str, power: float = 1.5, weight=None) -> float:
    """Weighted mean unit deviance through ``sklearn.metrics`` (means clipped to (0, inf) or (0, 1))."""
    from sklearn import metrics

    y = np.asarray(y, dtype=float)
    mu = np.asarray(mu, dtype=float)
    if family == "gaussian":
        return float(metrics.mean_squared_error(y, mu, sample_weight=weight))
    if family == "binomial":
        mu = np.clip(mu, _EPS, 1 - _EPS)
        return 2.0 * float(metrics.log_loss(y, mu, sample_weight=weight, labels=[0.0, 1.0]))
    if family not in FAMILIES:
        raise InputError(f"unknown family {family!r}; use one of {list(FAMILIES)}")
    mu = np.maximum(mu, _EPS)
    if family == "poisson":
        return float(metrics.mean_poisson_deviance(y, mu, sample_weight=weight))
    if family == "gamma":
        return float(metrics.mean_gamma_deviance(y, mu, sample_weight=weight))
    return float(metrics.mean_tweedie_deviance(y, mu, sample_weight=weight, power=float(power)))


def deviance(y, mu, family: str, power: float = 1.5, weight=None) -> float:
    """Summed (optionally weighted) unit deviance: :func:`mean_deviance` times the total weight."""
    total = float(np.sum(weight)) if weight is not None else float(np.size(y))
    if total == 0:
        return 0.0
    return mean_deviance(y, mu, family, power, weight) * total


def deviance_scorer(family: str = "poisson", power: float = 1.5):
    """A scikit-learn scorer: minus the mean deviance of ``family`` (greater is better), e.g. for
    ``GridSearchCV(scoring=deviance_scorer("tweedie", 1.5))``; predictions are means on y's scale."""
    from sklearn.metrics import make_scorer

    def neg_mean_deviance(y_true, y_pred, sample_weight=None):
        return mean_deviance(y_true, y_pred, family, power, sample_weight)

    return make_scorer(neg_mean_deviance, greater_is_better=False)


def rmse(y, mu) -> float:
    """Root mean squared error on the target scale."""
    y, mu = np.asarray(y, float), np.asarray(mu, float)
    return float(np.sqrt(np.mean((y - mu) ** 2)))


def mae(y, mu) -> float:
    """Mean absolute error on the target scale."""
    y, mu = np.asarray(y, float), np.asarray(mu, float)
    return float(np.mean(np.abs(y - mu)))


def lorenz_curve(y, mu, exposure=None) -> tuple[np.ndarray, np.ndarray]:
    """Lorenz curve: rows ordered by predicted rate ``mu / exposure`` ascending (ties keep input order).

    Returns (cumulative exposure share, cumulative actual share), both starting at 0 and ending at 1.
    """
    y = np.asarray(y, dtype=float)
    mu = np.asarray(mu, dtype=float)
    e = np.ones_like(y) if exposure is None else np.asarray(exposure, dtype=float)
    order = np.argsort(mu / e, kind="stable")
    ce = np.concatenate([[0.0], np.cumsum(e[order])])
    cy = np.concatenate([[0.0], np.cumsum(y[order])])
    if ce[-1] <= 0 or cy[-1] == 0:
        return ce / max(ce[-1], _EPS), np.linspace(0, 1, len(ce))
    return ce / ce[-1], cy / cy[-1]


def gini(y, mu, exposure=None, normalize: bool = False) -> float:
    """Gini = 1 - 2 x (area under the Lorenz curve), trapezoid rule, exposure-weighted.

    Ordered by predicted rate ascending, so a model that ranks risks well has its Lorenz curve below the
    diagonal and a positive Gini. ``normalize`` divides by the Gini of the oracle ordering (by ``y``).
    """
    x, c = lorenz_curve(y, mu, exposure)
    g = 1.0 - 2.0 * float(np.trapezoid(c, x))
    if normalize:
        g_max = gini(y, np.asarray(y, float), exposure, normalize=False)
        return g / g_max if g_max != 0 else float("nan")
    return g


def decile_index(mu, exposure=None, n_bins: int = 10) -> np.ndarray:
    """Bin of each row (0..n_bins-1) by predicted rate, bins of equal exposure.

    A row's bin is set by the exposure-midpoint of its position in the sorted order, so with unit
    exposure and n divisible by ``n_bins`` each bin holds n / n_bins rows.
    """
    mu = np.asarray(mu, dtype=float)
    e = np.ones_like(mu) if exposure is None else np.asarray(exposure, dtype=float)
    order = np.argsort(mu / e, kind="stable")
    cum = np.cumsum(e[order])
    mid = (cum - e[order] / 2.0) / cum[-1]
    bins = np.empty(len(mu), dtype=np.int64)
    bins[order] = np.clip(np.floor(mid * n_bins).astype(np.int64), 0, n_bins - 1)
    return bins


def actual_expected_by_decile(y, mu, exposure=None, n_bins: int = 10) -> np.ndarray:
    """Actual / expected (sum y / sum mu) in each predicted-rate decile; NaN for an empty bin."""
    y = np.asarray(y, dtype=float)
    mu = np.asarray(mu, dtype=float)
    b = decile_index(mu, exposure, n_bins)
    act = np.bincount(b, weights=y, minlength=n_bins)
    exp = np.bincount(b, weights=mu, minlength=n_bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(exp > 0, act / np.where(exp > 0, exp, 1.0), np.nan)


def score(y, mu, mu_null, family: str, power: float = 1.5, exposure=None) -> dict:
    """All metrics of one prediction against the exposure-only prediction ``mu_null``."""
    dev = deviance(y, mu, family, power)
    dev0 = deviance(y, mu_null, family, power)
    return {
        "deviance": dev,
        "null_deviance": dev0,
        "deviance_ratio": dev / dev0 if dev0 > 0 else float("nan"),
        "rmse": rmse(y, mu),
        "mae": mae(y, mu),
        "gini": gini(y, mu, exposure),
        "gini_normalized": gini(y, mu, exposure, normalize=True),
    }
