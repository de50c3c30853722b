"""``GAMRegressor``: penalised B-spline smooths solved by glum, smoothing chosen by UBRE / GCV.

Smooths. A column in ``smooth`` gets a univariate smooth, the columns of ``tensor`` (lon/lat) one
tensor-product smooth: the row-wise Kronecker product of the margins' bases, penalty
``S_lon (x) I + I (x) S_lat`` (margins scaled to unit trace). A margin is ``df`` cubic B-splines over the
training range, inputs clipped to it (constant extrapolation), of one of two kinds (:class:`Margin`):
``bspline`` (knots at quantiles, repeated at the ends, curvature penalty: statsmodels' ``UnivariateBSplines``,
the default for embedding components, whose distributions are skewed) or ``pspline`` (Eilers & Marx:
equally spaced knots continued beyond the range, second-difference penalty: the default for lon/lat, on
the demo's tracts 0.90-0.95 held-out deviance ratio against 0.97-1.18 with the other kind). Each smooth is
made identifiable by a sum-to-zero constraint on the training rows (basis ``B Z``, penalty ``Z' S Z``, ``Z``
the null space of ``1' B``, as in mgcv).

Penalty. Each smooth's penalty is scaled by ``tr(B' W B) / tr(S)`` (W: the working weights at the
exposure-only fit) so that one multiplier ``alpha`` suits all smooths, plus ``shrinkage x tr(B' W B) / k``
times the identity (a shrinkage smoother as mgcv's "ts": without it the linear part of every smooth is
unpenalised, 64 free slopes for a 64-d embedding). Linear columns and the intercept are unpenalised.

Solver. glum's ``GeneralizedLinearRegressor`` takes the whole penalty as its ``P2`` matrix (with offsets
and every family here, Tweedie included): glum minimises ``D / (2 sum w) + alpha_g / 2 b' P2 b``, i.e. our
``D + alpha b' S b`` with ``P2 = S`` and ``alpha_g = alpha / sum w``. The statsmodels ``GLMGam`` reference test
checks the coefficients at a fixed penalty.

Smoothing. glum has no criterion for the smoothing parameter (its CV search would refit per fold), so
``alpha`` is given or chosen from ``alpha_grid`` on the training rows by UBRE (deviance + 2 scale edf;
Poisson, binomial) or GCV (n D / (n - edf)^2; other families), edf = tr((X'WX + P)^-1 X'WX) at the fit,
going from the smoothest alpha down with warm starts (glum's ``start_params``). ``scale`` is the Pearson
dispersion of the smoothest fit, at least 1 (with scale 1, UBRE on overdispersed counts would always
pick the wiggliest fit).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.utils.validation import check_is_fitted

from geoembed.evaluate.metrics import deviance
from geoembed.evaluate.models.base import (
    ModelFitError,
    RiskRegressor,
    fisher_weights,
    inverse_link,
    linear_preprocessor,
    null_predict,
    thread_limit,
    variance,
)
from geoembed.evaluate.models.glm import GLMRegressor, fit_glum

DEFAULT_ALPHA_GRID = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)


def _sum_to_zero(B: np.ndarray) -> np.ndarray:
    """Null space Z (k x k-1) of the constraint 1' B Z = 0, via QR as in mgcv."""
    c = B.sum(axis=0)[:, None]
    q, _ = np.linalg.qr(c, mode="complete")
    return q[:, 1:]


def difference_penalty(k: int, order: int = 2) -> np.ndarray:
    """``D' D`` for the ``order``-th difference matrix D of ``k`` coefficients (the P-spline penalty)."""
    D = np.diff(np.eye(k), n=order, axis=0)
    return D.T @ D


def derivative_penalty(t: np.ndarray, k: int) -> np.ndarray:
    """``int B''(x) B''(x)' dx`` of the B-splines of degree ``k`` on knots ``t`` (the curvature penalty),
    exact: Gauss-Legendre on each knot interval, where B'' is a polynomial."""
    from scipy.interpolate import BSpline

    n = len(t) - k - 1
    d2 = BSpline(t, np.eye(n), k).derivative(2)
    inner = np.unique(t[k:n + 1])
    nodes, wts = np.polynomial.legendre.leggauss(max(k, 2))
    S = np.zeros((n, n))
    for a, b in zip(inner[:-1], inner[1:], strict=True):
        v = d2((a + b) / 2 + (b - a) / 2 * nodes)
        S += (v.T * (wts * (b - a) / 2)) @ v
    return S


def _psd(S: np.ndarray) -> np.ndarray:
    """``S`` itself when its smallest eigenvalue is at least 1e-10 of its largest, else ``S`` plus the ridge
    that lifts it there. A curvature penalty without shrinkage is singular (constant and linear directions),
    and rounding puts those eigenvalues at about -1e-13 x its scale, which glum's positive semi-definiteness
    check (an absolute -1e-15) refuses; a ridge of 1e-10 of the penalty's scale changes no fit measurably."""
    vals = np.linalg.eigvalsh(S)
    floor = 1e-10 * max(float(vals.max()), 0.0)
    if vals.min() >= floor:
        return S
    return S + (floor - float(vals.min())) * np.eye(len(S))


BASES = ("bspline", "pspline")


class Margin:
    """B-splines of one column: ``df`` functions of degree ``degree`` over [min, max] of the fit rows; inputs
    are clipped to that range (constant extrapolation).

    ``basis="bspline"``: interior knots at quantiles, boundary knots repeated, curvature penalty
    ``int B'' B''`` (statsmodels' ``UnivariateBSplines`` and its ``cov_der2``, to rounding).
    ``basis="pspline"``: equally spaced knots continued beyond the range (Eilers & Marx's P-splines, as
    scikit-learn's ``SplineTransformer(knots="uniform")``), second-difference penalty ``D2' D2``.
    """

    def __init__(self, df: int, degree: int, basis: str = "bspline"):
        if basis not in BASES:
            raise ValueError(f"basis must be one of {list(BASES)}, got {basis!r}")
        self.df, self.degree, self.basis = df, degree, basis

    def fit(self, x: np.ndarray) -> Margin:
        lo, hi = float(np.min(x)), float(np.max(x))
        if hi <= lo:  # a constant column still gets a valid basis
            hi = lo + 1.0
        k, n_int = self.degree, self.df - self.degree  # knot intervals over [lo, hi]
        self.lo_, self.hi_ = lo, hi
        if self.basis == "bspline":
            inner = np.quantile(x, np.linspace(0, 1, n_int + 1)[1:-1])
            self.t_ = np.r_[[lo] * (k + 1), inner, [hi] * (k + 1)]
            self.S_ = derivative_penalty(self.t_, k)
        else:
            self.t_ = lo + (hi - lo) / n_int * np.arange(-k, n_int + k + 1)
            self.S_ = difference_penalty(self.df)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        from scipy.interpolate import BSpline

        x = np.clip(np.asarray(x, dtype=float), self.lo_, self.hi_)
        return BSpline.design_matrix(x, self.t_, self.degree).toarray()


class Smooth:
    """One penalised smooth of ``columns``: a B-spline smooth, or the tensor product of several (sum-to-zero).

    After ``fit(X)``: ``basis`` (training rows, constrained), ``cov_der2`` (its penalty ``Z' S Z``, the name
    statsmodels' ``GLMGam`` reads), ``dim_basis``, ``nobs``; ``transform(X)`` gives the basis of other rows.
    """

    def __init__(self, columns: list[str], df: int, degree: int, basis: str = "bspline"):
        if df < degree + 1 or df < 3:
            raise ValueError(f"a smooth needs df >= max(degree + 1, 3) basis functions; got df={df}, degree={degree}")
        self.columns = list(columns)
        self.df = df
        self.degree = degree
        self.basis_kind = basis

    def _raw(self, X: pd.DataFrame) -> np.ndarray:
        B = None
        for c, m in zip(self.columns, self.margins_, strict=True):
            b = m.transform(X[c].to_numpy(dtype=float))
            B = b if B is None else (B[:, :, None] * b[:, None, :]).reshape(len(b), -1)
        return B

    def fit(self, X: pd.DataFrame) -> Smooth:
        self.margins_ = [Margin(self.df, self.degree, self.basis_kind).fit(X[c].to_numpy(dtype=float))
                         for c in self.columns]
        margins = [m.S_ / max(np.trace(m.S_), 1e-300) for m in self.margins_]
        k = len(self.columns)
        S = 0.0
        for j in range(k):
            K = np.ones((1, 1))
            for i in range(k):
                K = np.kron(K, margins[j] if i == j else np.eye(self.df))
            S = S + K
        B = self._raw(X)
        self.Z_ = _sum_to_zero(B)
        self.cov_der2 = self.Z_.T @ S @ self.Z_
        self.dim_basis = self.Z_.shape[1]
        self.nobs = len(X)
        self.basis = B @ self.Z_
        return self

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        return self._raw(X) @ self.Z_


class SmootherSet:
    """The additive smoother statsmodels ``GLMGam`` takes (basis, smoothers with dim_basis and cov_der2,
    col_names): lets the same smooths be fitted by GLMGam, the reference the tests compare glum with."""

    def __init__(self, smooths: list[Smooth], nobs: int):
        self.smoothers = smooths
        self.k_variables = len(smooths)
        self.basis = np.hstack([s.basis for s in smooths])
        self.dim_basis = self.basis.shape[1]
        self.nobs = nobs
        self.col_names = [f"s({'*'.join(s.columns)})_{i}" for s in smooths for i in range(s.dim_basis)]


class GAMRegressor(RiskRegressor):
    """GAM: linear columns + categoricals + a P-spline per ``smooth`` column + a tensor smooth of ``tensor``.

    Parameters
    ----------
    family, link, power, exposure, handle_unknown : as :class:`GLMRegressor`.
    numeric, categorical : linear (standardised) and one-hot columns, unpenalised.
    smooth : columns that each get a univariate smooth (e.g. the embedding components).
    tensor : columns of one tensor-product smooth (e.g. ``("lon", "lat")``), or None.
        With numeric, categorical, smooth and tensor all None, numeric dtypes are smooth and the other
        columns categorical. Without any smooth term the model is a :class:`GLMRegressor`.
    df, tensor_df, degree : basis functions per univariate smooth and per tensor margin; spline degree.
    smooth_basis, tensor_basis : "bspline" or "pspline" margins (module doc) of the two kinds of smooth.
    alpha : the penalty multiplier, or None to choose it from ``alpha_grid`` by UBRE / GCV (module doc).
    shrinkage : ridge added to each smooth's penalty, relative to it (0 disables).
    max_iter, gradient_tol, num_threads : as :class:`GLMRegressor`.

    Fitted attributes: ``coef_``, ``intercept_``, ``alpha_`` (chosen multiplier), ``edf_``, ``smooths_``,
    ``preprocessor_``, ``gam_`` (glum's model), ``link_``, ``info_`` (alpha, edf, scale, criterion per alpha),
    ``n_features_in_``, ``feature_names_in_``.
    """

    _roles = ("numeric", "categorical", "smooth", "tensor")
    _default_numeric_role = "smooth"

    def __init__(self, *, family: str = "poisson", link: str | None = None, power: float = 1.5,
                 exposure: str | None = None, numeric: list[str] | None = None,
                 categorical: list[str] | None = None, smooth: list[str] | None = None,
                 tensor: tuple[str, ...] | None = None, handle_unknown: str = "error", df: int = 6,
                 tensor_df: int = 6, degree: int = 3, smooth_basis: str = "bspline",
                 tensor_basis: str = "pspline", alpha: float | None = None,
                 alpha_grid: tuple[float, ...] = DEFAULT_ALPHA_GRID, shrinkage: float = 0.1,
                 max_iter: int = 100, gradient_tol: float = 1e-8, num_threads: int | None = 1):
        self.family = family
        self.link = link
        self.power = power
        self.exposure = exposure
        self.numeric = numeric
        self.categorical = categorical
        self.smooth = smooth
        self.tensor = tensor
        self.handle_unknown = handle_unknown
        self.df = df
        self.tensor_df = tensor_df
        self.degree = degree
        self.smooth_basis = smooth_basis
        self.tensor_basis = tensor_basis
        self.alpha = alpha
        self.alpha_grid = alpha_grid
        self.shrinkage = shrinkage
        self.max_iter = max_iter
        self.gradient_tol = gradient_tol
        self.num_threads = num_threads

    def _criterion(self, dev: float, edf: float, n: int, scale: float) -> float:
        """UBRE (D + 2 scale edf) for Poisson / binomial, GCV n D / (n - edf)^2 otherwise."""
        if self.family in ("poisson", "binomial"):
            return dev + 2.0 * scale * edf
        return n * dev / max(n - edf, 1.0) ** 2

    def fit(self, X: pd.DataFrame, y, sample_weight=None) -> GAMRegressor:
        """Fit on the rows of X, choosing ``alpha`` unless it is given."""
        with thread_limit(self.num_threads):
            return self._fit(X, y, sample_weight)

    def _fit(self, X: pd.DataFrame, y, sample_weight=None) -> GAMRegressor:
        from scipy.linalg import block_diag

        X = self._frame(X, reset=True)
        self.link_ = link = self._resolve_link()
        roles = self._column_roles(X)
        y = self._target(y, len(X))
        w = self._weights(sample_weight, len(X))
        wt = np.ones(len(y)) if w is None else w
        off = self._offset(X)
        self.glm_ = None
        if not (roles["smooth"] or roles["tensor"]):  # no smooth term: a plain GLM
            self.glm_ = GLMRegressor(family=self.family, link=self.link, power=self.power, exposure=self.exposure,
                                     numeric=roles["numeric"], categorical=roles["categorical"],
                                     handle_unknown=self.handle_unknown, max_iter=self.max_iter,
                                     gradient_tol=self.gradient_tol, num_threads=self.num_threads
                                     ).fit(X, y, sample_weight=w)
            self.alpha_, self.edf_ = None, float(len(self.glm_.coef_) + 1)
            self.info_ = {"alpha": None}
            return self
        self.preprocessor_ = linear_preprocessor(roles["numeric"], roles["categorical"], self.handle_unknown)
        L = np.asarray(self.preprocessor_.fit_transform(X), dtype=float)
        self.smooths_ = [Smooth([c], self.df, self.degree, self.smooth_basis).fit(X) for c in roles["smooth"]]
        if roles["tensor"]:
            self.smooths_.append(Smooth(roles["tensor"], self.tensor_df, self.degree, self.tensor_basis).fit(X))
        B = np.hstack([L, *[s.basis for s in self.smooths_]])
        # scale each penalty so that alpha = 1 weighs it like its share of the Fisher information
        mu0 = null_predict(y, off, off if off is not None else np.zeros(len(y)), self.family, link, self.power)
        w0 = wt * fisher_weights(mu0, self.family, link, self.power)
        Ss = []
        for s in self.smooths_:
            info = float(np.sum(w0[:, None] * s.basis ** 2))  # tr(B' W B)
            Sj = s.cov_der2 * info / max(np.trace(s.cov_der2), 1e-12)
            Ss.append(_psd(Sj + self.shrinkage * info / s.dim_basis * np.eye(s.dim_basis)))
        # linear columns are unpenalised; a column constant on the training rows gets coefficient 0
        lin = np.diag((L.std(axis=0) == 0).astype(float)) if L.shape[1] else np.zeros((0, 0))
        S = block_diag(lin, *Ss)
        grid = [self.alpha] if self.alpha is not None else sorted(self.alpha_grid, reverse=True)
        X1 = np.hstack([np.ones((len(B), 1)), B])
        S1 = block_diag(np.zeros((1, 1)), S)
        best, start, scale, scores = None, None, None, {}
        for a in grid:  # from smooth to wiggly, each warm-started from the previous solution
            try:
                model = fit_glum(B, y, self.family, link, self.power, off, w, P2=S, alpha=float(a) / wt.sum(),
                                 max_iter=self.max_iter, gradient_tol=self.gradient_tol, start=start)
            except ModelFitError:
                scores[a] = float("inf")
                continue
            beta = np.r_[model.intercept_, model.coef_]
            eta = X1 @ beta + (off if off is not None else 0.0)
            mu = inverse_link(link, eta)
            if not np.all(np.isfinite(mu)):
                scores[a] = float("inf")
                continue
            start = beta
            W = wt * fisher_weights(mu, self.family, link, self.power)
            XtWX = (X1.T * W) @ X1
            edf = float(np.trace(np.linalg.lstsq(XtWX + a * S1, XtWX, rcond=None)[0]))
            if scale is None:  # Pearson dispersion of the smoothest fit, at least 1
                pearson = float(np.sum(wt * (y - mu) ** 2 / np.maximum(variance(mu, self.family, self.power), 1e-12)))
                scale = max(1.0, pearson / max(len(y) - edf, 1.0))
            dev = deviance(y, mu, self.family, self.power, weight=w)
            scores[a] = self._criterion(dev, edf, len(y), scale)
            if best is None or scores[a] < best[0]:
                best = (scores[a], a, model, edf)
        if best is None:
            raise ModelFitError(f"GAM fit failed for every alpha in {grid}")
        _, self.alpha_, self.gam_, self.edf_ = best
        self.alpha_ = float(self.alpha_)
        self.intercept_ = float(self.gam_.intercept_)
        self.coef_ = np.asarray(self.gam_.coef_, dtype=float)
        self.info_ = {"alpha": self.alpha_, "edf": round(float(self.edf_), 2), "scale": scale,
                      "criterion": {str(k): v for k, v in scores.items()}}
        return self

    def linear_predictor(self, X: pd.DataFrame) -> np.ndarray:
        """eta = intercept + linear part + smooths (+ log exposure)."""
        check_is_fitted(self, "info_")
        if self.glm_ is not None:
            return self.glm_.linear_predictor(X)
        X = self._frame(X, reset=False)
        parts = [np.asarray(self.preprocessor_.transform(X), dtype=float), *[s.transform(X) for s in self.smooths_]]
        eta = self.intercept_ + np.hstack(parts) @ self.coef_
        off = self._offset(X)
        return eta + off if off is not None else eta

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Predicted mean of y for each row (its exposure included)."""
        eta = self.linear_predictor(X)  # checks that the model is fitted
        return inverse_link(self.link_, eta)
