"""GLM / GAM / GBM adapters on simulated tables with a known smooth spatial effect."""

from __future__ import annotations

import numpy as np
import pytest

from geoembed.config.evaluate import EvaluateConfig, GBMConfig
from geoembed.evaluate import Design, make_model, null_predict, run_evaluation, summary_table
from geoembed.evaluate.metrics import deviance
from geoembed.evaluate.synthetic import make_risk_table

EMB = ["emb_0", "emb_1", "emb_2", "emb_3", "emb_4"]
FAST_GBM = {"num_boost_round": 200, "learning_rate": 0.1, "early_stopping_rounds": 20}


def _ratio(name, design, t, family="poisson", link="log", cfg=None, n_train=600):
    tr, te = np.arange(n_train), np.arange(n_train, len(t))
    y = t["y"].to_numpy()
    off = np.log(t["exposure"].to_numpy()) if family == "poisson" else None
    inner = np.zeros(n_train, bool)
    inner[: n_train // 5] = True
    m = make_model(name, design, family, link, cfg=cfg).fit(t.iloc[tr], y[tr], None if off is None else off[tr],
                                                              inner)
    mu = m.predict(t.iloc[te], None if off is None else off[te])
    mu0 = null_predict(y[tr], None if off is None else off[tr], None if off is None else off[te], family, link) \
        if off is not None else np.full(len(te), y[tr].mean())
    return deviance(y[te], mu, family) / deviance(y[te], mu0, family), m


@pytest.fixture(scope="module")
def pois():
    return make_risk_table(n=900, family="poisson", rate=0.5, seed=11)


@pytest.mark.parametrize("name", ["glm", "gam", "gbm"])
def test_embeddings_beat_none_on_a_smooth_spatial_effect(pois, name):
    cfg = GBMConfig(**FAST_GBM) if name == "gbm" else None
    r_none, _ = _ratio(name, Design(numeric=["age"], categorical=["zone"]), pois, cfg=cfg)
    r_emb, _ = _ratio(name, Design(numeric=["age"], categorical=["zone"], embeddings=EMB), pois, cfg=cfg)
    assert r_emb < r_none - 0.1, (r_none, r_emb)
    assert r_emb < 0.85


def test_gam_tensor_smooth_beats_linear_coordinates(pois):
    coords = Design(coords=("lon", "lat"))
    r_glm, _ = _ratio("glm", coords, pois)
    r_gam, gam = _ratio("gam", coords, pois)
    assert r_gam < r_glm - 0.05 and r_gam < 0.9, (r_glm, r_gam)
    assert "alpha" in gam.info


def test_glm_given_the_true_log_mean_recovers_it(pois):
    t = pois.assign(logtrue=np.log(pois["true_mu"] / pois["exposure"]))
    r, m = _ratio("glm", Design(numeric=["logtrue"]), t)
    assert r < 0.8
    # the standardised coefficient maps back to slope ~1 on the log-rate
    slope = m.params_[1] / m.prep.sd_[0]
    assert slope == pytest.approx(1.0, abs=0.15)


def test_lightgbm_with_large_rates_does_not_diverge():
    t = make_risk_table(n=700, family="poisson", rate=5000.0, seed=2)
    cfg = GBMConfig(**FAST_GBM)
    r, m = _ratio("gbm", Design(embeddings=EMB), t, cfg=cfg)
    assert np.isfinite(r) and r < 0.5, r
    assert m.info["base_score"] == pytest.approx(np.log(5000.0), abs=0.7)
    # total predicted = total observed on training rows to within a few percent (no runaway scores)
    y, e = t["y"].to_numpy()[:600], t["exposure"].to_numpy()[:600]
    mu = m.predict(t.iloc[:600], np.log(e))
    assert mu.sum() == pytest.approx(y.sum(), rel=0.05)


def test_gbm_is_deterministic(pois):
    cfg = GBMConfig(**FAST_GBM)
    _, a = _ratio("gbm", Design(embeddings=EMB), pois, cfg=cfg)
    _, b = _ratio("gbm", Design(embeddings=EMB), pois, cfg=cfg)
    assert np.array_equal(a.predict(pois), b.predict(pois))


@pytest.mark.parametrize("family,link", [("gamma", "log"), ("gaussian", "identity"), ("binomial", "logit"),
                                         ("tweedie", "log"), ("poisson", "identity")])
def test_other_families_fit_and_beat_the_intercept(family, link):
    t = make_risk_table(n=700, family=family, rate=0.8, seed=4)
    if link == "identity" and family == "poisson":  # a mean that is linear in the features
        rng = np.random.default_rng(0)
        t["y"] = rng.poisson(3.0 + 1.5 * t["emb_0"] + t["emb_1"]).astype(float)
    for name in ("glm", "gbm"):
        cfg = GBMConfig(**FAST_GBM) if name == "gbm" else None
        r, m = _ratio(name, Design(embeddings=EMB[:3]), t, family=family, link=link, cfg=cfg)
        assert np.isfinite(r) and r < 1.0, (family, link, name, r)


def test_evaluate_with_categorical_and_unseen_levels(pois):
    t = pois.copy()
    t.loc[t.index[-5:], "zone"] = "NEW"  # only in the last rows: unseen in some training folds
    cfg = EvaluateConfig(table="x", target="y", exposure="exposure", covariates=["age"], categorical=["zone"],
                         features=["none", "embeddings"], models=["glm", "gbm"],
                         split={"kind": "random", "n_folds": 3}, gbm=FAST_GBM)
    res = run_evaluation(t, cfg)
    s = summary_table(res.records)
    assert len(s) == 4 and np.isfinite(s["deviance_ratio"]).all()
    assert set(res.records["fold"].astype(str)) == {"0", "1", "2", "pooled"}
    assert len(res.predictions) == len(t) and res.predictions["null"].notna().all()


def test_glm_ridge_shrinks_towards_the_exposure_only_model(pois):
    from geoembed.config.evaluate import GLMConfig

    design = Design(embeddings=EMB)
    _, plain = _ratio("glm", design, pois)
    _, ridged = _ratio("glm", design, pois, cfg=GLMConfig(ridge=10.0))
    assert np.abs(ridged.params_[1:]).max() < 0.05 * np.abs(plain.params_[1:]).max()
    off = np.log(pois["exposure"].to_numpy())
    base = null_predict(pois["y"].to_numpy()[:600], off[:600], off, "poisson", "log")
    assert ridged.predict(pois, off) == pytest.approx(base, rel=0.1)


@pytest.mark.parametrize("family,link", [("poisson", "log"), ("gamma", "log"), ("binomial", "logit")])
def test_pirls_matches_statsmodels_glmgam(family, link):
    """Our penalised IRLS gives GLMGam's coefficients for the same smooths, penalty and offset."""
    from statsmodels.gam.generalized_additive_model import GLMGam

    from geoembed.evaluate.models import _Smooth, _SmootherSet, pirls, sm_family

    t = make_risk_table(n=300, family=family, rate=1.0, seed=6)
    smooths = [_Smooth(["emb_0"], 6, 3).fit(t), _Smooth(["lon", "lat"], 5, 3).fit(t)]
    lin = np.ones((len(t), 1))
    alphas = [0.7, 2.0]
    off = np.log(t["exposure"].to_numpy()) if family != "binomial" else None
    fam = sm_family(family, link)
    y = t["y"].to_numpy()
    res = GLMGam(y, exog=lin, smoother=_SmootherSet(smooths, len(t)), alpha=alphas, family=fam,
                 offset=off).fit()
    from scipy.linalg import block_diag

    P = block_diag(np.zeros((1, 1)), *[2 * a * s.cov_der2 for a, s in zip(alphas, smooths, strict=True)])
    X = np.hstack([lin, *[s.basis for s in smooths]])
    beta, edf, _ = pirls(X, y, fam, off, P)
    assert beta == pytest.approx(np.asarray(res.params), rel=2e-3, abs=5e-4)  # both stop at ~1e-8 deviance change
    if family != "gamma":  # canonical links: expected = observed information, so the edf agree
        assert edf == pytest.approx(float(res.edf.sum()), rel=1e-3)


def test_evaluate_leave_region_out_bbox(pois):
    cfg = EvaluateConfig(target="y", exposure="exposure", features=["embeddings"], models=["glm"],
                         split={"kind": "leave_region_out", "bbox": [4.30, 50.80, 4.375, 50.85]})
    res = run_evaluation(pois, cfg)
    inside = int(((pois.lon <= 4.375) & (pois.lat <= 50.85)).sum())
    assert list(res.records["fold"].astype(str)) == ["0", "pooled"]
    assert res.records["n_test"].tolist() == [inside, inside]
    assert res.records["n_train"].iloc[0] == len(pois) - inside
    assert res.records["deviance_ratio"].iloc[0] < 0.9


def test_gbm_gaussian_with_exposure_models_the_rate():
    t = make_risk_table(n=800, family="gaussian", rate=1.0, seed=12)
    t["y"] = t["y"] * t["exposure"]  # a total proportional to exposure
    off = np.log(t["exposure"].to_numpy())
    m = make_model("gbm", Design(embeddings=EMB[:3]), "gaussian", "log", cfg=GBMConfig(**FAST_GBM))
    m.fit(t.iloc[:600], t["y"].to_numpy()[:600], off[:600])
    mu = m.predict(t.iloc[600:], off[600:])
    mu_rate = m.predict(t.iloc[600:], None)
    assert mu == pytest.approx(mu_rate * t["exposure"].to_numpy()[600:])
    assert np.corrcoef(mu, t["true_mu"].to_numpy()[600:] * t["exposure"].to_numpy()[600:])[0, 1] > 0.7
