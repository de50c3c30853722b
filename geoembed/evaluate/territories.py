"""Territories and relativities from a fitted spatial effect, a postcode-style credibility baseline.

The actuarial end of the workflow: a fitted model's spatial terms become a per-row **spatial effect**
(a log-relativity), the effect is cut into ``k`` **territories** (1-D optimal binning, or contiguous
clusters on a neighbour graph), and each territory gets its exposure, claims and observed / fitted
relativity. A **region factor with credibility shrinkage** (:class:`RegionFactorGLM`, a ridge-penalised
one-hot factor whose penalty is chosen by inner CV) is the baseline the embeddings are compared with on
the same folds. The report's pieces (table, GAM smooth plots, the folium map) live in
``geoembed.evaluate.territory_report``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted

from geoembed.errors import InputError
from geoembed.evaluate.metrics import deviance
from geoembed.evaluate.models.base import (
    FAMILY_LINKS,
    inverse_link,
    linear_preprocessor,
    link_fn,
    thread_limit,
)
from geoembed.evaluate.models.glm import fit_glum

# ---------------------------------------------------------------------------------------------- effect


def spatial_effect(model, table: pd.DataFrame, spatial_cols: list[str], exposure: str | None = None) -> np.ndarray:
    """Per-row log-relativity of the spatial terms of a fitted ``model``.

    ``g(predict(X)) - g(predict(X_ref))``, ``X_ref`` being ``X`` with ``spatial_cols`` set to their
    exposure-weighted means (other columns and the offset cancel); for the additive GLM / GAM this is the
    spatial terms' contribution. The result is centred so that the exposure-weighted mean relativity
    ``sum e exp(effect) / sum e`` is 1.
    """
    missing = [c for c in spatial_cols if c not in table.columns]
    if missing:
        raise InputError(f"spatial effect: the table lacks spatial column(s) {missing}")
    if not spatial_cols:
        raise InputError("spatial effect: no spatial feature columns given")
    e = _exposure(table, exposure)
    ref = table.copy()
    for c in spatial_cols:
        v = table[c].to_numpy(float)
        ref[c] = float(np.sum(e * v) / np.sum(e))
    link = getattr(model, "link_", "log")
    eff = link_fn(link, model.predict(table)) - link_fn(link, model.predict(ref))
    if not np.all(np.isfinite(eff)):
        raise InputError("spatial effect: the model gave non-finite predictions")
    return eff - np.log(np.sum(e * np.exp(eff)) / np.sum(e))


def _exposure(table: pd.DataFrame, exposure: str | None) -> np.ndarray:
    if exposure is None:
        return np.ones(len(table))
    e = pd.to_numeric(table[exposure], errors="coerce").to_numpy(float)
    if not (np.isfinite(e) & (e > 0)).all():
        raise InputError(f"exposure column {exposure!r} must be finite and > 0")
    return e


# ---------------------------------------------------------------------------------------------- binning


def optimal_bins(values: np.ndarray, k: int, weights: np.ndarray | None = None, max_points: int = 2000) -> np.ndarray:
    """Territory labels 0..k-1 (ascending in value): the exposure-weighted 1-D k-means optimum (Fisher-Jenks).

    Exact dynamic programme over the sorted distinct values (weighted within-class sum of squares); with
    more than ``max_points`` distinct values they are first pooled into ``max_points`` weighted quantile
    groups, so the classes break only between groups.
    """
    x = np.asarray(values, float)
    w = np.ones_like(x) if weights is None else np.asarray(weights, float)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    uniq, inv = np.unique(x, return_inverse=True)
    wu = np.bincount(inv, weights=w)
    group = np.arange(len(uniq))
    if len(uniq) > max_points:  # pool neighbouring values into weighted-quantile groups
        cw = np.cumsum(wu) / wu.sum()
        group = np.minimum((cw * max_points).astype(int), max_points - 1)
        _, group = np.unique(group, return_inverse=True)
    gw = np.bincount(group, weights=wu)
    gx = np.bincount(group, weights=wu * uniq) / gw
    gxx = np.bincount(group, weights=wu * uniq ** 2)
    n = len(gw)
    k = min(k, n)
    W, S, Q = (np.r_[0.0, np.cumsum(a)] for a in (gw, gw * gx, gxx))

    def cost(i: np.ndarray, j: int) -> np.ndarray:  # SSE of groups i..j-1 (prefix indices)
        ww = W[j] - W[i]
        return Q[j] - Q[i] - (S[j] - S[i]) ** 2 / np.where(ww > 0, ww, 1.0)

    D = np.full((k + 1, n + 1), np.inf)
    arg = np.zeros((k + 1, n + 1), dtype=int)
    D[0, 0] = 0.0
    for m in range(1, k + 1):
        for j in range(m, n + 1):
            i = np.arange(m - 1, j)
            c = D[m - 1, i] + cost(i, j)
            b = int(np.argmin(c))
            D[m, j], arg[m, j] = c[b], i[b]
    cuts, j = [], n
    for m in range(k, 0, -1):
        j = arg[m, j]
        cuts.append(j)
    starts = np.array(sorted(cuts))
    glabel = np.searchsorted(starts, np.arange(n), side="right") - 1
    return glabel[group][inv]


# ---------------------------------------------------------------------------------------------- contiguity


def neighbour_graph(lon: np.ndarray, lat: np.ndarray, geometry=None, n_neighbours: int = 6):
    """Symmetric sparse adjacency of the rows: polygons that touch (``geometry``, a shapely array or
    GeoSeries) or, for points, the ``n_neighbours`` nearest in a local metric projection. Disconnected
    parts (islands) are joined by their closest pair of points, so the graph is connected."""
    from scipy.sparse import coo_matrix
    from scipy.spatial import cKDTree

    from geoembed.geo.project import project_local

    x, y = project_local(np.asarray(lon, float), np.asarray(lat, float))
    xy = np.c_[x, y]
    n = len(xy)
    if geometry is not None:
        import shapely

        geoms = np.asarray(getattr(geometry, "values", geometry), dtype=object)
        if len(geoms) != n:
            raise InputError(f"neighbour graph: {len(geoms)} geometries for {n} rows")
        tree = shapely.STRtree(geoms)
        a, b = tree.query(geoms, predicate="intersects")
    else:
        kk = min(n_neighbours + 1, n)
        _, idx = cKDTree(xy).query(xy, k=kk)
        a, b = np.repeat(np.arange(n), kk), np.asarray(idx).ravel()
    keep = a != b
    A = coo_matrix((np.ones(int(keep.sum())), (a[keep], b[keep])), shape=(n, n)).tocsr()
    A = ((A + A.T) > 0).astype(float).tocsr()
    return _connect(A, xy)


def _connect(A, xy: np.ndarray):
    """Join the components of ``A`` one by one to the first, each by its closest pair of points."""
    from scipy.sparse import csgraph, lil_matrix
    from scipy.spatial import cKDTree

    A = lil_matrix(A)
    while True:
        ncomp, comp = csgraph.connected_components(A.tocsr(), directed=False)
        if ncomp <= 1:
            return A.tocsr()
        main, rest = np.flatnonzero(comp == comp[0]), np.flatnonzero(comp != comp[0])
        d, j = cKDTree(xy[main]).query(xy[rest])
        r = int(np.argmin(d))
        A[rest[r], main[j[r]]] = A[main[j[r]], rest[r]] = 1.0


def contiguous_territories(values: np.ndarray, graph, k: int) -> np.ndarray:
    """Labels 0..k-1 of ``k`` connected clusters of ``values`` on the neighbour ``graph`` (Ward agglomeration
    with the graph as connectivity), numbered by ascending mean value."""
    from sklearn.cluster import AgglomerativeClustering

    x = np.asarray(values, float)
    k = min(k, len(x))
    lab = AgglomerativeClustering(n_clusters=k, connectivity=graph, linkage="ward").fit_predict(x[:, None])
    return _relabel(lab, x)


def _relabel(lab: np.ndarray, x: np.ndarray) -> np.ndarray:
    means = np.array([x[lab == c].mean() for c in range(lab.max() + 1)])
    order = np.argsort(np.argsort(means))
    return order[lab]


def is_connected_within(labels: np.ndarray, graph) -> bool:
    """Whether every label's rows form one connected set in ``graph``."""
    from scipy.sparse import csgraph

    graph = graph.tocsr()
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if csgraph.connected_components(graph[idx][:, idx], directed=False)[0] != 1:
            return False
    return True


# ---------------------------------------------------------------------------------------------- table


def territory_table(labels: np.ndarray, effect: np.ndarray, y: np.ndarray, exposure: np.ndarray) -> pd.DataFrame:
    """Per territory: rows, exposure, claims, observed and fitted relativity, relativity to the base territory.

    ``observed_relativity``: (claims / exposure) / portfolio (claims / exposure); ``fitted_relativity``: the
    exposure-weighted mean of ``exp(effect)`` (portfolio = 1, as :func:`spatial_effect` centres it);
    ``relativity``: fitted relativity / that of the base territory (the one with most exposure), base = 1.
    """
    y, e, r = np.asarray(y, float), np.asarray(exposure, float), np.exp(np.asarray(effect, float))
    freq = y.sum() / e.sum()
    rows = []
    for c in np.unique(labels):
        m = labels == c
        rows.append({"territory": int(c) + 1, "rows": int(m.sum()), "exposure": float(e[m].sum()),
                     "claims": float(y[m].sum()),
                     "observed_relativity": float(y[m].sum() / e[m].sum() / freq) if freq > 0 else float("nan"),
                     "fitted_relativity": float(np.sum(e[m] * r[m]) / e[m].sum()),
                     "effect_min": float(np.log(r[m]).min()), "effect_max": float(np.log(r[m]).max())})
    df = pd.DataFrame(rows)
    base = int(df["exposure"].idxmax())
    df["relativity"] = df["fitted_relativity"] / df.loc[base, "fitted_relativity"]
    df["base"] = df.index == base
    return df


def make_territories(effect: np.ndarray, k: int, exposure: np.ndarray | None = None, contiguous: bool = False,
                     graph=None) -> np.ndarray:
    """Territory labels 0..k-1: 1-D optimal bins of the effect, or contiguous clusters on ``graph``."""
    if contiguous:
        if graph is None:
            raise ValueError("contiguous territories need a neighbour graph")
        return contiguous_territories(effect, graph, k)
    return optimal_bins(effect, k, exposure)


# ---------------------------------------------------------------------------------------------- baseline


class RegionFactorGLM(RegressorMixin, BaseEstimator):
    """Postcode-style baseline: a GLM with a region factor shrunk by credibility (ridge on its levels).

    Every level of ``region`` gets a one-hot column (none dropped) with an L2 penalty ``alpha``; the
    intercept, ``numeric`` (standardised) and ``categorical`` (one-hot, first level dropped) columns are
    unpenalised. A level with little exposure is thus pulled towards the portfolio (relativity 1), one with
    much exposure keeps its own experience: Bühlmann-style credibility as a penalised likelihood. ``alpha``
    (glum's scale: ``deviance / (2 sum w) + alpha / 2 ||b||^2``) is chosen from ``alphas`` by ``inner_cv``-fold
    CV of the training rows (lowest held-out deviance) unless ``alpha`` is given. A region unseen in
    training gets relativity 1; a missing region is the level ``<missing>``. Fitted: ``alpha_``, ``levels_``, ``region_coef_`` (log relativities),
    ``cv_deviance_``, ``link_``.
    """

    def __init__(self, *, region: str, family: str = "poisson", link: str | None = None, power: float = 1.5,
                 exposure: str | None = None, numeric: list[str] | None = None,
                 categorical: list[str] | None = None, alpha: float | None = None,
                 alphas: tuple[float, ...] = tuple(10.0 ** np.arange(-7, 2)), inner_cv: int = 5,
                 random_state: int = 0, max_iter: int = 100):
        self.region = region
        self.family = family
        self.link = link
        self.power = power
        self.exposure = exposure
        self.numeric = numeric
        self.categorical = categorical
        self.alpha = alpha
        self.alphas = alphas
        self.inner_cv = inner_cv
        self.random_state = random_state
        self.max_iter = max_iter

    def _values(self, X: pd.DataFrame) -> np.ndarray:
        """The region of each row as text; a missing region is its own level ``<missing>``."""
        v = X[self.region]
        return np.where(v.isna().to_numpy(), "<missing>", v.astype(object).map(str).to_numpy()).astype(object)

    def _design(self, X: pd.DataFrame, fit: bool) -> tuple[np.ndarray, int]:
        if self.region not in X.columns:
            raise InputError(f"region column {self.region!r} is not in the table (it has {list(X.columns)[:20]})")
        if fit:
            self.pre_ = linear_preprocessor(list(self.numeric or []), list(self.categorical or []), "most_frequent")
            L = np.asarray(self.pre_.fit_transform(X), float) if (self.numeric or self.categorical) else None
            self.levels_ = np.array(sorted(set(self._values(X))), dtype=object)
        else:
            L = np.asarray(self.pre_.transform(X), float) if (self.numeric or self.categorical) else None
        codes = pd.Index(self.levels_).get_indexer(self._values(X))
        R = np.zeros((len(X), len(self.levels_)))
        ok = codes >= 0
        R[np.flatnonzero(ok), codes[ok]] = 1.0
        L = np.zeros((len(X), 0)) if L is None else L
        return np.hstack([L, R]), L.shape[1]

    def _fit_alpha(self, Z, y, off, n_lin: int, alpha: float, start=None):
        P2 = np.r_[np.zeros(n_lin), np.ones(Z.shape[1] - n_lin)]
        with thread_limit(1):
            return fit_glum(Z, y, self.family, self.link_, self.power, off, None, P2=P2, alpha=alpha,
                            max_iter=self.max_iter, start=start)

    def fit(self, X: pd.DataFrame, y) -> RegionFactorGLM:
        """Fit, choosing ``alpha`` by inner CV unless it is given."""
        from sklearn.model_selection import KFold

        self.link_ = self.link or FAMILY_LINKS[self.family][0]
        y = np.asarray(y, float)
        Z, n_lin = self._design(X, fit=True)
        off = np.log(_exposure(X, self.exposure)) if self.exposure else None
        if self.alpha is not None:
            self.alpha_, self.cv_deviance_ = float(self.alpha), {}
        else:
            dev = dict.fromkeys(self.alphas, 0.0)
            for tr, te in KFold(min(self.inner_cv, len(y)), shuffle=True,
                                random_state=self.random_state).split(Z):
                for a in sorted(self.alphas, reverse=True):
                    m = self._fit_alpha(Z[tr], y[tr], None if off is None else off[tr], n_lin, a)
                    eta = m.intercept_ + Z[te] @ m.coef_ + (0.0 if off is None else off[te])
                    dev[a] += deviance(y[te], inverse_link(self.link_, eta), self.family, self.power)
            self.cv_deviance_ = {float(a): float(v) for a, v in dev.items()}
            self.alpha_ = float(min(dev, key=dev.get))
        self.glm_ = self._fit_alpha(Z, y, off, n_lin, self.alpha_)
        self.n_lin_ = n_lin
        self.region_coef_ = pd.Series(np.asarray(self.glm_.coef_)[n_lin:], index=self.levels_)
        self.info_ = {"alpha": self.alpha_, "levels": len(self.levels_)}
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Expected y for each row (its exposure included)."""
        check_is_fitted(self, "glm_")
        Z, _ = self._design(X, fit=False)
        eta = self.glm_.intercept_ + Z @ self.glm_.coef_
        if self.exposure:
            eta = eta + np.log(_exposure(X, self.exposure))
        return inverse_link(self.link_, eta)


def region_baseline(table: pd.DataFrame, folds: np.ndarray, cfg, region_col: str,
                    alphas: tuple[float, ...] | None = None) -> pd.DataFrame:
    """Cross-validate :class:`RegionFactorGLM` on the evaluation's folds; records like ``run_evaluation``'s
    (model ``region``, features ``region:<col>``; per fold and ``pooled``, against the exposure-only model)."""
    from geoembed.evaluate import metrics as M
    from geoembed.evaluate.models import null_predict

    if region_col not in table.columns:
        raise InputError(f"evaluate.territories.region_col {region_col!r} is not a column of the table "
                         f"(it has {list(table.columns)[:20]})")
    y = table[cfg.target].to_numpy(float)
    e = _exposure(table, cfg.exposure)
    off = np.log(e) if cfg.exposure else None
    kw = {} if alphas is None else {"alphas": tuple(alphas)}
    est = RegionFactorGLM(region=region_col, family=cfg.family, link=cfg.link, power=cfg.tweedie_power,
                          exposure=cfg.exposure, numeric=list(cfg.covariates), categorical=list(cfg.categorical),
                          random_state=cfg.seed, **kw)
    tested = np.flatnonzero(folds >= 0)
    mu_all, mu0_all = np.full(len(y), np.nan), np.full(len(y), np.nan)
    recs = []
    for f in np.unique(folds[tested]):
        tr, te = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        model = RegionFactorGLM(**est.get_params()).fit(table.iloc[tr], y[tr])
        mu = model.predict(table.iloc[te])
        mu0 = null_predict(y[tr], None if off is None else off[tr], np.zeros(len(te)) if off is None else off[te],
                           cfg.family, cfg.resolved_link, cfg.tweedie_power)
        mu_all[te], mu0_all[te] = mu, mu0
        recs.append({"model": "region", "features": f"region:{region_col}", "fold": int(f),
                     **M.score(y[te], mu, mu0, cfg.family, cfg.tweedie_power, e[te]), "alpha": model.alpha_})
    pooled = M.score(y[tested], mu_all[tested], mu0_all[tested], cfg.family, cfg.tweedie_power, e[tested])
    recs.append({"model": "region", "features": f"region:{region_col}", "fold": "pooled", **pooled,
                 "alpha": float(np.median([r["alpha"] for r in recs]))})
    return pd.DataFrame.from_records(recs)
