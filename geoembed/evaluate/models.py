"""Model adapters with one interface: GLM (statsmodels), GAM (penalised B-splines), GBM (LightGBM).

Each adapter is built from a :class:`Design` (which columns play which role) and the family/link, then

    model.fit(X, y, offset, inner=None)      # X: DataFrame of training rows; offset: log(exposure) or None
    mu = model.predict(X, offset)            # predicted mean on the target's scale (counts, not rates)

``inner`` is optional: inner fold ids (0..K-1, -1 = never validated) of the training rows, spatially
blocked when blocks exist (see ``splits.inner_folds``), or a boolean mask marking one validation part;
the GBM uses it for early stopping.

GAM details. Every smooth is built from statsmodels ``UnivariateBSplines`` (with intercept columns) and
made identifiable by a sum-to-zero constraint on the training rows (basis ``B Z``, penalty ``Z' S Z``, with
``Z`` the null space of ``1' B``, as in mgcv). An embedding component gets a univariate smooth
(``df`` columns, penalty on the integrated squared second derivative). Coordinates get a tensor-product
smooth: the row-wise Kronecker product of the lon and lat bases, penalty ``S_lon (x) I + I (x) S_lat``.
Inputs outside the training range are clipped to it (constant extrapolation of the input).
Each smooth's penalty is scaled by ``tr(B' W B) / tr(S)`` (W: the GLM working weights at the
exposure-only fit) so one multiplier ``alpha`` suits all smooths, plus ``shrinkage x tr(B' W B) / k``
times the identity (a shrinkage smoother as mgcv's "ts": without it the linear part of every smooth is
unpenalised, 64 free slopes for a 64-d embedding); it is taken from ``GAMConfig.alpha`` or
chosen from ``alpha_grid`` on the training rows by UBRE (deviance + 2 edf; Poisson, binomial) or GCV
(n D / (n - edf)^2; other families), edf = tr((X'WX + P)^-1 X'WX) at the fit, going from the smoothest
alpha down with warm starts. The fit is penalised IRLS (:func:`pirls`): the algorithm of statsmodels
``GLMGam`` (whose coefficients it matches, see the tests; ``_SmootherSet`` feeds these smooths to GLMGam)
but solved through the k x k normal equations instead of an SVD of the (n + k) x k augmented matrix, which
is what makes it usable on 10^5 rows. BLAS runs single-threaded during these small solves (multi-threaded
BLAS on small matrices is ~20x slower on a shared box).

GBM details. log-link objectives (poisson, gamma, tweedie) start from ``init_score = offset + base``, with
``base`` = log(sum y / sum exposure) on the fit rows: without the base rate the Poisson objective diverges
when rates are far from 1. ``regression`` starts from mean(y) (with exposure: it models y / exposure with
weights exposure and predicts exposure x rate), ``binary`` from logit(mean y) (no exposure). Early
stopping on each inner fold gives a best iteration; the median of these is the number of rounds for the
final model, refitted on all training rows. Deterministic: fixed seed, ``deterministic=True``, ``force_row_wise``,
``num_threads`` from the config.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from geoembed.config.evaluate import GAMConfig, GBMConfig, GLMConfig
from geoembed.errors import GeoembedError
from geoembed.evaluate.metrics import deviance

log = logging.getLogger(__name__)

GBM_OBJECTIVES = {"poisson": "poisson", "gamma": "gamma", "tweedie": "tweedie", "gaussian": "regression",
                  "binomial": "binary"}


class ModelFitError(GeoembedError):
    """A model could not be fitted (names the model, features and fold)."""


@dataclass
class Design:
    """Which table columns a model uses, by role."""

    numeric: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    coords: tuple[str, str] | None = None
    embeddings: list[str] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categorical, *(self.coords or ()), *self.embeddings]


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


def sm_family(family: str, link: str, power: float = 1.5):
    """The statsmodels family instance for ``family`` with ``link``."""
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


# ---------------------------------------------------------------------------------------------- features


class _Prep:
    """Standardises numeric columns and one-hot encodes categoricals with the training rows' statistics."""

    def __init__(self, numeric: list[str], categorical: list[str]):
        self.numeric = numeric
        self.categorical = categorical

    def fit(self, X: pd.DataFrame) -> _Prep:
        v = X[self.numeric].to_numpy(float) if self.numeric else np.zeros((len(X), 0))
        self.mean_ = v.mean(axis=0)
        sd = v.std(axis=0)
        self.sd_ = np.where(sd > 0, sd, 1.0)
        # Baseline level = the most frequent one; its column is dropped.
        self.levels_ = {}
        for c in self.categorical:
            counts = X[c].astype(str).value_counts()
            self.levels_[c] = [lv for lv in sorted(counts.index) if lv != counts.index[0]]
        return self

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        parts = []
        if self.numeric:
            parts.append((X[self.numeric].to_numpy(float) - self.mean_) / self.sd_)
        for c in self.categorical:
            v = X[c].astype(str).to_numpy()
            levels = np.asarray(self.levels_[c], dtype=object)
            parts.append((v[:, None] == levels[None, :]).astype(float))
        return np.hstack(parts) if parts else np.zeros((len(X), 0))

    @property
    def names(self) -> list[str]:
        out = list(self.numeric)
        for c in self.categorical:
            out += [f"{c}[{lv}]" for lv in self.levels_[c]]
        return out


class RiskModel:
    """Common interface of the adapters."""

    name = "model"

    def __init__(self, design: Design, family: str, link: str, power: float = 1.5, seed: int = 0):
        self.design = design
        self.family = family
        self.link = link
        self.power = power
        self.seed = seed
        self.info: dict = {}

    def fit(self, X: pd.DataFrame, y: np.ndarray, offset: np.ndarray | None = None,
            inner: np.ndarray | None = None) -> RiskModel:
        raise NotImplementedError

    def predict(self, X: pd.DataFrame, offset: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------- GLM


class GLMModel(RiskModel):
    """statsmodels GLM on standardised numeric columns (+ one-hot categoricals), raw lon/lat as linear terms."""

    name = "glm"

    def __init__(self, design: Design, family: str, link: str, power: float = 1.5,
                 cfg: GLMConfig | None = None, seed: int = 0):
        super().__init__(design, family, link, power, seed)
        self.cfg = cfg or GLMConfig()
        d = design
        self.prep = _Prep([*d.numeric, *(d.coords or ()), *d.embeddings], d.categorical)

    def _X(self, X: pd.DataFrame) -> np.ndarray:
        Z = self.prep.transform(X)
        return np.hstack([np.ones((len(X), 1)), Z])

    def fit(self, X, y, offset=None, inner=None):
        import statsmodels.api as sm

        self.prep.fit(X)
        Z = self._X(X)
        from threadpoolctl import threadpool_limits

        with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
            warnings.simplefilter("ignore")
            model = sm.GLM(np.asarray(y, float), Z, family=sm_family(self.family, self.link, self.power),
                           offset=offset)
            if self.cfg.ridge > 0:
                alpha = np.full(Z.shape[1], self.cfg.ridge)
                alpha[0] = 0.0
                res = model.fit_regularized(alpha=alpha, L1_wt=0.0, maxiter=self.cfg.maxiter)
            else:
                res = model.fit(maxiter=self.cfg.maxiter)
        self.params_ = np.asarray(res.params, float)
        if not np.all(np.isfinite(self.params_)):
            raise ModelFitError("GLM did not converge (non-finite coefficients); try glm.ridge > 0")
        self.info = {"n_params": int(len(self.params_))}
        return self

    def predict(self, X, offset=None):
        eta = self._X(X) @ self.params_
        if offset is not None:
            eta = eta + offset
        return inverse_link(self.link, eta)


def pirls(X: np.ndarray, y: np.ndarray, family, offset: np.ndarray | None = None, P: np.ndarray | None = None,
          maxiter: int = 100, start: np.ndarray | None = None, tol: float = 1e-8) -> tuple[np.ndarray, float, np.ndarray]:
    """Penalised IRLS: minimise deviance(y, g^-1(X b + offset)) + b' P b for a statsmodels ``family``.

    The algorithm of statsmodels ``GLMGam._fit_pirls`` (working response and weights from the family), with
    each step solved through the normal equations ``(X'WX + P) b = X'Wz`` by Cholesky (lstsq if not
    positive definite) and step halving when the penalised deviance rises. Returns (coefficients,
    effective degrees of freedom tr((X'WX + P)^-1 X'WX), fitted means).
    """
    n, k = X.shape
    off = np.zeros(n) if offset is None else np.asarray(offset, float)
    P = np.zeros((k, k)) if P is None else P
    if start is None:
        mu = family.starting_mu(y)
        eta = family.link(mu)
        beta = None
    else:
        beta = np.asarray(start, float)
        eta = X @ beta + off
        mu = family.fitted(eta)

    def pen_dev(b, m):
        return float(family.deviance(y, m)) + (float(b @ P @ b) if b is not None else 0.0)

    old = pen_dev(beta, mu) if beta is not None else np.inf
    positive = family.__class__.__name__ in ("Poisson", "Gamma", "Tweedie")
    unit = family.__class__.__name__ == "Binomial"
    for _ in range(maxiter):
        w = np.asarray(family.weights(mu), float)
        z = eta - off + family.link.deriv(mu) * (y - mu)
        XtW = X.T * w
        A = XtW @ X + P
        rhs = XtW @ z
        try:
            c = np.linalg.cholesky(A)
            new_beta = np.linalg.solve(c.T, np.linalg.solve(c, rhs))
        except np.linalg.LinAlgError:
            new_beta = np.linalg.lstsq(A, rhs, rcond=None)[0]
        improved = False
        for _half in range(30):  # step halving towards the previous coefficients
            new_eta = X @ new_beta + off
            new_mu = family.fitted(new_eta)
            valid = bool(np.all(np.isfinite(new_mu)))
            if valid and positive:
                valid = bool(np.all(new_mu > 0))
            if valid and unit:
                valid = bool(np.all((new_mu > 0) & (new_mu < 1)))
            dev = pen_dev(new_beta, new_mu) if valid else np.inf
            if np.isfinite(dev) and dev <= old + 1e-10 * abs(old if np.isfinite(old) else 0.0):
                improved = True
                break
            if beta is None:
                break
            new_beta = (beta + new_beta) / 2.0
        if not improved:
            if beta is None:
                raise ModelFitError("penalised IRLS failed: invalid fitted means (try the log link)")
            break  # no further decrease: converged at the current coefficients
        beta, eta, mu = new_beta, new_eta, new_mu
        converged = np.isfinite(old) and abs(old - dev) / (abs(dev) + 0.1) < tol
        old = dev
        if converged:
            break
    w = np.asarray(family.weights(mu), float)
    XtWX = (X.T * w) @ X
    edf = float(np.trace(np.linalg.lstsq(XtWX + P, XtWX, rcond=None)[0]))
    return beta, edf, mu


# ---------------------------------------------------------------------------------------------- GAM


def _sum_to_zero(B: np.ndarray) -> np.ndarray:
    """Null space Z (k x k-1) of the constraint 1' B Z = 0, via QR as in mgcv."""
    c = B.sum(axis=0)[:, None]
    q, _ = np.linalg.qr(c, mode="complete")
    return q[:, 1:]


class _Smooth:
    """One penalised smooth: univariate B-spline, or tensor product of several (sum-to-zero constrained)."""

    def __init__(self, columns: list[str], df: int, degree: int):
        self.columns = columns
        self.df = df
        self.degree = degree

    def _raw(self, X: pd.DataFrame) -> np.ndarray:
        bases = []
        for j, c in enumerate(self.columns):
            x = np.clip(X[c].to_numpy(float), self.lo_[j], self.hi_[j])
            bases.append(self.splines_[j].transform(x))
        B = bases[0]
        for b in bases[1:]:
            B = (B[:, :, None] * b[:, None, :]).reshape(len(B), -1)
        return B

    def fit(self, X: pd.DataFrame) -> _Smooth:
        from statsmodels.gam.smooth_basis import UnivariateBSplines

        self.splines_, self.lo_, self.hi_ = [], [], []
        for c in self.columns:
            x = X[c].to_numpy(float)
            lo, hi = float(x.min()), float(x.max())
            if hi <= lo:
                hi = lo + 1.0
                x = np.concatenate([x, [hi]])  # a constant column still gets a valid basis
            self.lo_.append(lo)
            self.hi_.append(hi)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.splines_.append(UnivariateBSplines(x, df=self.df, degree=self.degree,
                                                        include_intercept=True, variable_name=c))
        S = None
        for j, sp in enumerate(self.splines_):
            eyes = [np.eye(s.dim_basis) for s in self.splines_]
            term = sp.cov_der2 / max(np.trace(sp.cov_der2), 1e-12)
            mats = [term if i == j else eyes[i] for i in range(len(self.splines_))]
            K = mats[0]
            for m in mats[1:]:
                K = np.kron(K, m)
            S = K if S is None else S + K
        B = self._raw(X)
        self.Z_ = _sum_to_zero(B)
        self.cov_der2 = self.Z_.T @ S @ self.Z_
        self.dim_basis = self.Z_.shape[1]
        self.nobs = len(X)
        self.basis = B @ self.Z_
        return self

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        return self._raw(X) @ self.Z_


class _SmootherSet:
    """The duck-typed additive smoother statsmodels ``GLMGam`` takes (basis, smoothers with dim_basis and
    cov_der2, col_names): lets the same smooths be fitted by GLMGam (used to cross-check :func:`pirls`)."""

    def __init__(self, smooths: list[_Smooth], nobs: int):
        self.smoothers = smooths
        self.k_variables = len(smooths)
        self.basis = np.hstack([s.basis for s in smooths])
        self.dim_basis = self.basis.shape[1]
        self.nobs = nobs
        self.col_names = [f"s({'*'.join(s.columns)})_{i}" for s in smooths for i in range(s.dim_basis)]


class GAMModel(RiskModel):
    """GAM: linear base covariates + a smooth per embedding component + a lon/lat tensor smooth (PIRLS)."""

    name = "gam"

    def __init__(self, design: Design, family: str, link: str, power: float = 1.5,
                 cfg: GAMConfig | None = None, seed: int = 0):
        super().__init__(design, family, link, power, seed)
        self.cfg = cfg or GAMConfig()
        self.prep = _Prep(design.numeric, design.categorical)

    def _smooths(self) -> list[_Smooth]:
        d, c = self.design, self.cfg
        out = [_Smooth([e], c.df, c.degree) for e in d.embeddings]
        if d.coords:
            out.append(_Smooth(list(d.coords), c.tensor_df, c.degree))
        return out

    def _criterion(self, dev: float, edf: float, n: int, scale: float = 1.0) -> float:
        """UBRE (D + 2 scale edf) for Poisson / binomial, GCV n D / (n - edf)^2 otherwise.

        ``scale`` is the dispersion: 1 for data that follow the family, the Pearson estimate when the
        data are overdispersed (with scale 1, UBRE on overdispersed counts always picks the wiggliest fit).
        """
        if self.family in ("poisson", "binomial"):
            return dev + 2.0 * scale * edf
        return n * dev / max(n - edf, 1.0) ** 2

    def fit(self, X, y, offset=None, inner=None):
        from scipy.linalg import block_diag
        from threadpoolctl import threadpool_limits

        y = np.asarray(y, float)
        if not (self.design.embeddings or self.design.coords):  # no smooth term: a plain GLM
            self.fitted_ = GLMModel(self.design, self.family, self.link, self.power, seed=self.seed)
            self.fitted_.fit(X, y, offset)
            self.info = {"alpha": None}
            return self
        fam = sm_family(self.family, self.link, self.power)
        prep = _Prep(self.design.numeric, self.design.categorical).fit(X)
        lin = np.hstack([np.ones((len(X), 1)), prep.transform(X)])
        smooths = [s.fit(X) for s in self._smooths()]
        Xf = np.hstack([lin, *[s.basis for s in smooths]])
        # scale each penalty so that alpha = 1 weighs it like its share of the Fisher information
        mu0 = null_predict(y, offset, offset if offset is not None else np.zeros(len(y)),
                           self.family, self.link, self.power)
        w0 = np.asarray(fam.weights(mu0), float)
        Ss = []
        for s in smooths:
            info = float(np.sum(w0[:, None] * s.basis ** 2))  # tr(B' W B)
            Sj = s.cov_der2 * info / max(np.trace(s.cov_der2), 1e-12)
            # shrinkage (mgcv's "ts" idea): a small ridge lets alpha shrink the unpenalised linear part too
            Ss.append(Sj + self.cfg.shrinkage * info / s.dim_basis * np.eye(s.dim_basis))
        S = block_diag(np.zeros((lin.shape[1], lin.shape[1])), *Ss)
        grid = [self.cfg.alpha] if self.cfg.alpha is not None else sorted(self.cfg.alpha_grid, reverse=True)
        best, start, scale = None, None, None
        scores = {}
        with threadpool_limits(limits=1, user_api="blas"):
            for a in grid:  # from smooth to wiggly, each warm-started from the previous solution
                try:
                    beta, edf, mu = pirls(Xf, y, fam, offset, a * S, self.cfg.maxiter, start)
                except ModelFitError:
                    scores[a] = float("inf")
                    continue
                start = beta
                if scale is None:  # Pearson dispersion of the smoothest fit, at least 1
                    pearson = float(np.sum((y - mu) ** 2 / np.maximum(fam.variance(mu), 1e-12)))
                    scale = max(1.0, pearson / max(len(y) - edf, 1.0))
                dev = deviance(y, mu, self.family, self.power)
                scores[a] = self._criterion(dev, edf, len(y), scale)
                if best is None or scores[a] < best[0]:
                    best = (scores[a], a, beta, edf)
        if best is None:
            raise ModelFitError(f"GAM fit failed for every alpha in {grid}")
        _, alpha, beta, edf = best
        self.fitted_ = _FittedGAM(prep, smooths, beta, self.link)
        self.info = {"alpha": float(alpha), "edf": round(float(edf), 2), "scale": scale,
                     "criterion": {str(k): v for k, v in scores.items()}}
        return self

    def predict(self, X, offset=None):
        return self.fitted_.predict(X, offset)


class _FittedGAM:
    def __init__(self, prep: _Prep, smooths: list[_Smooth], params: np.ndarray, link: str):
        self.prep, self.smooths, self.params, self.link = prep, smooths, params, link

    def predict(self, X, offset=None):
        parts = [np.ones((len(X), 1)), self.prep.transform(X), *[s.transform(X) for s in self.smooths]]
        eta = np.hstack(parts) @ self.params
        if offset is not None:
            eta = eta + offset
        return inverse_link(self.link, eta)


# ---------------------------------------------------------------------------------------------- GBM


class GBMModel(RiskModel):
    """LightGBM with the family's objective; exposure and the base rate through ``init_score``."""

    name = "gbm"

    def __init__(self, design: Design, family: str, link: str, power: float = 1.5,
                 cfg: GBMConfig | None = None, seed: int = 0):
        super().__init__(design, family, link, power, seed)
        self.cfg = cfg or GBMConfig()
        # LightGBM uses its objective's natural link: log for poisson/gamma/tweedie, logit for binary.
        self.gbm_link = {"gaussian": "identity", "binomial": "logit"}.get(family, "log")

    def _frame(self, X: pd.DataFrame) -> pd.DataFrame:
        d = self.design
        out = pd.DataFrame(index=X.index)
        for c in d.numeric + list(d.coords or ()) + d.embeddings:
            out[c] = X[c].to_numpy(float)
        for c in d.categorical:
            codes = pd.Categorical(X[c].astype(str), categories=self.categories_[c]).codes.astype(float)
            out[c] = np.where(codes < 0, np.nan, codes)
        if out.shape[1] == 0:
            out["_const"] = 0.0
        return out

    def _base(self, y: np.ndarray, offset: np.ndarray | None) -> float:
        if self.gbm_link == "log":
            tot = float(np.sum(np.exp(offset))) if offset is not None else float(len(y))
            return float(np.log(max(np.sum(y), 1e-12) / tot))
        if self.gbm_link == "logit":
            m = float(np.clip(np.mean(y), 1e-6, 1 - 1e-6))
            return float(np.log(m / (1 - m)))
        return float(np.mean(y))

    def _params(self) -> dict:
        c = self.cfg
        p = {
            "objective": GBM_OBJECTIVES[self.family], "learning_rate": c.learning_rate,
            "num_leaves": c.num_leaves, "min_data_in_leaf": c.min_data_in_leaf,
            "feature_fraction": c.feature_fraction, "lambda_l2": c.lambda_l2, "seed": self.seed,
            "deterministic": True, "force_row_wise": True, "num_threads": c.num_threads, "verbosity": -1,
        }
        if self.family == "tweedie":
            p["tweedie_variance_power"] = self.power
        p.update(c.params)
        return p

    def _dataset(self, F, y, init, reference=None, weight=None):
        import lightgbm as lgb

        cats = [c for c in self.design.categorical if c in F.columns]
        return lgb.Dataset(F, label=y, init_score=init, weight=weight, categorical_feature=cats or "auto",
                           reference=reference, free_raw_data=False)

    def fit(self, X, y, offset=None, inner=None):
        import lightgbm as lgb

        y = np.asarray(y, float)
        weight = None
        if offset is not None and self.gbm_link == "identity":
            # regression objective with exposure: model the rate y / e with weights e, predict e * rate
            weight = np.exp(np.asarray(offset, float))
            y = y / weight
        elif offset is not None and self.gbm_link == "logit":
            log.warning("the binary objective has no exposure offset; exposure is ignored by the GBM")
        off = np.zeros(len(y)) if (offset is None or self.gbm_link != "log") else np.asarray(offset, float)
        self.info = {}
        self.categories_ = {c: sorted(X[c].astype(str).unique()) for c in self.design.categorical}
        F = self._frame(X)
        params = self._params()
        rounds = self.cfg.num_boost_round
        if self.cfg.early_stopping and inner is not None:
            ids = np.where(inner, 0, -1) if np.asarray(inner).dtype == bool else np.asarray(inner)
            best = []
            for k in np.unique(ids[ids >= 0]):
                val = ids == k
                if val.all():
                    continue
                fit_rows = ~val
                base = self._base(y[fit_rows], off[fit_rows] if offset is not None else None)
                dtr = self._dataset(F[fit_rows], y[fit_rows], off[fit_rows] + base,
                                    weight=None if weight is None else weight[fit_rows])
                dva = self._dataset(F[val], y[val], off[val] + base, reference=dtr,
                                    weight=None if weight is None else weight[val])
                booster = lgb.train(params, dtr, num_boost_round=rounds, valid_sets=[dva],
                                    callbacks=[lgb.early_stopping(self.cfg.early_stopping_rounds, verbose=False)])
                best.append(int(booster.best_iteration or booster.current_iteration()))
            if best:
                rounds = max(1, int(np.median(best)))
                self.info["inner_best_rounds"] = best
        self.base_ = self._base(y, offset if self.gbm_link == "log" else None)
        if weight is not None:
            self.base_ = float(np.average(y, weights=weight))
        self.booster_ = lgb.train(params, self._dataset(F, y, off + self.base_, weight=weight),
                                  num_boost_round=rounds)
        self.info.update({"num_boost_round": rounds, "base_score": self.base_})
        return self

    def predict(self, X, offset=None):
        raw = self.booster_.predict(self._frame(X), raw_score=True) + self.base_
        if offset is not None and self.gbm_link == "log":
            raw = raw + offset
        mu = inverse_link(self.gbm_link, raw)
        if offset is not None and self.gbm_link == "identity":
            mu = mu * np.exp(offset)
        return mu


MODELS: dict[str, type[RiskModel]] = {"glm": GLMModel, "gam": GAMModel, "gbm": GBMModel}


def make_model(name: str, design: Design, family: str, link: str, power: float = 1.5,
               cfg=None, seed: int = 0) -> RiskModel:
    """Build the adapter ``name`` (glm, gam, gbm); ``cfg`` is its GLMConfig / GAMConfig / GBMConfig."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise GeoembedError(f"unknown model {name!r}; use one of {list(MODELS)}") from None
    return cls(design, family, link, power, cfg=cfg, seed=seed)
