"""An ensemble of coordinate networks aligned by orthogonal Procrustes: one network, the mean of its members.

Contrastive training fixes an embedding only up to a rotation: two runs that differ only in their seed
give embeddings that agree after an orthogonal map, but not coordinate by coordinate. The ensemble
network holds ``members`` copies of one network spec and an orthogonal matrix per member
(``rotations``, a buffer saved with the weights); its output is

    mean_k  net_k(x) @ rotations[k]

:func:`procrustes_rotations` fits the rotations on the members' outputs at a set of locations
(generalised Procrustes: each member rotated onto the running mean). Rotations keep each member's
geometry (its cosine similarities, hence what it learnt contrastively) and only remove the arbitrary
orientation, so the average keeps what the members agree on and damps what one seed made up.

Spec: ``{"type": "ensemble", "members": K, "member": {<network spec>}}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from geoembed.errors import ConfigError

__all__ = ["Ensemble", "procrustes_rotations"]


class Ensemble(nn.Module):
    """``members`` networks of the spec ``member``, each followed by its rotation, averaged (module doc)."""

    def __init__(self, in_dim: int, out_dim: int, members: int, member: Mapping):
        super().__init__()
        from geoembed.nn.networks import build_network, check_network_spec
        from geoembed.nn.specs import within

        if isinstance(members, bool) or not isinstance(members, int) or members < 2:
            raise ConfigError(f"an ensemble needs an integer number of members >= 2, got {members!r}")
        try:
            check_network_spec(member)
        except ConfigError as err:
            raise within("member", err) from None
        if dict(member).get("type") == "ensemble":
            raise ConfigError("an ensemble's member cannot itself be an ensemble")
        self.nets = nn.ModuleList(build_network(member, in_dim, out_dim) for _ in range(members))
        self.register_buffer("rotations", torch.eye(out_dim).repeat(members, 1, 1))

    def member_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """``(members, N, out_dim)``: each member's own output, before its rotation."""
        return torch.stack([net(x) for net in self.nets])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.nets[0](x) @ self.rotations[0]
        for k in range(1, len(self.nets)):
            out = out + self.nets[k](x) @ self.rotations[k]
        return out / len(self.nets)


def _orthogonal_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The orthogonal ``R`` minimising ``||a @ R - b||_F`` (SVD of ``a.T @ b``)."""
    u, _, vt = np.linalg.svd(a.T @ b)
    return u @ vt


def procrustes_rotations(outputs: Sequence[np.ndarray], iterations: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Rotations aligning each member's ``(N, d)`` outputs onto their common mean (generalised Procrustes,
    starting from the first member). Returns ``(rotations (K, d, d), r2 (K,))``, where ``r2`` is the share
    of a member's (uncentred) sum of squares that the aligned mean explains: 1 for identical members up to
    a rotation, near 0 for unrelated ones."""
    xs = [np.asarray(o, dtype=np.float64) for o in outputs]
    if len(xs) < 2 or any(x.shape != xs[0].shape or x.ndim != 2 for x in xs):
        raise ValueError("procrustes_rotations needs at least two (N, d) arrays of the same shape")
    if not all(np.isfinite(x).all() for x in xs):
        raise ValueError("procrustes_rotations: a member's outputs hold NaN or infinite values")
    rots = [np.eye(xs[0].shape[1])] + [_orthogonal_map(x, xs[0]) for x in xs[1:]]
    for _ in range(iterations):
        mean = sum(x @ r for x, r in zip(xs, rots, strict=True)) / len(xs)
        rots = [_orthogonal_map(x, mean) for x in xs]
    mean = sum(x @ r for x, r in zip(xs, rots, strict=True)) / len(xs)
    r2 = np.array([1.0 - ((x @ r - mean) ** 2).sum() / max((x ** 2).sum(), 1e-300)
                   for x, r in zip(xs, rots, strict=True)])
    return np.stack(rots), r2
