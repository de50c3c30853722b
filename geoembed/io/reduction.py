"""Optional reduction of embeddings to k components (PCA, optionally whitened), stored as plain JSON.

A reduction is fitted on a reference table's embeddings (streamed: only the d x d covariance is
accumulated), tied to one bundle by its fingerprint, and saved as a small JSON file (no pickle)::

    {"format": "geoembed.reduction", "version": 1, "method": "pca" | "whiten",
     "bundle_fingerprint": ..., "embedding_dim": d, "n_components": k, "n_samples": n,
     "mean": [d floats], "components": [[d floats] x k], "explained_variance": [k floats], ...}

``transform(E) = (E - mean) @ components.T``, divided by ``sqrt(explained_variance)`` when whitened
(then each component has unit variance on the reference table: compact, comparable GLM inputs).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geoembed.errors import InputError

FORMAT = "geoembed.reduction"
VERSION = 1
METHODS = ("pca", "whiten")


def reduced_names(k: int) -> list[str]:
    """Column names of reduced components: ``emb_pc_0 .. emb_pc_{k-1}``."""
    return [f"emb_pc_{i}" for i in range(k)]


class CovarianceAccumulator:
    """Streaming mean and covariance (float64) of embedding rows, chunk by chunk."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.n = 0
        self._shift: np.ndarray | None = None
        self._sum = np.zeros(dim)
        self._sq = np.zeros((dim, dim))

    def add(self, emb: np.ndarray) -> None:
        """Add rows (NaN rows must be removed by the caller)."""
        x = np.asarray(emb, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected (n, {self.dim}) embeddings, got {x.shape}")
        if not len(x):
            return
        if self._shift is None:  # shift by the first row for numerical stability
            self._shift = x[0].copy()
        x = x - self._shift
        self.n += len(x)
        self._sum += x.sum(axis=0)
        self._sq += x.T @ x

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            raise InputError(f"a reduction needs at least 2 valid rows; got {self.n} sample(s)")
        m = self._sum / self.n
        cov = (self._sq - self.n * np.outer(m, m)) / (self.n - 1)
        return m + self._shift, (cov + cov.T) / 2


@dataclass
class Reduction:
    """A fitted linear reduction of d-dimensional embeddings to k components."""

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    method: str = "pca"
    bundle_fingerprint: str = ""
    n_samples: int = 0
    info: dict = field(default_factory=dict)

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    @property
    def embedding_dim(self) -> int:
        return int(self.components.shape[1])

    @property
    def names(self) -> list[str]:
        return reduced_names(self.n_components)

    @classmethod
    def from_covariance(cls, acc: CovarianceAccumulator, n_components: int, method: str = "pca",
                        bundle_fingerprint: str = "", info: dict | None = None) -> Reduction:
        """Principal axes of the accumulated covariance (deterministic signs)."""
        if method not in METHODS:
            raise InputError(f"unknown reduction method {method!r}; choose one of {METHODS}")
        if not 1 <= n_components <= acc.dim:
            raise InputError(f"n_components must be between 1 and the embedding dimension {acc.dim}, "
                             f"got {n_components}")
        mean, cov = acc.mean_cov()
        evals, evecs = np.linalg.eigh(cov)
        order = np.argsort(evals)[::-1][:n_components]
        evals = np.clip(evals[order], 0.0, None)
        comps = evecs[:, order].T.copy()
        # Sign convention (as scikit-learn's svd_flip): the largest-magnitude loading is positive.
        signs = np.sign(comps[np.arange(len(comps)), np.argmax(np.abs(comps), axis=1)])
        comps *= np.where(signs == 0, 1.0, signs)[:, None]
        if method == "whiten" and np.any(evals <= 1e-12 * max(1.0, float(evals.max(initial=0.0)))):
            raise InputError("cannot whiten: the reference embeddings have (near) zero variance along a "
                             "requested component; ask for fewer components")
        info = {**(info or {}), "total_variance": float(np.trace(cov))}
        return cls(mean=mean, components=comps, explained_variance=evals, method=method,
                   bundle_fingerprint=bundle_fingerprint, n_samples=acc.n, info=info)

    @classmethod
    def fit(cls, emb: np.ndarray, n_components: int, method: str = "pca", bundle_fingerprint: str = "",
            info: dict | None = None) -> Reduction:
        """Fit on an in-memory (n, d) array of embeddings (rows with NaN are ignored)."""
        emb = np.asarray(emb)
        emb = emb[np.isfinite(emb).all(axis=1)]
        acc = CovarianceAccumulator(emb.shape[1])
        acc.add(emb)
        return cls.from_covariance(acc, n_components, method, bundle_fingerprint, info)

    def transform(self, emb: np.ndarray, dtype=np.float32) -> np.ndarray:
        """Project (n, d) embeddings to (n, k) components; NaN rows stay NaN."""
        emb = np.asarray(emb)
        if emb.ndim != 2 or emb.shape[1] != self.embedding_dim:
            raise InputError(f"the reduction expects {self.embedding_dim}-dimensional embeddings, "
                             f"got shape {emb.shape}")
        w = self.components.T
        if self.method == "whiten":
            w = w / np.sqrt(self.explained_variance)[None, :]
        out = (emb.astype(np.float64, copy=False) - self.mean) @ w
        return out.astype(dtype, copy=False)

    def to_dict(self) -> dict:
        return {
            "format": FORMAT, "version": VERSION, "method": self.method,
            "bundle_fingerprint": self.bundle_fingerprint, "embedding_dim": self.embedding_dim,
            "n_components": self.n_components, "n_samples": self.n_samples,
            "columns": self.names, "info": self.info,
            "mean": self.mean.tolist(), "components": self.components.tolist(),
            "explained_variance": self.explained_variance.tolist(),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the reduction as JSON, atomically."""
        from geoembed.io.atomic import atomic_write_text

        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def from_dict(cls, d: dict, origin: str = "<dict>") -> Reduction:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise InputError(f"{origin} is not a geoembed reduction file (no \"format\": \"{FORMAT}\")")
        if d.get("version") != VERSION:
            raise InputError(f"{origin}: unsupported reduction version {d.get('version')!r} (expected {VERSION})")
        try:
            mean = np.asarray(d["mean"], dtype=np.float64)
            comps = np.asarray(d["components"], dtype=np.float64)
            ev = np.asarray(d["explained_variance"], dtype=np.float64)
            method = d["method"]
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"{origin}: malformed reduction file ({err})") from None
        if comps.ndim != 2 or mean.shape != (comps.shape[1],) or ev.shape != (comps.shape[0],) \
                or method not in METHODS:
            raise InputError(f"{origin}: inconsistent reduction file (mean {mean.shape}, components "
                             f"{comps.shape}, explained_variance {ev.shape}, method {method!r})")
        return cls(mean=mean, components=comps, explained_variance=ev, method=method,
                   bundle_fingerprint=str(d.get("bundle_fingerprint", "")),
                   n_samples=int(d.get("n_samples", 0)), info=dict(d.get("info") or {}))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Reduction:
        """Read a reduction JSON file; InputError names the file when it is missing or malformed."""
        p = Path(path)
        if not p.is_file():
            raise InputError(f"reduction file {p} does not exist")
        try:
            d = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InputError(f"cannot read reduction file {p}: {err}") from None
        return cls.from_dict(d, str(p))

    def check_bundle(self, fingerprint: str, dim: int, origin: str = "reduction") -> None:
        """Raise InputError unless this reduction was fitted on embeddings of the given bundle."""
        if self.embedding_dim != dim:
            raise InputError(f"{origin} expects {self.embedding_dim}-dimensional embeddings but the bundle "
                             f"gives {dim}")
        if self.bundle_fingerprint and fingerprint and self.bundle_fingerprint != fingerprint:
            raise InputError(f"{origin} was fitted on embeddings of bundle {self.bundle_fingerprint}, not "
                             f"of this bundle ({fingerprint}); refit it with `geoembed enrich fit-reduction`")
