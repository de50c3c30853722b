"""Simulated risk tables with a known smooth spatial effect, for tests, benchmarks and examples."""

from __future__ import annotations

import numpy as np
import pandas as pd


def spatial_effect(lon, lat, bbox=(4.30, 50.80, 4.45, 50.90)) -> np.ndarray:
    """The true log-rate spatial effect: a smooth, non-linear surface over ``bbox``."""
    u = (np.asarray(lon, float) - bbox[0]) / (bbox[2] - bbox[0])
    v = (np.asarray(lat, float) - bbox[1]) / (bbox[3] - bbox[1])
    return 0.8 * np.sin(2 * np.pi * u) + 0.6 * np.cos(2 * np.pi * v)


def make_risk_table(n: int = 800, family: str = "poisson", rate: float = 0.1, seed: int = 0,
                    n_noise_emb: int = 2, bbox=(4.30, 50.80, 4.45, 50.90)) -> pd.DataFrame:
    """A policy-like table: ``lon``, ``lat``, ``exposure``, ``age`` (numeric), ``zone`` (categorical),
    ``region`` (quadrant name), ``emb_*`` (smooth features of location plus noise), ``true_mu`` and ``y``.

    The mean is ``exposure * rate * exp(spatial_effect + 0.3 * age_std + zone effect)`` for poisson,
    gamma, tweedie (``y`` a count, a positive amount or a compound Poisson-gamma amount), the same without
    exposure factor for gaussian (noise sd 0.3 x mean), and logistic(2 eta - 0.5) for binomial.
    ``emb_0..emb_2`` are smooth non-linear functions of location that span the true effect; the last
    ``n_noise_emb`` are noise.
    """
    rng = np.random.default_rng(seed)
    lon = rng.uniform(bbox[0], bbox[2], n)
    lat = rng.uniform(bbox[1], bbox[3], n)
    u = (lon - bbox[0]) / (bbox[2] - bbox[0])
    v = (lat - bbox[1]) / (bbox[3] - bbox[1])
    age = rng.normal(40, 12, n)
    zone = rng.choice(["A", "B", "C"], n)
    zone_eff = np.select([zone == "B", zone == "C"], [0.2, -0.3], 0.0)
    eta = spatial_effect(lon, lat, bbox) + 0.3 * (age - 40) / 12 + zone_eff
    exposure = rng.uniform(0.2, 1.5, n)
    cols = {"lon": lon, "lat": lat, "exposure": exposure, "age": age, "zone": zone,
            "region": np.where(u < 0.5, "W", "E").astype(object) + np.where(v < 0.5, "S", "N").astype(object)}
    cols["emb_0"] = np.sin(2 * np.pi * u)
    cols["emb_1"] = np.cos(2 * np.pi * v)
    cols["emb_2"] = np.sin(np.pi * u) * np.cos(np.pi * v)
    for k in range(n_noise_emb):
        cols[f"emb_{3 + k}"] = rng.normal(size=n)
    if family == "poisson":
        mu = exposure * rate * np.exp(eta)
        y = rng.poisson(mu).astype(float)
    elif family == "gamma":
        mu = exposure * rate * np.exp(eta)
        y = rng.gamma(shape=2.0, scale=mu / 2.0)
    elif family == "tweedie":
        mu = exposure * rate * np.exp(eta)
        counts = rng.poisson(mu)
        # the sum of c Gamma(2, 0.5) claims (mean 1 each) is Gamma(2c, 0.5)
        y = np.where(counts > 0, rng.gamma(np.maximum(2.0 * counts, 1e-9), 0.5), 0.0)
    elif family == "gaussian":
        mu = 100.0 * rate * np.exp(eta)
        y = mu + rng.normal(0, 0.3 * mu)
    elif family == "binomial":
        mu = 1.0 / (1.0 + np.exp(-(2.0 * eta - 0.5)))
        y = (rng.uniform(size=n) < mu).astype(float)
    else:
        raise ValueError(f"unknown family {family!r}")
    cols["true_mu"] = mu
    cols["y"] = y
    return pd.DataFrame(cols)
