"""The estimators and splitters as scikit-learn citizens: clone, GridSearchCV, cross_val_predict, Pipeline,
exposure as a column, unseen categories, D² and deviance scorers; the same folds as ``geoembed evaluate``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_predict, cross_val_score

from geoembed.config.evaluate import EvaluateConfig
from geoembed.errors import InputError
from geoembed.evaluate import (
    GAMRegressor,
    GBMRegressor,
    GLMRegressor,
    LeaveRegionOut,
    SpatialBlockKFold,
    assign_folds,
    deviance,
    deviance_scorer,
    make_estimator,
    run_evaluation,
)
from geoembed.evaluate.synthetic import make_risk_table

EMB = ["emb_0", "emb_1", "emb_2", "emb_3", "emb_4"]
FAST_GBM = {"num_boost_round": 150, "learning_rate": 0.1, "early_stopping_rounds": 20}


@pytest.fixture(scope="module")
def t() -> pd.DataFrame:
    return make_risk_table(n=600, family="poisson", rate=0.5, seed=21)


def estimators():
    return [GLMRegressor(exposure="exposure", numeric=["age", *EMB], categorical=["zone"]),
            GAMRegressor(exposure="exposure", numeric=["age"], categorical=["zone"], smooth=EMB[:3], alpha=1.0),
            GBMRegressor(exposure="exposure", numeric=["age", *EMB], categorical=["zone"], **FAST_GBM)]


@pytest.mark.parametrize("est", estimators(), ids=["glm", "gam", "gbm"])
def test_clone_params_and_fitted_attributes(t, est):
    params = est.get_params()
    c = clone(est)
    assert c.get_params() == params and c is not est
    assert clone(est.set_params(exposure="exposure")).get_params()["exposure"] == "exposure"
    with pytest.raises(NotFittedError):
        est.predict(t)
    est.fit(t, t["y"])
    assert est.n_features_in_ == t.shape[1] and list(est.feature_names_in_) == list(t.columns)
    assert not hasattr(clone(est), "n_features_in_")  # clone drops the fitted state
    mu = est.predict(t)
    assert mu.shape == (len(t),) and np.all(mu > 0)
    # exposure is a column of X: doubling it doubles every predicted count (log link)
    assert est.predict(t.assign(exposure=2 * t["exposure"])) == pytest.approx(2 * mu, rel=1e-9)
    with pytest.raises(InputError, match=r"exposure column 'exposure' must be finite and > 0; not so at positions 3"):
        est.predict(t.assign(exposure=np.where(np.arange(len(t)) == 3, 0.0, t["exposure"])))
    with pytest.raises(InputError, match=r"X lacks column\(s\) \['emb_0'"):
        est.predict(t.drop(columns=["emb_0"]))
    assert -1 < est.score(t, t["y"]) <= 1


def test_score_is_d2_against_the_exposure_only_model(t):
    from sklearn.metrics import d2_tweedie_score

    m = GLMRegressor(exposure="exposure", numeric=EMB).fit(t, t["y"])
    y, mu, e = t["y"].to_numpy(), m.predict(t), t["exposure"].to_numpy()
    null = e * y.sum() / e.sum()
    assert m.score(t, y) == pytest.approx(1 - deviance(y, mu, "poisson") / deviance(y, null, "poisson"))
    # without exposure the reference is the mean: scikit-learn's D²
    g = GLMRegressor(family="gamma", numeric=EMB).fit(t, t["y"] + 1)
    assert g.score(t, t["y"] + 1) == pytest.approx(d2_tweedie_score(t["y"] + 1, g.predict(t), power=2))


def test_grid_search_with_a_deviance_scorer_on_spatial_blocks(t):
    cv = SpatialBlockKFold(3, block_size_m=3000)
    grid = GridSearchCV(GLMRegressor(exposure="exposure", numeric=EMB), {"alpha": [0.0, 0.01, 100.0]},
                        scoring=deviance_scorer("poisson"), cv=cv).fit(t, t["y"])
    scores = grid.cv_results_["mean_test_score"]
    assert np.all(scores < 0) and grid.best_params_["alpha"] != 100.0  # a huge ridge is the flat model
    assert scores[2] == pytest.approx(min(scores))
    gbm = GridSearchCV(GBMRegressor(exposure="exposure", numeric=EMB, **FAST_GBM), {"num_leaves": [3, 7]},
                       scoring="neg_mean_poisson_deviance", cv=cv).fit(t, t["y"])
    assert set(gbm.best_params_) == {"num_leaves"} and hasattr(gbm.best_estimator_, "booster_")
    gam = GridSearchCV(GAMRegressor(exposure="exposure", smooth=EMB[:3]), {"alpha": [0.1, 10.0]}, cv=cv)
    gam.fit(t, t["y"])  # default scoring: the estimator's D²
    assert np.isfinite(gam.cv_results_["mean_test_score"]).all()


def test_cross_val_predict_gives_the_commands_out_of_fold_predictions(t):
    """One fold definition: a user's cross_val_predict with the config's splitter = geoembed evaluate."""
    cfg = EvaluateConfig(target="y", exposure="exposure", covariates=["age"], categorical=["zone"],
                         features=["embeddings"], models=["glm", "gam"],
                         split={"kind": "spatial_block", "n_folds": 4, "block_method": "grid",
                                "block_size_m": 2500, "seed": 3})
    res = run_evaluation(t, cfg)
    cv = SpatialBlockKFold(4, block_size_m=2500, random_state=3)
    for m in ("glm", "gam"):
        est = make_estimator(m, "embeddings", cfg, EMB)
        oof = cross_val_predict(est, t, t["y"], cv=cv)
        assert oof == pytest.approx(res.predictions.sort_values("row")[f"{m}:embeddings"].to_numpy(), rel=1e-9)


def test_pipeline_after_the_location_embedder(tmp_path):
    import shapely
    import torch
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    from geoembed import LocationEmbedder
    from geoembed.io.bundle import build_coordinate_encoder, save_bundle

    spec = {"encodings": [{"type": "local_multiscale", "center_lon": 4.375, "center_lat": 50.85,
                           "min_wavelength_m": 500.0, "max_wavelength_m": 20000.0, "n_scales": 4,
                           "n_directions": 2}], "network": {"type": "mlp", "hidden": [16]}, "embedding_dim": 4}
    torch.manual_seed(0)
    enc = build_coordinate_encoder(spec)
    save_bundle(tmp_path / "b", enc, enc.spec, footprint=shapely.box(4.30, 50.80, 4.45, 50.90),
                out_of_support_km=5.0, config={}, metrics={}, data_fingerprint="test")
    t = make_risk_table(n=400, rate=1.0, seed=5).drop(columns=EMB)
    features = ColumnTransformer([("emb", LocationEmbedder(str(tmp_path / "b")), ["lon", "lat"])],
                                 remainder="passthrough", verbose_feature_names_out=False).set_output(transform="pandas")
    pipe = Pipeline([("features", features),
                     ("glm", GLMRegressor(exposure="exposure", numeric=["emb_0", "emb_1", "emb_2", "emb_3", "age"]))])
    oof = cross_val_predict(pipe, t, t["y"], cv=SpatialBlockKFold(3, block_size_m=3000))
    assert oof.shape == (len(t),) and np.all(oof > 0)
    fitted = clone(pipe).fit(t, t["y"])
    assert fitted.named_steps["glm"].feature_names_ == ["emb_0", "emb_1", "emb_2", "emb_3", "age"]


def test_unseen_category_is_an_error_or_the_most_frequent_level(t, caplog):
    new = t.assign(zone=np.where(np.arange(len(t)) == 7, "Z", t["zone"]))
    for cls in (GLMRegressor, GAMRegressor, GBMRegressor):
        kw = FAST_GBM if cls is GBMRegressor else {}
        est = cls(exposure="exposure", numeric=["age"], categorical=["zone"], **kw).fit(t, t["y"])
        with pytest.raises(InputError, match=r"column 'zone': level\(s\) \['Z'\] not seen in training "
                                             r"\(1 row\(s\), positions 7\)"):
            est.predict(new)
        est = clone(est).set_params(handle_unknown="most_frequent").fit(t, t["y"])
        top = t["zone"].value_counts().index[0]
        with caplog.at_level("WARNING"):
            got = est.predict(new)
        assert f"priced as the most frequent level '{top}'" in caplog.text
        assert got[7] == pytest.approx(est.predict(new.assign(zone=np.where(new.index == 7, top, new.zone)))[7])


def test_default_roles_follow_dtypes(t):
    m = GLMRegressor(exposure="exposure").fit(t[["age", "zone", "exposure", "emb_0"]], t["y"])
    assert m.feature_names_ == ["age", "emb_0", "zone_B", "zone_C"]
    g = GAMRegressor(exposure="exposure", alpha=1.0).fit(t[["emb_0", "zone", "exposure"]], t["y"])
    assert [s.columns for s in g.smooths_] == [["emb_0"]]
    with pytest.raises(InputError, match="needs a pandas DataFrame"):
        GLMRegressor().fit(t[["age"]].to_numpy(), t["y"])
    with pytest.raises(ValueError, match="needs the log link"):
        GLMRegressor(family="gaussian", exposure="exposure").fit(t, t["y"])
    with pytest.raises(InputError, match=r"y must be >= 0 for family 'poisson'; not so at positions 0"):
        GLMRegressor(numeric=["age"]).fit(t, -t["y"] - 1)


def test_spatial_block_kfold_is_the_commands_split(t):
    from sklearn.model_selection import GroupKFold

    from geoembed.config.evaluate import SplitConfig
    from geoembed.evaluate import grid_blocks

    cv = SpatialBlockKFold(4, block_size_m=1500, random_state=2)
    fold, blocks = assign_folds(t, SplitConfig(kind="spatial_block", n_folds=4, block_size_m=1500, seed=2))
    assert cv.get_n_splits() == 4
    for f, (tr, te) in enumerate(cv.split(t)):
        assert np.array_equal(te, np.flatnonzero(fold == f)) and np.array_equal(tr, np.flatnonzero(fold != f))
        assert not set(blocks[tr]) & set(blocks[te])
    # groups given to split are the blocks; the balance is GroupKFold's (same fold sizes)
    b = grid_blocks(t["lon"], t["lat"], 1500)
    ours = sorted(len(te) for _, te in cv.split(t, groups=b))
    theirs = sorted(len(te) for _, te in GroupKFold(4).split(t, groups=b))
    assert abs(max(ours) - max(theirs)) <= np.bincount(np.unique(b, return_inverse=True)[1]).max()
    assert len(cross_val_score(GLMRegressor(exposure="exposure", numeric=EMB), t, t["y"], cv=cv)) == 4


def test_leave_region_out_splitter(t):
    cv = LeaveRegionOut("region")
    assert cv.get_n_splits(t) == 4
    for tr, te in cv.split(t):
        assert t["region"].iloc[te].nunique() == 1 and not set(t["region"].iloc[tr]) & set(t["region"].iloc[te])
    groups = t["region"].to_numpy()
    assert [te.tolist() for _, te in LeaveRegionOut().split(t, groups=groups)] == \
        [te.tolist() for _, te in cv.split(t)]
    hold = list(LeaveRegionOut(bbox=(4.30, 50.80, 4.375, 50.85)).split(t))
    inside = np.flatnonzero(((t.lon <= 4.375) & (t.lat <= 50.85)).to_numpy())
    assert len(hold) == 1 and np.array_equal(hold[0][1], inside) and len(hold[0][0]) == len(t) - len(inside)
    oof = cross_val_predict(GLMRegressor(exposure="exposure", numeric=EMB), t, t["y"], cv=cv)
    assert np.isfinite(oof).all()
