"""What the three estimators share: family and link handling, the exposure column, column roles, the
``ColumnTransformer`` that prepares linear terms, and the scikit-learn plumbing (``score``, fitted checks).

Exposure is a column of ``X`` named by the ``exposure`` parameter, so that it reaches ``fit`` and
``predict`` through every scikit-learn tool (``clone``, ``GridSearchCV``, ``cross_val_predict``,
``Pipeline``): the models use ``log(exposure)`` as an offset and predict the mean of ``y`` for that
exposure (counts, not rates). Other columns of ``X`` that no role names are ignored.
"""

from __future__ import annotations

import contextlib
import logging
import warnings

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from geoembed.config.evaluate import FAMILY_LINKS  # links each family accepts; the first is the default
from geoembed.errors import GeoembedError, InputError
from geoembed.evaluate.metrics import deviance

log = logging.getLogger(__name__)

UNKNOWN_CATEGORIES = ("error", "most_frequent")


class ModelFitError(GeoembedError):
    """A model could not be fitted (names the model, features and fold)."""


_CONTROLLER = None


def thread_limit(n: int | None):
    """Context that caps BLAS and OpenMP threads at ``n`` (None: no cap). One threadpoolctl controller is
    made once glum is loaded; a fresh ``threadpool_limits`` per fit would rescan the libraries (~20 ms)."""
    global _CONTROLLER
    if n is None:
        return contextlib.nullcontext()
    if _CONTROLLER is None:
        import glum  # noqa: F401  (its OpenMP runtime must be loaded before the scan)
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=n)


# ---------------------------------------------------------------------------------------------- links


def link_fn(link: str, mu: np.ndarray) -> np.ndarray:
    """g(mu) for the log, identity and logit links."""
    mu = np.asarray(mu, dtype=float)
    if link == "log":
        return np.log(np.maximum(mu, 1e-300))
    if link == "logit":
        m = np.clip(mu, 1e-15, 1 - 1e-15)
        return np.log(m / (1 - m))
    return mu


def inverse_link(link: str, eta: np.ndarray) -> np.ndarray:
    """g^-1(eta) for the log, identity and logit links."""
    eta = np.asarray(eta, dtype=float)
    if link == "log":
        return np.exp(np.clip(eta, -700, 700))
    if link == "logit":
        return 1.0 / (1.0 + np.exp(-eta))
    return eta


def glum_family(family: str, power: float = 1.5):
    """The glum family for ``family`` (Tweedie with variance power ``power``)."""
    if family == "tweedie":
        from glum import TweedieDistribution

        return TweedieDistribution(power)
    return {"gaussian": "normal"}.get(family, family)


def sm_family(family: str, link: str, power: float = 1.5):
    """The statsmodels family instance for ``family`` with ``link`` (the exposure-only model, reference tests)."""
    import statsmodels.api as sm

    lk = {"log": sm.families.links.Log, "identity": sm.families.links.Identity,
          "logit": sm.families.links.Logit}[link]()
    if family == "poisson":
        return sm.families.Poisson(link=lk)
    if family == "gamma":
        return sm.families.Gamma(link=lk)
    if family == "tweedie":
        return sm.families.Tweedie(link=lk, var_power=power)
    if family == "gaussian":
        return sm.families.Gaussian(link=lk)
    return sm.families.Binomial(link=lk)


def null_predict(y: np.ndarray, offset: np.ndarray | None, offset_test: np.ndarray | None, family: str,
                 link: str, power: float = 1.5) -> np.ndarray:
    """Exposure-only model: intercept (+ offset) fitted on the training rows, predicted on the test rows.

    Without an offset the intercept-only MLE is mean(y) for every family here; with an offset it is
    fitted by statsmodels (for Poisson it equals log(sum y / sum exposure)).
    """
    if offset is None:
        return np.full(len(offset_test) if offset_test is not None else 0, float(np.mean(y)))
    import statsmodels.api as sm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sm.GLM(y, np.ones((len(y), 1)), family=sm_family(family, link, power), offset=offset).fit()
    return inverse_link(link, float(res.params[0]) + offset_test)


def d2_score(y, mu, family: str, power: float = 1.5, exposure=None, weight=None, link: str = "log") -> float:
    """D² = 1 - D(y, mu) / D(y, mu0), mu0 the exposure-only model (intercept + offset) fitted to (y, exposure).

    Without exposure mu0 is the weighted mean of y, which makes this ``sklearn.metrics.d2_tweedie_score``
    (``d2_log_loss_score`` for binomial) for the family.
    """
    y = np.asarray(y, dtype=float)
    if exposure is None:
        mu0 = np.full(len(y), np.average(y, weights=weight))
    elif family == "poisson" and link == "log":
        e = np.asarray(exposure, dtype=float)
        w = np.ones(len(y)) if weight is None else np.asarray(weight, dtype=float)
        mu0 = e * np.sum(w * y) / np.sum(w * e)
    else:
        off = np.log(np.asarray(exposure, dtype=float))
        mu0 = null_predict(y, off, off, family, link, power)
    dev0 = deviance(y, mu0, family, power, weight)
    return 1.0 - deviance(y, mu, family, power, weight) / dev0 if dev0 > 0 else float("nan")


# ---------------------------------------------------------------------------------------------- columns


class UnseenLevels(TransformerMixin, BaseEstimator):
    """Categorical columns as text, with an explicit rule for levels not seen by ``fit``.

    ``handle_unknown="error"``: ``transform`` raises InputError naming the column, the unseen values and
    rows. ``"most_frequent"``: unseen values become the column's most frequent training level (the level
    a GLM would take as its base), with a warning naming them. ``levels_[col]`` holds the seen levels,
    ``most_frequent_[col]`` the replacement.
    """

    def __init__(self, handle_unknown: str = "error"):
        self.handle_unknown = handle_unknown

    def fit(self, X: pd.DataFrame, y=None) -> UnseenLevels:
        if self.handle_unknown not in UNKNOWN_CATEGORIES:
            raise ValueError(f"handle_unknown must be one of {list(UNKNOWN_CATEGORIES)}, got {self.handle_unknown!r}")
        X = pd.DataFrame(X)
        self.levels_, self.most_frequent_ = {}, {}
        for c in X.columns:
            counts = X[c].astype(str).value_counts()  # by count, ties in order of appearance
            self.levels_[c] = sorted(counts.index)
            self.most_frequent_[c] = counts.index[0]
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        check_is_fitted(self, "levels_")
        X = pd.DataFrame(X)
        out = pd.DataFrame(index=X.index)
        for c in self.feature_names_in_:
            v = X[c].astype(str)
            unseen = ~v.isin(self.levels_[c]).to_numpy()
            if unseen.any():
                vals = sorted(set(v[unseen]))[:5]
                where = f"column {c!r}: level(s) {vals} not seen in training ({int(unseen.sum())} row(s)"
                if self.handle_unknown == "error":
                    rows = ", ".join(str(r) for r in np.flatnonzero(unseen)[:5])
                    raise InputError(f"{where}, positions {rows}); pass handle_unknown='most_frequent' to price "
                                     f"them as the most frequent level {self.most_frequent_[c]!r}")
                log.warning("%s) priced as the most frequent level %r", where, self.most_frequent_[c])
                v = v.where(~unseen, self.most_frequent_[c])
            out[c] = v.to_numpy(dtype=object)
        return out

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        return np.asarray(self.feature_names_in_, dtype=object)


def linear_preprocessor(numeric: list[str], categorical: list[str], handle_unknown: str = "error"):
    """``ColumnTransformer``: numeric columns standardised (training mean and sd), categoricals one-hot with
    the first level (sorted) dropped, unseen levels handled by :class:`UnseenLevels`; other columns dropped."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    parts = []
    if numeric:
        parts.append(("num", StandardScaler(), list(numeric)))
    if categorical:
        onehot = OneHotEncoder(drop="first", sparse_output=False, handle_unknown="error", dtype=float)
        parts.append(("cat", Pipeline([("levels", UnseenLevels(handle_unknown)), ("onehot", onehot)]),
                      list(categorical)))
    return ColumnTransformer(parts, remainder="drop", verbose_feature_names_out=False)


# ---------------------------------------------------------------------------------------------- base


class RiskRegressor(RegressorMixin, BaseEstimator):
    """Common parameters and checks of :class:`GLMRegressor`, :class:`GAMRegressor`, :class:`GBMRegressor`."""

    _roles: tuple[str, ...] = ("numeric", "categorical")

    # ----------------------------------------------------------------------------------- parameters
    def _resolve_link(self) -> str:
        if self.family not in FAMILY_LINKS:
            raise ValueError(f"family must be one of {list(FAMILY_LINKS)}, got {self.family!r}")
        link = self.link or FAMILY_LINKS[self.family][0]
        if link not in FAMILY_LINKS[self.family]:
            raise ValueError(f"link {link!r} is not supported with family {self.family!r}; "
                             f"use one of {list(FAMILY_LINKS[self.family])}")
        if self.exposure is not None and link != "log":
            raise ValueError(f"exposure enters as an offset log(exposure) and needs the log link; link is {link!r}")
        return link

    def _column_roles(self, X: pd.DataFrame) -> dict[str, list]:
        """Columns per role; when no role is given, numeric dtypes are ``numeric`` and the rest ``categorical``
        (a GAM puts numeric columns in ``smooth`` instead), the exposure column excluded."""
        given = {r: getattr(self, r) for r in self._roles}
        if all(v is None for v in given.values()):
            rest = [c for c in X.columns if c != self.exposure]
            num = [c for c in rest if pd.api.types.is_numeric_dtype(X[c])]
            given = {r: [] for r in self._roles}
            given[self._default_numeric_role] = num
            given["categorical"] = [c for c in rest if c not in num]
        roles = {r: list(v) if v is not None else [] for r, v in given.items()}
        self.used_columns_ = list(dict.fromkeys(
            [c for cols in roles.values() for c in cols] + ([self.exposure] if self.exposure else [])))
        self._check_columns(X)
        return roles

    def _check_columns(self, X: pd.DataFrame) -> None:
        missing = [c for c in self.used_columns_ if c not in X.columns]
        if missing:
            raise InputError(f"{type(self).__name__}: X lacks column(s) {missing} (it has {list(X.columns)[:20]})")

    _default_numeric_role = "numeric"

    # ----------------------------------------------------------------------------------- data
    def _frame(self, X, reset: bool) -> pd.DataFrame:
        if not isinstance(X, pd.DataFrame):
            raise InputError(f"{type(self).__name__} selects columns by name and needs a pandas DataFrame; "
                             f"got {type(X).__name__}")
        if reset:
            self.feature_names_in_ = np.asarray(X.columns, dtype=object)
            self.n_features_in_ = int(X.shape[1])
        else:
            self._check_columns(X)
        return X

    def _offset(self, X: pd.DataFrame) -> np.ndarray | None:
        """log(exposure) from the exposure column (InputError naming bad rows), or None."""
        if self.exposure is None:
            return None
        e = pd.to_numeric(X[self.exposure], errors="coerce").to_numpy(dtype=float)
        bad = ~(np.isfinite(e) & (e > 0))
        if bad.any():
            rows = ", ".join(str(r) for r in np.flatnonzero(bad)[:5])
            raise InputError(f"exposure column {self.exposure!r} must be finite and > 0; not so at positions {rows}")
        return np.log(e)

    def _target(self, y, n: int) -> np.ndarray:
        y = np.asarray(y, dtype=float).ravel()
        if len(y) != n:
            raise InputError(f"y has {len(y)} values for {n} rows of X")
        checks = {"poisson": (y >= 0, ">= 0"), "tweedie": (y >= 0, ">= 0"), "gamma": (y > 0, "> 0"),
                  "binomial": (np.isin(y, (0.0, 1.0)), "0 or 1"), "gaussian": (np.isfinite(y), "finite")}
        ok, what = checks[self.family]
        ok = ok & np.isfinite(y)
        if not ok.all():
            rows = ", ".join(str(r) for r in np.flatnonzero(~ok)[:5])
            raise InputError(f"y must be {what} for family {self.family!r}; not so at positions {rows}")
        return y

    @staticmethod
    def _weights(sample_weight, n: int) -> np.ndarray | None:
        if sample_weight is None:
            return None
        w = np.asarray(sample_weight, dtype=float).ravel()
        if len(w) != n or not (np.isfinite(w) & (w >= 0)).all():
            raise InputError("sample_weight must hold one finite value >= 0 per row of X")
        return w

    # ----------------------------------------------------------------------------------- scoring
    def score(self, X: pd.DataFrame, y, sample_weight=None) -> float:
        """D²: the share of the exposure-only model's deviance that the model explains on (X, y).

        The reference is the intercept (+ offset) model fitted to the scored rows themselves, so that,
        without exposure, this equals ``sklearn.metrics.d2_tweedie_score`` for the family. Higher is
        better (1 is a perfect fit, 0 no better than exposure alone), as ``GridSearchCV`` expects.
        """
        check_is_fitted(self)
        mu = self.predict(X)
        e = None if self.exposure is None else np.exp(self._offset(X))
        return d2_score(np.asarray(y, float), mu, self.family, self.power, exposure=e, weight=sample_weight,
                        link=self.link_)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True  # categorical columns may be text
        tags.input_tags.categorical = True
        return tags


def variance(mu: np.ndarray, family: str, power: float = 1.5) -> np.ndarray:
    """Unit variance function V(mu) of ``family``."""
    mu = np.asarray(mu, dtype=float)
    return {"poisson": lambda: mu, "gamma": lambda: mu ** 2, "tweedie": lambda: mu ** power,
            "gaussian": lambda: np.ones_like(mu), "binomial": lambda: mu * (1 - mu)}[family]()


def fisher_weights(mu: np.ndarray, family: str, link: str, power: float = 1.5) -> np.ndarray:
    """IRLS working weights (dmu/deta)^2 / V(mu) at the means ``mu``."""
    mu = np.asarray(mu, dtype=float)
    dmu = {"log": mu, "identity": np.ones_like(mu), "logit": mu * (1 - mu)}[link]
    return dmu ** 2 / np.maximum(variance(mu, family, power), 1e-300)
