"""Fusion head: concatenated view embeddings -> MLP -> d-dimensional joint embedding (LayerNorm)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

__all__ = ["FusionHead"]


class FusionHead(nn.Module):
    """The paper's fusion: concatenate view vectors (in ``names`` order), Linear-ReLU-Linear, LayerNorm."""

    def __init__(self, names: Sequence[str], dims: Mapping[str, int], out_dim: int, hidden: int = 128):
        super().__init__()
        self.names = list(names)
        total = sum(int(dims[n]) for n in self.names)
        self.net = nn.Sequential(nn.Linear(total, hidden), nn.ReLU(), nn.Linear(hidden, out_dim),
                                 nn.LayerNorm(out_dim))

    def forward(self, views: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.net(torch.cat([views[n] for n in self.names], dim=1))
