"""Risk models as scikit-learn estimators: :class:`GLMRegressor` (glum), :class:`GAMRegressor` (P-splines
solved by glum), :class:`GBMRegressor` (LightGBM).

Each takes a DataFrame ``X`` whose columns it selects by role (``numeric``, ``categorical``; the GAM adds
``smooth`` and ``tensor``), with the exposure as the column named by ``exposure`` (an offset
``log(exposure)``), and predicts the mean of ``y`` on the target's scale (counts, not rates)::

    from geoembed.evaluate import GLMRegressor
    glm = GLMRegressor(family="poisson", exposure="years", numeric=["age", "emb_0", "emb_1"])
    glm.fit(policies, policies["claims"]).predict(new_policies)

They work with ``clone``, ``GridSearchCV``, ``cross_val_predict`` and inside a ``Pipeline``; ``score`` is
D² against the exposure-only model.
"""

from geoembed.evaluate.models.base import (
    FAMILY_LINKS,
    ModelFitError,
    RiskRegressor,
    UnseenLevels,
    fisher_weights,
    inverse_link,
    linear_preprocessor,
    link_fn,
    null_predict,
    sm_family,
)
from geoembed.evaluate.models.gam import GAMRegressor, Smooth, SmootherSet, difference_penalty
from geoembed.evaluate.models.gbm import GBMRegressor
from geoembed.evaluate.models.glm import GLMRegressor, fit_glum

__all__ = [
    "FAMILY_LINKS", "GAMRegressor", "GBMRegressor", "GLMRegressor", "ModelFitError", "RiskRegressor", "Smooth",
    "SmootherSet", "UnseenLevels", "difference_penalty", "fisher_weights", "fit_glum", "inverse_link", "link_fn",
    "linear_preprocessor", "null_predict", "sm_family",
]
