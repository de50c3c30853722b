"""Contrastive loss: closed forms, symmetry, masking, temperature clamp."""

from __future__ import annotations

import math

import pytest
import torch

from geoembed.nn.losses import ContrastiveLoss, info_nce, logits_loss


def test_identical_logits_give_log_n():
    for n in (2, 7, 64):
        assert logits_loss(torch.full((n, n), 3.3)).item() == pytest.approx(math.log(n), rel=1e-6)
        a = torch.ones(n, 4)
        assert info_nce(a, a.clone(), 10.0).item() == pytest.approx(math.log(n), rel=1e-6)


def test_loss_is_symmetric_and_matches_closed_form():
    torch.manual_seed(0)
    a, b = torch.randn(16, 8), torch.randn(16, 8)
    s = 5.0
    assert info_nce(a, b, s).item() == pytest.approx(info_nce(b, a, s).item(), rel=1e-6)
    an, bn = torch.nn.functional.normalize(a, dim=1), torch.nn.functional.normalize(b, dim=1)
    logits = s * an @ bn.T
    rows = -(logits.diagonal() - logits.logsumexp(1)).mean()
    cols = -(logits.diagonal() - logits.logsumexp(0)).mean()
    assert info_nce(a, b, s).item() == pytest.approx(0.5 * (rows + cols).item(), rel=1e-6)


def test_perfect_alignment_goes_to_zero():
    e = torch.eye(8)
    assert info_nce(e, e, 100.0).item() < 1e-6


def test_mask_removes_samples_entirely():
    torch.manual_seed(1)
    a, b = torch.randn(10, 4), torch.randn(10, 4)
    valid = torch.tensor([1, 1, 0, 1, 0, 1, 1, 1, 0, 1], dtype=torch.bool)
    masked = info_nce(a, b, 7.0, valid)
    subset = info_nce(a[valid], b[valid], 7.0)
    assert masked.item() == pytest.approx(subset.item(), rel=1e-6)
    # Zero-filling invalid rows instead would give a different value.
    az = a.clone()
    az[~valid] = 0
    assert abs(info_nce(az, b, 7.0).item() - subset.item()) > 1e-3
    # Gradients do not reach invalid rows.
    a.requires_grad_(True)
    info_nce(a, b, 7.0, valid).backward()
    assert a.grad[~valid].abs().max() == 0 and a.grad[valid].abs().max() > 0


def test_contrastive_modes_and_temperature_clamp():
    torch.manual_seed(2)
    coords = torch.randn(12, 4)
    views = {"x": torch.randn(12, 4), "y": torch.randn(12, 4)}
    valid = {"x": torch.ones(12, dtype=torch.bool), "y": torch.arange(12) % 3 != 0}
    pair = ContrastiveLoss("pairwise", view_pairs=True)
    loss, terms = pair(coords, views, valid)
    assert set(terms) == {"x", "y", "x~y"}
    expect = (info_nce(views["x"], coords, pair.logit_scale()) + info_nce(views["y"][valid["y"]],
              coords[valid["y"]], pair.logit_scale()) + info_nce(views["x"][valid["y"]],
              views["y"][valid["y"]], pair.logit_scale())) / 3
    assert loss.item() == pytest.approx(expect.item(), rel=1e-5)
    fused = ContrastiveLoss("fused", temperature_init=0.07, temperature_min=0.01)
    assert fused.temperature == pytest.approx(0.07, rel=1e-5)
    with torch.no_grad():
        fused.log_scale.fill_(50.0)
    assert fused.temperature == pytest.approx(0.01, rel=1e-5)  # clamped
    assert isinstance(fused.log_scale, torch.nn.Parameter)
    with pytest.raises(ValueError):
        ContrastiveLoss("nope")
