"""Metrics against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geoembed.evaluate import metrics as M
from geoembed.evaluate.synthetic import make_risk_table


def test_poisson_deviance_by_hand():
    y = np.array([0.0, 1.0, 2.0])
    mu = np.array([0.5, 1.0, 4.0])
    # 2*(0 - (0 - 0.5)) = 1; 0; 2*(2 log(1/2) - (2 - 4)) = 4 - 4 log 2
    expect = [1.0, 0.0, 4 - 4 * math.log(2)]
    assert M.unit_deviance(y, mu, "poisson") == pytest.approx(expect, abs=1e-12)
    assert M.deviance(y, mu, "poisson") == pytest.approx(sum(expect), abs=1e-12)


def test_gamma_deviance_by_hand():
    y = np.array([1.0, 2.0, 3.0])
    mu = np.array([2.0, 2.0, 1.0])
    # 2*(-log(1/2) + (1-2)/2) = 2 log 2 - 1; 0; 2*(-log 3 + 2) = 4 - 2 log 3
    expect = [2 * math.log(2) - 1, 0.0, 4 - 2 * math.log(3)]
    assert M.unit_deviance(y, mu, "gamma") == pytest.approx(expect, abs=1e-12)


def test_tweedie_deviance_by_hand():
    y = np.array([1.0, 0.0, 4.0])
    mu = np.array([1.0, 1.0, 1.0])
    # p = 1.5: 2*(y^.5/(-.25) - y mu^-.5/(-.5) + mu^.5/.5) -> 0, 4, 2*(-8 + 8 + 2) = 4
    assert M.unit_deviance(y, mu, "tweedie", power=1.5) == pytest.approx([0.0, 4.0, 4.0], abs=1e-12)
    # p -> 1 and p -> 2 limits meet Poisson and Gamma
    y2, mu2 = np.array([2.0, 3.0]), np.array([1.5, 4.0])
    assert M.deviance(y2, mu2, "tweedie", 1.0 + 1e-7) == pytest.approx(M.deviance(y2, mu2, "poisson"), rel=1e-5)
    assert M.deviance(y2, mu2, "tweedie", 2.0 - 1e-7) == pytest.approx(M.deviance(y2, mu2, "gamma"), rel=1e-5)


def test_gaussian_and_binomial_deviance_by_hand():
    assert M.deviance([1.0, 3.0], [2.0, 2.0], "gaussian") == pytest.approx(2.0)
    d = M.unit_deviance(np.array([1.0, 0.0]), np.array([0.5, 0.25]), "binomial")
    assert d == pytest.approx([2 * math.log(2), 2 * math.log(1 / 0.75)], abs=1e-12)


@pytest.mark.parametrize("family,power", [("poisson", 1.5), ("gamma", 1.5), ("tweedie", 1.3),
                                          ("gaussian", 1.5), ("binomial", 1.5)])
def test_deviance_matches_statsmodels(family, power):
    import statsmodels.api as sm

    rng = np.random.default_rng(1)
    mu = rng.uniform(0.1, 0.9, 50)
    y = {"poisson": rng.poisson(mu * 5) / 1.0, "gamma": rng.gamma(2, mu), "tweedie": rng.poisson(mu * 3) * 0.7,
         "gaussian": rng.normal(mu), "binomial": (rng.uniform(size=50) < mu) * 1.0}[family]
    fam = {"poisson": sm.families.Poisson(), "gamma": sm.families.Gamma(),
           "tweedie": sm.families.Tweedie(var_power=power), "gaussian": sm.families.Gaussian(),
           "binomial": sm.families.Binomial()}[family]
    m = mu * 5 if family == "poisson" else mu * 2 if family == "gamma" else mu
    assert M.deviance(y, m, family, power) == pytest.approx(fam.deviance(y, m), rel=1e-9)


def test_unknown_family_is_an_input_error():
    from geoembed.errors import InputError

    with pytest.raises(InputError, match="unknown family 'negbin'"):
        M.unit_deviance([1.0], [1.0], "negbin")


def test_gini_by_hand():
    y = np.array([0.0, 0.0, 1.0, 1.0])
    # perfect ordering: Lorenz (0,0),(.25,0),(.5,0),(.75,.5),(1,1): area 0.25 -> Gini 0.5
    assert M.gini(y, np.array([0.1, 0.2, 0.3, 0.4])) == pytest.approx(0.5)
    assert M.gini(y, np.array([0.4, 0.3, 0.2, 0.1])) == pytest.approx(-0.5)
    assert M.gini(y, np.array([0.1, 0.2, 0.3, 0.4]), normalize=True) == pytest.approx(1.0)


def test_gini_is_exposure_weighted_and_ordered_by_rate():
    y = np.array([1.0, 0.0])
    e = np.array([1.0, 3.0])
    mu = np.array([0.5, 0.3])  # rates 0.5 and 0.1: row 1 first
    x, c = M.lorenz_curve(y, mu, e)
    assert x == pytest.approx([0.0, 0.75, 1.0])
    assert c == pytest.approx([0.0, 0.0, 1.0])
    assert M.gini(y, mu, e) == pytest.approx(1 - 2 * 0.125)


def test_actual_expected_by_decile():
    mu = np.arange(1.0, 21.0)
    factor = np.repeat(np.arange(1.0, 11.0), 2)  # rows sorted by mu: two rows per decile
    y = mu * factor
    rng = np.random.default_rng(0)
    perm = rng.permutation(20)
    assert M.actual_expected_by_decile(y[perm], mu[perm]) == pytest.approx(np.arange(1.0, 11.0))
    # exposure-weighted bins: cumulative exposure midpoints .125, .375, .75 -> bins 0, 0, 1
    assert M.decile_index(np.array([1.0, 2.0, 6.0]), np.array([1.0, 1.0, 2.0]), n_bins=2).tolist() == [0, 0, 1]
    ae = M.actual_expected_by_decile([1.0, 1.0, 9.0], [1.0, 2.0, 6.0], [1.0, 1.0, 2.0], n_bins=2)
    assert ae == pytest.approx([2 / 3, 1.5])


def test_true_mean_beats_exposure_only_model():
    t = make_risk_table(n=3000, family="poisson", rate=0.3, seed=3)
    y, mu, e = t["y"].to_numpy(), t["true_mu"].to_numpy(), t["exposure"].to_numpy()
    null = e * y.sum() / e.sum()
    s = M.score(y, mu, null, "poisson", exposure=e)
    assert s["deviance_ratio"] < 0.95
    assert s["gini"] > 0.1
    # and the exposure-only model scores exactly 1 against itself
    assert M.score(y, null, null, "poisson")["deviance_ratio"] == pytest.approx(1.0)
