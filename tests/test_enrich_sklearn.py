"""LocationEmbedder: scikit-learn API, estimator checks, pipelines in front of GLMs, reduction, pickling."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression, PoissonRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

from geoembed import LocationEmbedder
from geoembed.errors import InputError


def policies(n=400, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    lon = rng.uniform(-34.91, -34.83, n)
    lat = rng.uniform(-8.035, -7.955, n)
    return pd.DataFrame({"policy": [f"P{i}" for i in range(n)], "lon": lon, "lat": lat,
                         "exposure": rng.uniform(0.2, 1.0, n), "sum_insured": rng.lognormal(11, 1, n)},
                        index=pd.RangeIndex(1000, 1000 + n))


# Checks that cannot apply to a coordinate transformer, and why. With on_invalid="null" every check
# passes. With the default on_invalid="error", four checks feed data that are not valid coordinates,
# which must be rejected by design:
_OUT_OF_RANGE = ("the check's data are drawn around 100, beyond the latitude range [-90, 90]; "
                 "on_invalid='error' rejects them by design")
EXPECTED_FAILED_ERROR_MODE = {
    "check_estimators_dtypes": "the check's integer data hold exact (0, 0) rows, which on_invalid='error' "
                               "rejects by design as failed geocodes ('null island')",
    "check_fit_idempotent": _OUT_OF_RANGE,
    "check_fit_check_is_fitted": _OUT_OF_RANGE,
    "check_n_features_in": _OUT_OF_RANGE,
}


def test_sklearn_estimator_checks(bundle_path):
    # Arrays carry no column names, so the checks use positions; both invalid-row policies are checked.
    for est, expected in [
        (LocationEmbedder(str(bundle_path), lon_col=0, lat_col=1), EXPECTED_FAILED_ERROR_MODE),
        (LocationEmbedder(str(bundle_path), lon_col=0, lat_col=1, on_invalid="null"), {}),
    ]:
        results = check_estimator(est, expected_failed_checks=expected, on_fail=None)
        failed = [(r["check_name"], str(r["exception"])[:200]) for r in results
                  if r["status"] == "failed"]
        assert not failed, failed
        xfailed = {r["check_name"] for r in results if r["status"] == "xfail"}
        assert xfailed == set(expected), xfailed  # every exclusion is still needed


def test_transform_equals_bundle_embed_and_names(bundle_path, bundle):
    df = policies()
    emb = LocationEmbedder(bundle_path).fit(df)
    z = emb.transform(df)
    direct = bundle.embed(df["lon"].to_numpy().copy(), df["lat"].to_numpy().copy())
    assert z.dtype == np.float64 and z.shape == (len(df), 4)
    np.testing.assert_array_equal(z, direct.astype(np.float64))
    assert list(emb.get_feature_names_out()) == ["emb_0", "emb_1", "emb_2", "emb_3"]
    assert emb.n_features_in_ == df.shape[1]
    assert list(emb.feature_names_in_) == list(df.columns)
    # only lon/lat are read: another table with other columns transforms the same rows alike
    other = df[["lat", "lon"]].assign(extra=1)
    np.testing.assert_array_equal(emb.transform(other), z)


def test_swapping_columns_changes_the_result(bundle_path):
    df = policies(50)
    a = LocationEmbedder(bundle_path).fit_transform(df)
    # The same numbers with the names exchanged are detected as swapped...
    swapped = df.rename(columns={"lon": "lat", "lat": "lon"})
    with pytest.raises(InputError, match="look swapped"):
        LocationEmbedder(bundle_path).fit(swapped)
    # ...and embedding them as given (out of support, far away) gives other features.
    b = LocationEmbedder(bundle_path, lon_col="lat", lat_col="lon").fit_transform(
        swapped.assign(lat=df["lat"] + 1.0))
    assert not np.allclose(a, b)


def test_set_output_pandas_keeps_index_and_column_transformer(bundle_path):
    df = policies()
    emb = LocationEmbedder(bundle_path).set_output(transform="pandas")
    out = emb.fit_transform(df)
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == ["emb_0", "emb_1", "emb_2", "emb_3"]
    assert out.index.equals(df.index)
    ct = ColumnTransformer([("geo", LocationEmbedder(bundle_path), ["lon", "lat"])],
                           remainder="passthrough", verbose_feature_names_out=False)
    ct.set_output(transform="pandas")
    res = ct.fit_transform(df.drop(columns="policy"))
    assert list(res.columns) == ["emb_0", "emb_1", "emb_2", "emb_3", "exposure", "sum_insured"]
    np.testing.assert_array_equal(res[["emb_0", "emb_1", "emb_2", "emb_3"]].to_numpy(), out.to_numpy())


def test_pipelines_with_glms(bundle_path, bundle):
    df = policies(3000, seed=3)
    X = df[["lon", "lat"]]
    rng = np.random.default_rng(0)
    # A well-specified world: the true log-rate is linear in the embedding, so the GLM recovers it.
    z = bundle.embed(np.array(df["lon"]), np.array(df["lat"])).astype(np.float64)
    z = (z - z.mean(axis=0)) / z.std(axis=0)
    w = np.array([0.8, -0.5, 0.3, 0.6])
    rate = np.exp(0.2 + z @ w)
    counts = rng.poisson(rate * df["exposure"])
    pois = make_pipeline(LocationEmbedder(bundle_path), StandardScaler(), PoissonRegressor(alpha=0.0))
    pois.fit(X, counts / df["exposure"], poissonregressor__sample_weight=df["exposure"])
    np.testing.assert_allclose(pois[-1].coef_, w, atol=0.15)
    assert np.corrcoef(np.log(pois.predict(X)), np.log(rate))[0, 1] > 0.97
    logit = make_pipeline(LocationEmbedder(bundle_path), StandardScaler(), LogisticRegression())
    y = (z @ w + rng.normal(0, 0.3, len(df))) > 0
    logit.fit(X, y)
    assert logit.score(X, y) > 0.85
    # clone gives an unfitted copy with the same parameters
    c = clone(pois)
    assert c.get_params()["locationembedder__bundle"] == bundle_path
    assert not hasattr(c.steps[0][1], "bundle_fingerprint_")


def test_statsmodels_glm_on_embeddings(bundle_path):
    import statsmodels.api as sm

    df = policies(300, seed=4)
    z = LocationEmbedder(bundle_path).set_output(transform="pandas").fit_transform(df)
    y = np.random.default_rng(1).poisson(1.0, len(df))
    res = sm.GLM(y, sm.add_constant(z), family=sm.families.Poisson(), offset=np.log(df["exposure"])).fit()
    assert list(res.params.index) == ["const", "emb_0", "emb_1", "emb_2", "emb_3"]


def test_invalid_coordinates_error_and_null(bundle_path):
    df = policies(20)
    df.loc[1003, "lon"] = np.nan
    df.loc[1007, ["lon", "lat"]] = 0.0
    df["lat"] = df["lat"].astype(object)
    df.loc[1011, "lat"] = "north"
    with pytest.raises(InputError, match=r"3 of 20 rows.*\n  row 3: missing.*\n  row 7: null_island.*\n"
                                         r"  row 11: non_numeric \(lon=.*, lat='north'\)"):
        LocationEmbedder(bundle_path).fit(df)
    z = LocationEmbedder(bundle_path, on_invalid="null").fit_transform(df)
    bad = np.isnan(z).all(axis=1)
    assert list(np.flatnonzero(bad)) == [3, 7, 11]
    assert np.isfinite(z[~bad]).all()


def test_unnamed_arrays_need_positions(bundle_path):
    df = policies(10)
    with pytest.raises(ValueError, match="no column names"):
        LocationEmbedder(bundle_path).fit(df[["lon", "lat"]].to_numpy())
    a = LocationEmbedder(bundle_path, lon_col=0, lat_col=1).fit_transform(df[["lon", "lat"]].to_numpy())
    np.testing.assert_array_equal(a, LocationEmbedder(bundle_path).fit_transform(df))
    with pytest.raises(InputError, match="lacks the coordinate column 'longitude'"):
        LocationEmbedder(bundle_path, lon_col="longitude").fit(df)
    with pytest.raises(ValueError, match="needs bundle="):
        LocationEmbedder().fit(df)


def test_pca_reduction_fitted_in_fit(bundle_path):
    df = policies(500, seed=5)
    pca = LocationEmbedder(bundle_path, n_components=2).fit(df)
    z = pca.transform(df)
    assert z.shape == (500, 2)
    assert list(pca.get_feature_names_out()) == ["emb_pc_0", "emb_pc_1"]
    full = LocationEmbedder(bundle_path).fit_transform(df)
    # closed form: the components are the top eigenvectors of the embeddings' covariance
    evals, evecs = np.linalg.eigh(np.cov(full.T))
    top = evecs[:, ::-1][:, :2]
    proj = (full - full.mean(axis=0)) @ top
    np.testing.assert_allclose(np.abs(z), np.abs(proj), atol=1e-5)
    white = LocationEmbedder(bundle_path, n_components=2, whiten=True).fit(df).transform(df)
    np.testing.assert_allclose(white.std(axis=0, ddof=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(white.mean(axis=0), 0.0, atol=1e-5)


def test_pickle_refers_to_bundle_by_path(bundle_path):
    df = policies(30)
    emb = LocationEmbedder(bundle_path, n_components=2).fit(df)
    z = emb.transform(df)
    blob = pickle.dumps(emb)
    assert len(blob) < 20_000  # the encoder is not copied into the pickle
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again.transform(df), z)
