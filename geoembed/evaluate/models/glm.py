"""``GLMRegressor``: a generalised linear model solved by glum, exposure as an offset, as a scikit-learn estimator."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.utils.validation import check_is_fitted

from geoembed.evaluate.models.base import (
    ModelFitError,
    RiskRegressor,
    glum_family,
    inverse_link,
    linear_preprocessor,
    thread_limit,
)


def fit_glum(Z: np.ndarray, y: np.ndarray, family: str, link: str, power: float, offset=None, weight=None,
             P2=None, alpha: float = 1.0, max_iter: int = 100, gradient_tol: float = 1e-8, start=None):
    """glum's ``GeneralizedLinearRegressor`` on the design ``Z`` (intercept added, unpenalised).

    glum minimises ``deviance / (2 sum w) + alpha / 2 b' P2 b``; ``P2`` is a vector (diagonal) or a matrix.
    A singular design (collinear columns) is a ModelFitError that says so.
    """
    from glum import GeneralizedLinearRegressor

    model = GeneralizedLinearRegressor(
        family=glum_family(family, power), link=link, alpha=alpha, P2=P2 if P2 is not None else "identity",
        fit_intercept=True, max_iter=max_iter, gradient_tol=gradient_tol, scale_predictors=False,
        start_params=start)
    try:
        return model.fit(Z, y, sample_weight=weight, offset=offset)
    except np.linalg.LinAlgError as err:
        raise ModelFitError(f"the design matrix is singular (collinear columns?): {err}; "
                            "set a ridge penalty (alpha > 0, evaluate glm.ridge)") from None


class GLMRegressor(RiskRegressor):
    """Generalised linear model on standardised numeric columns and one-hot categoricals (glum).

    Parameters
    ----------
    family : "poisson", "gamma", "tweedie", "gaussian" or "binomial".
    link : "log", "identity" or "logit"; None takes the family's default (log, log, log, identity, logit).
    power : Tweedie variance power in (1, 2).
    exposure : name of the exposure column of X (an offset ``log(exposure)``; needs the log link), or None.
    numeric, categorical : columns entering linearly (standardised with the training mean and sd) and as
        one-hot levels (the first sorted level is the base). Both None: numeric dtypes are numeric and the
        other columns categorical (the exposure column excluded).
    handle_unknown : a categorical level not seen by ``fit``: "error" (InputError naming column and value)
        or "most_frequent" (priced as the column's most frequent training level, with a warning).
    alpha : L2 (ridge) penalty ``alpha / 2 ||b||^2`` next to ``deviance / (2 n)`` on the standardised design,
        the intercept unpenalised; 0 is the plain maximum-likelihood GLM.
    max_iter, gradient_tol : glum's IRLS limits.
    num_threads : BLAS / OpenMP threads while fitting (None: the libraries' default). One by default: on
        tables of up to ~10^5 rows threads cost more than they gain, and far more on shared cores.

    Fitted attributes: ``coef_``, ``intercept_`` (on the prepared design), ``feature_names_`` (its columns),
    ``preprocessor_`` (the ``ColumnTransformer``), ``glm_`` (glum's model), ``link_``, ``info_``,
    ``n_features_in_``, ``feature_names_in_``. ``predict`` returns the mean of y for the row's exposure.
    """

    def __init__(self, *, family: str = "poisson", link: str | None = None, power: float = 1.5,
                 exposure: str | None = None, numeric: list[str] | None = None,
                 categorical: list[str] | None = None, handle_unknown: str = "error", alpha: float = 0.0,
                 max_iter: int = 100, gradient_tol: float = 1e-8, num_threads: int | None = 1):
        self.family = family
        self.link = link
        self.power = power
        self.exposure = exposure
        self.numeric = numeric
        self.categorical = categorical
        self.handle_unknown = handle_unknown
        self.alpha = alpha
        self.max_iter = max_iter
        self.gradient_tol = gradient_tol
        self.num_threads = num_threads

    def fit(self, X: pd.DataFrame, y, sample_weight=None) -> GLMRegressor:
        """Fit on the rows of X (a DataFrame holding the role columns and the exposure column)."""
        X = self._frame(X, reset=True)
        self.link_ = self._resolve_link()
        roles = self._column_roles(X)
        y = self._target(y, len(X))
        w = self._weights(sample_weight, len(X))
        off = self._offset(X)
        self.preprocessor_ = linear_preprocessor(roles["numeric"], roles["categorical"], self.handle_unknown)
        Z = np.asarray(self.preprocessor_.fit_transform(X), dtype=float)
        self.feature_names_ = [str(c) for c in self.preprocessor_.get_feature_names_out()]
        # A column constant on the training rows (all zero once standardised) gets coefficient 0, as a
        # minimum-norm solution would give it; with no column left the model is intercept (+ offset) only.
        const = Z.std(axis=0) == 0 if Z.shape[1] else np.zeros(0, bool)
        design = Z if Z.shape[1] else np.zeros((len(X), 1))
        P2 = np.where(const if Z.shape[1] else np.array([True]), 1.0, float(self.alpha))
        with thread_limit(self.num_threads):
            self.glm_ = fit_glum(design, y, self.family, self.link_, self.power, off, w, P2=P2, alpha=1.0,
                                 max_iter=self.max_iter, gradient_tol=self.gradient_tol)
        self.coef_ = np.asarray(self.glm_.coef_, dtype=float)[: Z.shape[1]]
        self.intercept_ = float(self.glm_.intercept_)
        if not (np.all(np.isfinite(self.coef_)) and np.isfinite(self.intercept_)):
            raise ModelFitError("GLM did not converge (non-finite coefficients); try a ridge penalty (alpha > 0)")
        self.info_ = {"n_params": int(Z.shape[1] + 1)}
        return self

    def linear_predictor(self, X: pd.DataFrame) -> np.ndarray:
        """eta = intercept + prepared columns x coefficients (+ log exposure)."""
        check_is_fitted(self, "coef_")
        X = self._frame(X, reset=False)
        Z = np.asarray(self.preprocessor_.transform(X), dtype=float)
        eta = self.intercept_ + (Z @ self.coef_ if Z.shape[1] else 0.0)
        off = self._offset(X)
        return eta + off if off is not None else np.broadcast_to(eta, (len(X),)).astype(float)

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Predicted mean of y for each row (its exposure included)."""
        eta = self.linear_predictor(X)  # checks that the model is fitted
        return inverse_link(self.link_, eta)
