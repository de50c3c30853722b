"""Contrastive objectives: symmetric InfoNCE with a learnable temperature (clamped unless asked not to).

* ``fused`` (paper parity): one symmetric InfoNCE between the fused view embedding and the coordinate
  embedding; a sample enters only if all its views are valid.
* ``pairwise``: one InfoNCE per view against the coordinates (optionally also per pair of views), each
  over the samples valid for that view; the terms are averaged.

Invalid samples are removed from a term (neither positive nor negative), never zero-filled.
Under torch.distributed the embeddings are gathered across processes (with gradient for the local
shard) so that negatives span the global batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ContrastiveLoss", "gather_with_grad", "info_nce"]


def info_nce(
    a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor | float, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP) between row-aligned embeddings ``a`` and ``b`` (L2-normalised here).

    ``logits = scale * a_n @ b_n.T``; loss = mean of the cross-entropies over rows and over columns with
    the diagonal as targets. Equals ``log N`` when all logits are equal. ``valid`` (bool ``(N,)``)
    removes samples entirely (as rows and as columns): the result equals the loss on the valid subset,
    computed without data-dependent shapes (no device synchronisation).
    """
    a = F.normalize(a.float(), dim=-1)
    b = F.normalize(b.float(), dim=-1)
    logits = logit_scale * (a @ b.t())
    return logits_loss(logits, valid)


def logits_loss(logits: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric cross-entropy of a square logit matrix against the identity pairing (masked)."""
    target = torch.arange(logits.shape[0], device=logits.device)
    if valid is None:
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    # exp(-1e4) underflows to exactly 0, so masked columns contribute nothing to valid rows.
    col_off = (~valid)[None, :]
    rows = F.cross_entropy(logits.masked_fill(col_off, -1e4), target, reduction="none")
    cols = F.cross_entropy(logits.t().masked_fill(col_off, -1e4), target, reduction="none")
    w = valid.to(logits.dtype)
    return 0.5 * ((rows * w).sum() + (cols * w).sum()) / w.sum().clamp_min(1.0)


def _dist_world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all processes (rank order); the local shard keeps its gradient."""
    import torch.distributed as dist

    if _dist_world() == 1:
        return x
    if x.dtype == torch.bool:  # gloo cannot gather bool
        return gather_with_grad(x.to(torch.uint8)).bool()
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts, dim=0)


class ContrastiveLoss(nn.Module):
    """Symmetric InfoNCE over named embeddings with a learnable temperature.

    The temperature starts at ``temperature_init`` (0.07 in the paper) and is clamped to
    ``[temperature_min, 1]``; ``temperature_min=None`` leaves it unclamped, as the reference code did.
    """

    def __init__(self, mode: str = "fused", view_pairs: bool = False, temperature_init: float = 0.07,
                 temperature_min: float | None = 0.01, learnable: bool = True):
        super().__init__()
        if mode not in ("fused", "pairwise"):
            raise ValueError(f"unknown objective {mode!r}")
        self.mode = mode
        self.view_pairs = view_pairs
        self.max_log_scale = None if temperature_min is None else math.log(1.0 / temperature_min)
        init = torch.tensor(math.log(1.0 / temperature_init), dtype=torch.float32)
        if learnable:
            self.log_scale = nn.Parameter(init)
        else:
            self.register_buffer("log_scale", init)

    def logit_scale(self) -> torch.Tensor:
        """``exp(log_scale)``, clamped to ``[1, 1/temperature_min]`` unless unclamped."""
        if self.max_log_scale is None:
            return self.log_scale.exp()
        return self.log_scale.clamp(0.0, self.max_log_scale).exp()

    @property
    def temperature(self) -> float:
        return float(1.0 / self.logit_scale().detach())

    def forward(
        self,
        coords: torch.Tensor,
        views: Mapping[str, torch.Tensor],
        valid: Mapping[str, torch.Tensor],
        gather: bool = True,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss over a batch: ``coords`` ``(B, d)``, ``views[name]`` ``(B, d)``, ``valid[name]`` ``(B,)`` bool.

        In ``fused`` mode ``views`` holds one entry (the fused embedding) whose ``valid`` is the AND of
        all views. ``gather=False`` skips the cross-process gather (e.g. for evaluation on full data).
        Returns the loss and the detached per-term losses (for logging).
        """
        scale = self.logit_scale()
        g = gather_with_grad if gather else (lambda t: t)
        coords = g(coords)
        g_views = {k: g(v) for k, v in views.items()}
        g_valid = {k: g(m) for k, m in valid.items()}
        terms: dict[str, torch.Tensor] = {}
        for name, emb in g_views.items():
            terms[name] = info_nce(emb, coords, scale, g_valid[name])
        if self.mode == "pairwise" and self.view_pairs:
            names = list(g_views)
            for i, a in enumerate(names):
                for b in names[i + 1 :]:
                    terms[f"{a}~{b}"] = info_nce(g_views[a], g_views[b], scale, g_valid[a] & g_valid[b])
        loss = torch.stack(list(terms.values())).mean()
        return loss, {k: v.detach() for k, v in terms.items()}
