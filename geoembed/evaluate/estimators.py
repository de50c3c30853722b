"""The estimator ``geoembed evaluate`` fits for one model on one feature set (scikit-learn conventions:
it can be cloned, cross-validated and grid-searched like any other)."""

from __future__ import annotations

import numpy as np

from geoembed.config.evaluate import EvaluateConfig
from geoembed.errors import ConfigError
from geoembed.evaluate.models import GAMRegressor, GBMRegressor, GLMRegressor
from geoembed.evaluate.pca import EmbeddingPCA, pca_names

__all__ = ["make_estimator", "with_inner_folds"]


def make_estimator(model: str, features: str, cfg: EvaluateConfig, emb_cols: list[str],
                   sets: dict[str, list[str]] | None = None):
    """The scikit-learn estimator that ``geoembed evaluate`` fits for ``model`` on one feature set.

    Base covariates (linear) and categoricals always enter; ``coords`` adds lon/lat (linear in the GLM, a
    tensor smooth in the GAM, split features in the GBM), ``embeddings`` the embedding columns (linear,
    one smooth each, split features); ``both`` adds both; a named embedding set (a key of ``sets``: its
    columns) enters as ``embeddings`` does. Exposure is the config's exposure column.
    With ``cfg.components`` the embedding columns are replaced by that many principal components: a
    ``Pipeline`` of :class:`EmbeddingPCA` (fitted on the rows the pipeline is fitted on) and the model.
    """
    if sets and features in sets:
        embs = list(sets[features])
    else:
        embs = list(emb_cols) if features in ("embeddings", "both") else []
    if cfg.components is not None and embs:
        from sklearn.pipeline import Pipeline

        pca = EmbeddingPCA(columns=embs, n_components=cfg.components, whiten=cfg.whiten)
        return Pipeline([("pca", pca), ("model", _estimator(model, features, cfg, pca_names(cfg.components)))])
    return _estimator(model, features, cfg, embs)


def _estimator(model: str, features: str, cfg: EvaluateConfig, embs: list[str]):
    coords = [cfg.lon_col, cfg.lat_col] if features in ("coords", "both") else []
    common = {"family": cfg.family, "power": cfg.tweedie_power, "exposure": cfg.exposure,
              "categorical": list(cfg.categorical), "handle_unknown": cfg.unknown_categories}
    cov = list(cfg.covariates)
    if model == "glm":
        return GLMRegressor(link=cfg.resolved_link, numeric=[*cov, *coords, *embs], alpha=cfg.glm.ridge,
                            max_iter=cfg.glm.maxiter, **common)
    if model == "gam":
        g = cfg.gam
        return GAMRegressor(link=cfg.resolved_link, numeric=cov, smooth=embs, tensor=tuple(coords) or None,
                            df=g.df, tensor_df=g.tensor_df, degree=g.degree, smooth_basis=g.smooth_basis,
                            tensor_basis=g.tensor_basis, alpha=g.alpha,
                            alpha_grid=tuple(g.alpha_grid), shrinkage=g.shrinkage, max_iter=g.maxiter, **common)
    if model == "gbm":
        b = cfg.gbm
        return GBMRegressor(numeric=[*cov, *coords, *embs], num_boost_round=b.num_boost_round,
                            learning_rate=b.learning_rate, num_leaves=b.num_leaves,
                            min_data_in_leaf=b.min_data_in_leaf, feature_fraction=b.feature_fraction,
                            lambda_l2=b.lambda_l2, extra_trees=b.extra_trees, early_stopping=b.early_stopping,
                            early_stopping_rounds=b.early_stopping_rounds, inner_cv=b.inner_folds,
                            num_threads=b.num_threads, params=dict(b.params), grid=dict(b.grid) or None,
                            random_state=cfg.seed, **common)
    raise ConfigError(f"unknown model {model!r}; use one of glm, gam, gbm")


def with_inner_folds(estimator, inner: np.ndarray):
    """A clone of ``estimator`` whose early stopping (GBM) uses the given inner fold ids of its training rows."""
    from sklearn.base import clone
    from sklearn.model_selection import PredefinedSplit

    est = clone(estimator)
    keys = [k for k in est.get_params() if k == "inner_cv" or k.endswith("__inner_cv")]
    if keys:
        est.set_params(**{k: PredefinedSplit(inner) for k in keys})
    return est
