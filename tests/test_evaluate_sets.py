"""Named embedding sets in ``geoembed evaluate`` (``evaluate.embedding_sets``): several bundles (or column
prefixes) compared on the same folds, each embedded as the default set is (polygons by their points)."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest

from geoembed.config import parse_config
from geoembed.config.evaluate import EmbeddingSetConfig, EvaluateConfig
from geoembed.enrich.polygons import embed_polygons
from geoembed.errors import ConfigError, InputError
from geoembed.evaluate import run_evaluation
from geoembed.evaluate.report import render_markdown
from geoembed.evaluate.tables import read_table
from geoembed.testing.bundles import make_tiny_bundle

TRACTS = Path(__file__).resolve().parents[1] / "data" / "olinda" / "olinda1.shp"


@pytest.fixture(scope="module")
def two_bundles(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sets")
    return make_tiny_bundle(root / "a", seed=1), make_tiny_bundle(root / "b", seed=2)


def _tracts(tmp_path: Path) -> Path:
    g = gpd.read_file(TRACTS)[["V014", "geometry"]]
    g["area_km2"] = g.to_crs("EPSG:31985").geometry.area / 1e6
    g.to_parquet(tmp_path / "tracts.parquet")
    return tmp_path / "tracts.parquet"


def _cfg(path: Path, sets: dict, features: list[str], **kw) -> EvaluateConfig:
    return EvaluateConfig(table=str(path), target="V014", exposure="area_km2", features=features,
                          embedding_sets=sets, models=["glm", "gbm"], points_per_polygon=12, polygon_seed=5,
                          split={"kind": "spatial_block", "n_folds": 3, "block_method": "grid",
                                 "block_size_m": 1500}, figures=False, **kw)


def test_named_bundles_are_compared_on_the_same_folds(tmp_path, two_bundles):
    a, b = two_bundles
    path = _tracts(tmp_path)
    cfg = _cfg(path, {"first": {"bundle": str(a)}, "second": {"bundle": str(b)}}, ["coords", "first", "second"])
    res = run_evaluation(read_table(path), cfg)
    assert res.embedding_sets == {"first": [f"first_{i}" for i in range(4)],
                                  "second": [f"second_{i}" for i in range(4)]}
    geom = gpd.read_parquet(path).geometry
    for name, bundle in (("first", a), ("second", b)):  # each set: its bundle's polygon means, same points
        want, _, _ = embed_polygons(bundle, geom, 12, 5)
        np.testing.assert_array_equal(res.table[res.embedding_sets[name]].to_numpy(), want)
    pooled = res.records[res.records["fold"] == "pooled"]
    assert sorted(pooled["features"].unique()) == ["coords", "first", "second"]
    # the sets differ, so do their models; every record carries its own set's bundle fingerprint
    dev = pooled.set_index(["model", "features"])["deviance"]
    assert dev["glm", "first"] != dev["glm", "second"]
    fps = res.records.groupby("features")["bundle_fingerprint"].agg(lambda s: set(s.dropna()))
    assert len(fps["first"]) == 1 and fps["first"] != fps["second"] and not fps["coords"]
    assert res.info["embedding_sets"]["first"]["support"]["out_of_support"] == 0
    # the same rows in every test fold for every feature set
    per = res.records[res.records["fold"] != "pooled"]
    assert per.groupby(["fold"])["n_test"].nunique().max() == 1
    md = render_markdown(res.records, cfg, result=res)
    assert "embedding set `first`: bundle" in md and "mean over 12 points" in md


def test_a_named_set_equals_the_default_set_of_the_same_bundle(tmp_path, two_bundles):
    a, _ = two_bundles
    path = _tracts(tmp_path)
    named = run_evaluation(read_table(path), _cfg(path, {"mine": {"bundle": str(a)}}, ["mine"]))
    default = run_evaluation(read_table(path), _cfg(path, {}, ["embeddings"], bundle=str(a)))
    got = named.records.set_index(["model", "fold"])["deviance"]
    want = default.records.set_index(["model", "fold"])["deviance"]
    pd.testing.assert_series_equal(got, want)


def test_a_prefix_set_reads_the_tables_columns(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    t = pd.DataFrame({"lon": rng.uniform(-34.9, -34.83, n), "lat": rng.uniform(-8.03, -7.96, n),
                      "y": rng.poisson(2.0, n).astype(float)})
    for i in range(3):
        t[f"dist_{i}"] = rng.normal(size=n)
    cfg = EvaluateConfig(target="y", features=["coords", "d"], embedding_sets={"d": {"prefix": "dist_"}},
                         models=["glm"], split={"kind": "random", "n_folds": 3}, figures=False)
    res = run_evaluation(t, cfg)
    assert res.embedding_sets == {"d": ["dist_0", "dist_1", "dist_2"]}
    missing = cfg.model_copy(update={"embedding_sets": {"d": EmbeddingSetConfig(prefix="zz_")}})
    with pytest.raises(InputError, match=r"embedding_sets.d: the table has no zz_<k> columns"):
        run_evaluation(t, missing)


@pytest.mark.parametrize(("sets", "features", "match"), [
    ({}, ["coords", "geoclip"], r"unknown feature set\(s\) \['geoclip'\]"),
    ({"g": {"bundle": "x", "prefix": "p_"}}, ["g"], "exactly one of bundle, prefix"),
    ({"g": {}}, ["g"], "exactly one of bundle, prefix"),
    ({"coords": {"prefix": "p_"}}, ["coords"], "must be a name"),
    ({"a:b": {"prefix": "p_"}}, ["a:b"], "must be a name"),
])
def test_bad_embedding_sets_are_config_errors(sets, features, match):
    with pytest.raises(ConfigError, match=match):
        parse_config({"evaluate": {"target": "y", "features": features, "embedding_sets": sets}})


def test_a_missing_set_bundle_names_the_set(tmp_path):
    path = _tracts(tmp_path)
    cfg = _cfg(path, {"gone": {"bundle": str(tmp_path / "nope")}}, ["coords", "gone"])
    with pytest.raises(InputError, match=r"evaluate.embedding_sets.gone: .*nope"):
        run_evaluation(read_table(path), cfg)
