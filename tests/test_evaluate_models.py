"""GLM / GAM / GBM estimators on simulated tables with a known smooth spatial effect."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import PredefinedSplit

from geoembed.config.evaluate import EvaluateConfig
from geoembed.evaluate import (
    GAMRegressor,
    GBMRegressor,
    GLMRegressor,
    null_predict,
    run_evaluation,
    summary_table,
)
from geoembed.evaluate.metrics import deviance
from geoembed.evaluate.synthetic import make_risk_table

EMB = ["emb_0", "emb_1", "emb_2", "emb_3", "emb_4"]
FAST_GBM = {"num_boost_round": 200, "learning_rate": 0.1, "early_stopping_rounds": 20}
CLASSES = {"glm": GLMRegressor, "gam": GAMRegressor, "gbm": GBMRegressor}


def make(name, family="poisson", link="log", numeric=(), categorical=(), emb=(), coords=None, **kw):
    """The estimator ``name`` with base columns, embeddings and coordinates in the roles the command uses."""
    expo = "exposure" if (family, link) == ("poisson", "log") else None
    common = {"family": family, "exposure": expo, "categorical": list(categorical), **kw}
    if name == "gam":
        return GAMRegressor(link=link, numeric=list(numeric), smooth=list(emb), tensor=coords, **common)
    cols = [*numeric, *(coords or ()), *emb]
    if name == "glm":
        return GLMRegressor(link=link, numeric=cols, **common)
    return GBMRegressor(numeric=cols, **{**FAST_GBM, **common})


def _ratio(est, t, family="poisson", link="log", n_train=600):
    tr, te = np.arange(n_train), np.arange(n_train, len(t))
    y = t["y"].to_numpy()
    off = np.log(t["exposure"].to_numpy()) if (family, link) == ("poisson", "log") else None
    inner = np.where(np.arange(n_train) < n_train // 5, 0, -1)  # one validation part for early stopping
    if "inner_cv" in est.get_params():
        est.set_params(inner_cv=PredefinedSplit(inner))
    m = est.fit(t.iloc[tr], y[tr])
    mu = m.predict(t.iloc[te])
    mu0 = null_predict(y[tr], None if off is None else off[tr], None if off is None else off[te], family, link) \
        if off is not None else np.full(len(te), y[tr].mean())
    return deviance(y[te], mu, family) / deviance(y[te], mu0, family), m


@pytest.fixture(scope="module")
def pois():
    return make_risk_table(n=900, family="poisson", rate=0.5, seed=11)


@pytest.mark.parametrize("name", ["glm", "gam", "gbm"])
def test_embeddings_beat_none_on_a_smooth_spatial_effect(pois, name):
    r_none, _ = _ratio(make(name, numeric=["age"], categorical=["zone"]), pois)
    r_emb, _ = _ratio(make(name, numeric=["age"], categorical=["zone"], emb=EMB), pois)
    assert r_emb < r_none - 0.1, (r_none, r_emb)
    assert r_emb < 0.85


def test_gam_tensor_smooth_beats_linear_coordinates(pois):
    r_glm, _ = _ratio(make("glm", coords=("lon", "lat")), pois)
    r_gam, gam = _ratio(make("gam", coords=("lon", "lat")), pois)
    assert r_gam < r_glm - 0.05 and r_gam < 0.9, (r_glm, r_gam)
    assert gam.info_["alpha"] == gam.alpha_ and 1 < gam.edf_ < 37


def test_glm_given_the_true_log_mean_recovers_it(pois):
    t = pois.assign(logtrue=np.log(pois["true_mu"] / pois["exposure"]))
    r, m = _ratio(make("glm", numeric=["logtrue"]), t)
    assert r < 0.8
    # the standardised coefficient maps back to slope ~1 on the log-rate
    slope = m.coef_[0] / m.preprocessor_.named_transformers_["num"].scale_[0]
    assert slope == pytest.approx(1.0, abs=0.15)


def test_glm_matches_statsmodels():
    """glum's maximum-likelihood GLM (offset, standardised columns, one-hot level) = statsmodels' GLM."""
    import statsmodels.api as sm

    t = make_risk_table(n=500, family="poisson", rate=0.8, seed=3)
    m = GLMRegressor(exposure="exposure", numeric=["age", "emb_0"], categorical=["zone"]).fit(t, t["y"])
    Z = m.preprocessor_.transform(t)
    assert m.feature_names_ == ["age", "emb_0", "zone_B", "zone_C"]
    ref = sm.GLM(t["y"], sm.add_constant(Z), family=sm.families.Poisson(), offset=np.log(t["exposure"])).fit()
    assert np.r_[m.intercept_, m.coef_] == pytest.approx(np.asarray(ref.params), rel=1e-6, abs=1e-8)


def test_lightgbm_with_large_rates_does_not_diverge():
    t = make_risk_table(n=700, family="poisson", rate=5000.0, seed=2)
    r, m = _ratio(make("gbm", emb=EMB), t)
    assert np.isfinite(r) and r < 0.5, r
    assert m.info_["base_score"] == pytest.approx(np.log(5000.0), abs=0.7)
    # total predicted = total observed on training rows to within a few percent (no runaway scores)
    mu = m.predict(t.iloc[:600])
    assert mu.sum() == pytest.approx(t["y"].to_numpy()[:600].sum(), rel=0.05)


def test_gbm_is_deterministic(pois):
    _, a = _ratio(make("gbm", emb=EMB), pois)
    _, b = _ratio(make("gbm", emb=EMB), pois)
    assert np.array_equal(a.predict(pois), b.predict(pois))


@pytest.mark.parametrize("family,link", [("gamma", "log"), ("gaussian", "identity"), ("binomial", "logit"),
                                         ("tweedie", "log"), ("poisson", "identity")])
def test_other_families_fit_and_beat_the_intercept(family, link):
    t = make_risk_table(n=700, family=family, rate=0.8, seed=4)
    if link == "identity" and family == "poisson":  # a mean that is linear in the features
        rng = np.random.default_rng(0)
        t["y"] = rng.poisson(3.0 + 1.5 * t["emb_0"] + t["emb_1"]).astype(float)
    for name in ("glm", "gam", "gbm"):
        r, m = _ratio(make(name, family=family, link=link, emb=EMB[:3]), t, family=family, link=link)
        assert np.isfinite(r) and r < 1.0, (family, link, name, r)


def test_evaluate_with_categorical_and_unseen_levels(pois, caplog):
    t = pois.copy()
    t.loc[t.index[t["region"] == "WS"][:5], "zone"] = "NEW"  # only in region WS: unseen when WS is held out
    cfg = EvaluateConfig(table="x", target="y", exposure="exposure", covariates=["age"], categorical=["zone"],
                         features=["none", "embeddings"], models=["glm", "gam", "gbm"],
                         split={"kind": "leave_region_out", "region_column": "region"}, gbm=FAST_GBM)
    with caplog.at_level("WARNING"):
        res = run_evaluation(t, cfg)
    assert "column 'zone': level(s) ['NEW'] not seen in training" in caplog.text
    assert "priced as the most frequent level" in caplog.text
    s = summary_table(res.records)
    assert len(s) == 6 and np.isfinite(s["deviance_ratio"]).all()
    assert set(res.records["fold"].astype(str)) == {"0", "1", "2", "3", "pooled"}
    assert len(res.predictions) == len(t) and res.predictions["null"].notna().all()
    from geoembed.errors import InputError

    with pytest.raises(InputError, match=r"column 'zone': level\(s\) \['NEW'\] not seen in training"):
        run_evaluation(t, cfg.model_copy(update={"unknown_categories": "error", "models": ["glm"]}))


def test_glm_ridge_shrinks_towards_the_exposure_only_model(pois):
    _, plain = _ratio(make("glm", emb=EMB), pois)
    _, ridged = _ratio(make("glm", emb=EMB, alpha=10.0), pois)
    assert np.abs(ridged.coef_).max() < 0.05 * np.abs(plain.coef_).max()
    off = np.log(pois["exposure"].to_numpy())
    base = null_predict(pois["y"].to_numpy()[:600], off[:600], off, "poisson", "log")
    assert ridged.predict(pois) == pytest.approx(base, rel=0.1)


@pytest.mark.parametrize("family,link", [("poisson", "log"), ("gamma", "log"), ("binomial", "logit"),
                                         ("tweedie", "log")])
def test_glum_gam_matches_statsmodels_glmgam(family, link):
    """glum, given the GAM's smooths and penalty as its P2 matrix, finds statsmodels GLMGam's coefficients."""
    from scipy.linalg import block_diag
    from statsmodels.gam.generalized_additive_model import GLMGam

    from geoembed.evaluate.models import Smooth, SmootherSet, fit_glum, sm_family

    t = make_risk_table(n=300, family=family, rate=1.0, seed=6)
    smooths = [Smooth(["emb_0"], 6, 3, "bspline").fit(t), Smooth(["lon", "lat"], 5, 3, "pspline").fit(t)]
    alphas = [0.7, 2.0]
    off = np.log(t["exposure"].to_numpy()) if family != "binomial" else None
    y = t["y"].to_numpy()
    res = GLMGam(y, exog=np.ones((len(t), 1)), smoother=SmootherSet(smooths, len(t)), alpha=alphas,
                 family=sm_family(family, link), offset=off).fit(tol=1e-12)
    # GLMGam maximises loglik - alpha b'Sb, i.e. minimises D + 2 alpha b'Sb; glum D / (2n) + a / 2 b'P2b
    P2 = block_diag(*[2 * a * s.cov_der2 for a, s in zip(alphas, smooths, strict=True)])
    B = np.hstack([s.basis for s in smooths])
    m = fit_glum(B, y, family, link, 1.5, off, P2=P2, alpha=1.0 / len(y), gradient_tol=1e-10)
    beta = np.r_[m.intercept_, m.coef_]
    assert beta == pytest.approx(np.asarray(res.params), rel=1e-4, abs=1e-5)


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
    m = GBMRegressor(family="gaussian", exposure="exposure", numeric=EMB[:3], **FAST_GBM)
    m.fit(t.iloc[:600], t["y"].to_numpy()[:600])
    mu = m.predict(t.iloc[600:])
    mu_rate = m.predict(t.iloc[600:].assign(exposure=1.0))
    assert m.link_ == "identity" and mu == pytest.approx(mu_rate * t["exposure"].to_numpy()[600:])
    assert np.corrcoef(mu, t["true_mu"].to_numpy()[600:] * t["exposure"].to_numpy()[600:])[0, 1] > 0.7


def test_spline_margins_equal_their_references():
    """bspline margins are statsmodels' UnivariateBSplines (basis and curvature penalty); pspline margins are
    scikit-learn's SplineTransformer(knots="uniform", extrapolation="constant") with second differences."""
    from sklearn.preprocessing import SplineTransformer
    from statsmodels.gam.smooth_basis import UnivariateBSplines

    from geoembed.evaluate.models.gam import Margin, difference_penalty

    x = np.random.default_rng(0).gamma(2.0, size=400)
    ref = UnivariateBSplines(x, df=6, degree=3, include_intercept=True)
    m = Margin(6, 3, "bspline").fit(x)
    assert m.transform(x) == pytest.approx(ref.transform(x), abs=1e-12)
    assert m.S_ == pytest.approx(ref.cov_der2, rel=1e-9, abs=1e-9 * np.abs(ref.cov_der2).max())
    p = Margin(7, 3, "pspline").fit(x)
    sp = SplineTransformer(n_knots=5, degree=3, knots="uniform", extrapolation="constant").fit(x[:, None])
    outside = np.r_[x, -3.0, 50.0]
    assert p.transform(outside) == pytest.approx(sp.transform(outside[:, None]), abs=1e-12)
    assert np.array_equal(p.S_, difference_penalty(7)) and difference_penalty(7)[3].tolist() == [0, 1, -4, 6, -4, 1, 0]


def test_gbm_grid_refits_the_combination_with_the_lowest_inner_loss(pois):
    grid = {"num_leaves": [2, 7], "min_data_in_leaf": [5, 40]}
    _, tuned = _ratio(make("gbm", emb=EMB, grid=grid), pois)
    losses = tuned.info_["grid_losses"]
    assert [c for c, _ in losses] == [{"num_leaves": a, "min_data_in_leaf": b} for a in (2, 7) for b in (5, 40)]
    assert len({lo for _, lo in losses}) == 4  # the combinations differ
    best = min(losses, key=lambda t: t[1])[0]
    assert tuned.info_["params"] == best
    # the refit is the model with the chosen parameters given directly, bit for bit
    _, direct = _ratio(make("gbm", emb=EMB, **best), pois)
    assert np.array_equal(tuned.predict(pois), direct.predict(pois))
    assert tuned.info_["num_boost_round"] == direct.info_["num_boost_round"]
    # each combination's inner loss is the one a one-value grid of it reports
    for combo, loss in losses[:2]:
        _, single = _ratio(make("gbm", emb=EMB, grid={k: [v] for k, v in combo.items()}), pois)
        assert single.info_["grid_losses"][0][1] == pytest.approx(loss, rel=1e-12)


def test_gbm_grid_errors_name_the_setting(pois):
    with pytest.raises(ValueError, match=r"grid\['num_leaves'\]"):
        _ratio(make("gbm", emb=EMB, grid={"num_leaves": 7}), pois)
    with pytest.raises(ValueError, match="early stopping"):
        _ratio(make("gbm", emb=EMB, grid={"num_leaves": [7]}, early_stopping=False), pois)
    with pytest.raises(ValueError, match="grid needs early_stopping"):
        EvaluateConfig.model_validate({"table": "t.parquet", "target": "y",
                                       "gbm": {"grid": {"num_leaves": [4]}, "early_stopping": False}})


def test_gbm_extra_trees_is_lightgbms_own_setting(pois):
    """``extra_trees`` reaches LightGBM unchanged: off equals LightGBM's own ``params`` override, bit for bit,
    and randomised thresholds give another model; ``geoembed evaluate`` passes the config's value on."""
    from geoembed.evaluate.estimators import make_estimator

    _, on = _ratio(make("gbm", emb=EMB), pois)
    _, off = _ratio(make("gbm", emb=EMB, extra_trees=False), pois)
    _, via_params = _ratio(make("gbm", emb=EMB, params={"extra_trees": False}), pois)
    assert on.params_["extra_trees"] is True and off.params_["extra_trees"] is False
    assert np.array_equal(off.predict(pois), via_params.predict(pois))
    assert not np.array_equal(on.predict(pois), off.predict(pois))
    cfg = EvaluateConfig.model_validate({"table": "t.parquet", "target": "y", "gbm": {"extra_trees": False}})
    assert make_estimator("gbm", "embeddings", cfg, EMB).get_params()["extra_trees"] is False
    assert EvaluateConfig.model_validate({"table": "t.parquet", "target": "y"}).gbm.extra_trees is True


def test_gam_without_shrinkage_fits(pois):
    """``shrinkage=0`` leaves each curvature penalty singular; rounding made its null space slightly negative
    and glum refused it. ``_psd`` lifts such a penalty by 1e-10 of its scale and leaves a definite one alone."""
    import glum._linalg

    from geoembed.evaluate.models.gam import Margin, _psd

    S = Margin(6, 3, "bspline").fit(np.random.default_rng(0).gamma(2.0, size=400)).S_ * 1e5
    assert not glum._linalg.is_pos_semidef(S)  # as the GAM built it before
    lifted = _psd(S)
    assert glum._linalg.is_pos_semidef(lifted) and np.abs(lifted - S).max() < 1e-9 * np.abs(S).max()
    definite = S + np.eye(len(S))
    assert _psd(definite) is definite
    r0, m0 = _ratio(make("gam", emb=EMB, shrinkage=0.0), pois)
    r_small, _ = _ratio(make("gam", emb=EMB, shrinkage=1e-6), pois)
    assert np.isfinite(r0) and r0 == pytest.approx(r_small, abs=2e-3)
