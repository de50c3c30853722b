"""A PCA of the embedding columns as a ``Pipeline`` step, so that each training fold fits its own.

``make_estimator`` puts :class:`EmbeddingPCA` before the model when ``evaluate.components`` is set: the
``Pipeline`` fits the PCA on the rows it is fitted on (a training fold), never on the whole table, and the
test fold is projected on the training fold's axes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.decomposition import PCA
from sklearn.utils.validation import check_is_fitted

from geoembed.errors import InputError


def pca_names(k: int, prefix: str = "emb_pc_") -> list[str]:
    """``emb_pc_0 .. emb_pc_{k-1}``: the component columns :class:`EmbeddingPCA` writes."""
    return [f"{prefix}{i}" for i in range(k)]


class EmbeddingPCA(TransformerMixin, BaseEstimator):
    """Replace ``columns`` of a DataFrame by their first ``n_components`` principal components.

    Other columns (exposure, covariates, coordinates) pass through unchanged. ``whiten`` scales each
    component to unit variance on the fitted rows. Fitted attributes: ``pca_`` (the scikit-learn PCA),
    ``components_names_``.
    """

    def __init__(self, columns=(), n_components: int = 2, whiten: bool = False, prefix: str = "emb_pc_"):
        self.columns = columns
        self.n_components = n_components
        self.whiten = whiten
        self.prefix = prefix

    def _values(self, X: pd.DataFrame) -> np.ndarray:
        if not hasattr(X, "columns"):
            raise InputError("EmbeddingPCA needs a DataFrame with the embedding columns")
        missing = [c for c in self.columns if c not in X.columns]
        if missing:
            raise InputError(f"the table lacks embedding column(s) {missing[:8]} for the PCA")
        return X[list(self.columns)].to_numpy(dtype=float)

    def fit(self, X: pd.DataFrame, y=None) -> EmbeddingPCA:
        """Fit the PCA on ``X``'s embedding columns (the training rows only)."""
        cols = list(self.columns)
        k = int(self.n_components)
        if not cols:
            raise InputError("evaluate.components is set but there are no embedding columns to reduce")
        if k > len(cols):
            raise InputError(f"evaluate.components is {k} but there are only {len(cols)} embedding columns")
        if k >= len(X):
            raise InputError(f"evaluate.components is {k} but a training fold has only {len(X)} rows")
        self.pca_ = PCA(n_components=k, whiten=bool(self.whiten), svd_solver="full").fit(self._values(X))
        self.components_names_ = pca_names(k, self.prefix)
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        """``X`` without the embedding columns, plus the components (projected on the fitted axes)."""
        check_is_fitted(self, "pca_")
        pcs = self.pca_.transform(self._values(X))
        comp = pd.DataFrame(pcs, columns=self.components_names_, index=X.index)
        return pd.concat([X.drop(columns=list(self.columns)), comp], axis=1)


def final_estimator(model):
    """The model itself, or the last step of a ``Pipeline`` (for ``link_`` and ``info_``)."""
    steps = getattr(model, "steps", None)
    return steps[-1][1] if steps else model


def fit_info(model) -> dict:
    """The fitted model's ``info_``, plus the PCA's explained variance share when a PCA step is present."""
    info = dict(final_estimator(model).info_)
    steps = dict(getattr(model, "steps", []))
    if "pca" in steps:
        info["pca_explained_variance_ratio"] = float(steps["pca"].pca_.explained_variance_ratio_.sum())
    return info
