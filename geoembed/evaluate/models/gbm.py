"""``GBMRegressor``: LightGBM with the family's objective, exposure and base rate in the init score.

log-link objectives (poisson, gamma, tweedie) start from ``init_score = log(exposure) + base``, with
``base`` = log(sum y / sum exposure) on the fit rows: without the base rate the Poisson objective diverges
when rates are far from 1 (shared/data/README.md). ``regression`` (gaussian) starts from the mean of y;
with exposure it models the rate y / exposure with weights exposure and predicts exposure x rate.
``binary`` starts from logit(mean y) and has no exposure (it is ignored, with a warning).

Early stopping: on each split of ``inner_cv`` (an int: shuffled K-fold; or any scikit-learn splitter,
e.g. :class:`geoembed.evaluate.SpatialBlockKFold` for spatially honest stopping) a booster is trained on the
fit rows and stopped on the validation rows; the median best iteration is the number of rounds of the
final model, refitted on all rows. Deterministic: fixed seed, ``deterministic=True``, ``force_row_wise``.

Tuning: with ``grid`` (LightGBM parameters to lists of values) every combination is early-stopped on the same
inner splits and the one with the lowest validation loss at its best iteration (the objective's own metric,
averaged over the inner validation rows) is refitted; ``info_["params"]`` says which. Small tables (hundreds of
rows) are where this matters: the right tree size there depends on how the features carry the signal.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from sklearn.utils.validation import check_is_fitted

from geoembed.evaluate.models.base import RiskRegressor, UnseenLevels, inverse_link

log = logging.getLogger(__name__)

GBM_OBJECTIVES = {"poisson": "poisson", "gamma": "gamma", "tweedie": "tweedie", "gaussian": "regression",
                  "binomial": "binary"}
#: LightGBM uses its objective's natural link.
GBM_LINKS = {"gaussian": "identity", "binomial": "logit"}


class GBMRegressor(RiskRegressor):
    """LightGBM on numeric and categorical columns, exposure through the init score (module doc).

    Parameters
    ----------
    family, power, exposure, numeric, categorical, handle_unknown : as :class:`GLMRegressor` (the link is
        the objective's: log, except identity for gaussian and logit for binomial).
    num_boost_round, learning_rate, num_leaves, min_data_in_leaf, feature_fraction, lambda_l2 : LightGBM's.
    extra_trees : LightGBM's extremely randomised trees (one random threshold tried per feature and node); on
        by default: on tables of hundreds of rows with continuous features such as embeddings it was steadier
        and better for every target measured (BENCHMARKS.md, "LightGBM with extremely randomised trees").
    early_stopping, early_stopping_rounds, inner_cv : rounds chosen on inner splits (module doc); without
        early stopping (or with ``inner_cv=None``) ``num_boost_round`` rounds are used.
    num_threads : LightGBM threads. params : further LightGBM parameters (override the above).
    grid : ``{parameter: [values]}`` tried on the inner splits (module doc); needs early stopping.
    random_state : LightGBM's seed and the shuffle of an integer ``inner_cv``.

    Fitted attributes: ``booster_``, ``base_`` (base score), ``link_``, ``info_`` (rounds, inner best
    rounds, base score), ``n_features_in_``, ``feature_names_in_``.
    """

    def __init__(self, *, family: str = "poisson", power: float = 1.5, exposure: str | None = None,
                 numeric: list[str] | None = None, categorical: list[str] | None = None,
                 handle_unknown: str = "error", num_boost_round: int = 1000, learning_rate: float = 0.05,
                 num_leaves: int = 15, min_data_in_leaf: int = 20, feature_fraction: float = 1.0,
                 lambda_l2: float = 0.0, extra_trees: bool = True, early_stopping: bool = True,
                 early_stopping_rounds: int = 50, inner_cv=3, num_threads: int = 1, params: dict | None = None, grid: dict | None = None,
                 random_state: int = 0):
        self.family = family
        self.power = power
        self.exposure = exposure
        self.numeric = numeric
        self.categorical = categorical
        self.handle_unknown = handle_unknown
        self.num_boost_round = num_boost_round
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_data_in_leaf = min_data_in_leaf
        self.feature_fraction = feature_fraction
        self.lambda_l2 = lambda_l2
        self.extra_trees = extra_trees
        self.early_stopping = early_stopping
        self.early_stopping_rounds = early_stopping_rounds
        self.inner_cv = inner_cv
        self.num_threads = num_threads
        self.params = params
        self.grid = grid
        self.random_state = random_state

    link = None  # not a parameter: the objective fixes the link

    def _resolve_link(self) -> str:
        if self.family not in GBM_OBJECTIVES:
            raise ValueError(f"family must be one of {list(GBM_OBJECTIVES)}, got {self.family!r}")
        return GBM_LINKS.get(self.family, "log")

    def _features(self, X: pd.DataFrame) -> pd.DataFrame:
        out = pd.DataFrame({c: pd.to_numeric(X[c]).to_numpy(dtype=float) for c in self.numeric_}, index=X.index)
        if self.categorical_:
            txt = self.levels_.transform(X[self.categorical_])
            for c in self.categorical_:
                out[c] = pd.Categorical(txt[c], categories=self.levels_.levels_[c]).codes.astype(float)
        if out.shape[1] == 0:
            out["_const"] = 0.0
        return out

    def _base(self, y: np.ndarray, off: np.ndarray, w: np.ndarray) -> float:
        if self.link_ == "log":
            return float(np.log(max(np.sum(w * y), 1e-12) / np.sum(w * np.exp(off))))
        if self.link_ == "logit":
            m = float(np.clip(np.average(y, weights=w), 1e-6, 1 - 1e-6))
            return float(np.log(m / (1 - m)))
        return float(np.average(y, weights=w))

    def _lgb_params(self) -> dict:
        p = {"objective": GBM_OBJECTIVES[self.family], "learning_rate": self.learning_rate,
             "num_leaves": self.num_leaves, "min_data_in_leaf": self.min_data_in_leaf,
             "feature_fraction": self.feature_fraction, "lambda_l2": self.lambda_l2,
             "extra_trees": bool(self.extra_trees), "seed": self.random_state,
             "deterministic": True, "force_row_wise": True, "num_threads": self.num_threads, "verbosity": -1}
        if self.family == "tweedie":
            p["tweedie_variance_power"] = self.power
        p.update(self.params or {})
        return p

    def _dataset(self, F, y, init, weight, reference=None):
        import lightgbm as lgb

        cats = [c for c in self.categorical_ if c in F.columns]
        return lgb.Dataset(F, label=y, init_score=init, weight=weight, categorical_feature=cats or "auto",
                           reference=reference, free_raw_data=False)

    def _splits(self, X: pd.DataFrame, y: np.ndarray):
        if isinstance(self.inner_cv, int | np.integer):
            from sklearn.model_selection import KFold

            return KFold(int(self.inner_cv), shuffle=True, random_state=self.random_state).split(X)
        return self.inner_cv.split(X, y)

    def fit(self, X: pd.DataFrame, y, sample_weight=None) -> GBMRegressor:
        """Fit on the rows of X; early stopping on ``inner_cv`` when enabled."""
        import lightgbm as lgb

        X = self._frame(X, reset=True)
        self.link_ = self._resolve_link()
        roles = self._column_roles(X)
        self.numeric_, self.categorical_ = roles["numeric"], roles["categorical"]
        y = self._target(y, len(X))
        w_given = self._weights(sample_weight, len(X))
        w = np.ones(len(y)) if w_given is None else w_given
        off = self._offset(X)
        self.rate_model_ = off is not None and self.link_ == "identity"
        if self.rate_model_:  # regression objective with exposure: the rate y / e with weights e
            e = np.exp(off)
            y, w, w_given = y / e, w * e, w * e
        elif off is not None and self.link_ == "logit":
            log.warning("the binary objective has no exposure offset; exposure is ignored by the GBM")
        init = off if (off is not None and self.link_ == "log") else np.zeros(len(y))
        self.levels_ = UnseenLevels(self.handle_unknown).fit(X[self.categorical_]) if self.categorical_ else None
        F = self._features(X)
        wt = (lambda rows: None) if w_given is None else (lambda rows: w_given[rows])
        params = self._lgb_params()
        rounds = self.num_boost_round
        self.info_ = {}
        if self.grid and not (self.early_stopping and self.inner_cv is not None):
            raise ValueError("grid needs early stopping on inner splits (early_stopping=True, inner_cv set)")
        if self.early_stopping and self.inner_cv is not None:
            splits = [(f, v) for f, v in self._splits(X, y) if len(f) and len(v)]
            tried = []
            for combo in _combinations(self.grid):
                cand = {**params, **combo}
                best, loss = self._inner(lgb, cand, splits, F, y, init, w, wt)
                tried.append((loss, best, combo))
            loss, best, combo = min(tried, key=lambda t: t[0])
            params.update(combo)
            if best:
                rounds = max(1, int(np.median(best)))
                self.info_["inner_best_rounds"] = best
            if self.grid:
                self.info_.update(params=combo, grid_losses=[(c, float(lo)) for lo, _, c in tried])
        self.params_ = params
        self.base_ = self._base(y, init, w)
        self.booster_ = lgb.train(params, self._dataset(F, y, init + self.base_, w_given), num_boost_round=rounds)
        self.info_.update({"num_boost_round": rounds, "base_score": self.base_})
        return self

    def _inner(self, lgb, params: dict, splits, F, y, init, w, wt) -> tuple[list[int], float]:
        """Early stopping on each inner split: best iterations and the mean validation loss at them."""
        best, loss, rows = [], 0.0, 0
        for fit_rows, val in splits:
            base = self._base(y[fit_rows], init[fit_rows], w[fit_rows])
            dtr = self._dataset(F.iloc[fit_rows], y[fit_rows], init[fit_rows] + base, wt(fit_rows))
            dva = self._dataset(F.iloc[val], y[val], init[val] + base, wt(val), reference=dtr)
            booster = lgb.train(params, dtr, num_boost_round=self.num_boost_round, valid_sets=[dva],
                                callbacks=[lgb.early_stopping(self.early_stopping_rounds, verbose=False)])
            best.append(int(booster.best_iteration or booster.current_iteration()))
            scores = booster.best_score.get("valid_0") or {}
            if scores:
                loss += float(next(iter(scores.values()))) * len(val)
                rows += len(val)
        return best, (loss / rows if rows else float("nan"))

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Predicted mean of y for each row (its exposure included)."""
        check_is_fitted(self, "booster_")
        X = self._frame(X, reset=False)
        raw = self.booster_.predict(self._features(X), raw_score=True) + self.base_
        off = self._offset(X)
        if off is not None and self.link_ == "log":
            raw = raw + off
        mu = inverse_link(self.link_, raw)
        return mu * np.exp(off) if (off is not None and self.rate_model_) else mu


def _combinations(grid: dict | None) -> list[dict]:
    """Every combination of ``grid``'s values (``[{}]`` without a grid)."""
    import itertools

    if not grid:
        return [{}]
    keys = list(grid)
    for k in keys:
        if not isinstance(grid[k], list | tuple) or not grid[k]:
            raise ValueError(f"grid[{k!r}] must be a non-empty list of values")
    return [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*(grid[k] for k in keys))]
