"""Polygon tables in ``geoembed evaluate`` (issue 11, item 5): with a bundle, each tract is embedded as the
mean over points sampled in it (``embed_polygons``), not at its centroid; lon/lat stay the centroids."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
import yaml

from geoembed import LocationEmbedder
from geoembed.cli import main
from geoembed.config.evaluate import EvaluateConfig
from geoembed.enrich.polygons import embed_polygons
from geoembed.errors import InputError
from geoembed.evaluate import run_evaluation
from geoembed.evaluate.support import support_summary
from geoembed.evaluate.tables import read_table
from geoembed.testing.bundles import TINY_EMB as EMB

TRACTS = Path(__file__).resolve().parents[1] / "data" / "olinda" / "olinda1.shp"


def _tracts(tmp_path: Path, name: str = "olinda.parquet") -> tuple[Path, gpd.GeoDataFrame]:
    """The Olinda tracts with residents (V014) and tract area in km² (UTM 25S, as geoembed.demo)."""
    g = gpd.read_file(TRACTS)[["V014", "geometry"]]
    g["area_km2"] = g.to_crs("EPSG:31985").geometry.area / 1e6
    out = tmp_path / name
    g.to_parquet(out) if name.endswith(".parquet") else g.to_file(out)
    return out, g


def _cfg(path: Path, bundle: Path | None, **kw) -> EvaluateConfig:
    return EvaluateConfig(table=str(path), bundle=None if bundle is None else str(bundle), target="V014",
                          exposure="area_km2", features=["coords", "embeddings"], models=["glm"],
                          split={"kind": "spatial_block", "n_folds": 3, "block_method": "kmeans"},
                          points_per_polygon=40, polygon_seed=3, figures=False, **kw)


def test_polygon_tables_are_embedded_by_polygon_means(tmp_path, bundle_path):
    path, g = _tracts(tmp_path)
    cfg = _cfg(path, bundle_path)
    res = run_evaluation(read_table(path), cfg)
    cols = res.embedding_columns
    assert len(res.table) == 470 and len(cols) > 0
    got = res.table[cols].to_numpy()
    want, n_points, share = embed_polygons(bundle_path, gpd.read_parquet(path), 40, 3)
    np.testing.assert_array_equal(got, want)  # exactly the polygon means, same seed
    assert (n_points == 40).all()
    # not the centroids' embeddings; lon/lat (the coords features) are still the centroids
    centroids = LocationEmbedder(bundle_path, dtype="float32").fit_transform(res.table[["lon", "lat"]])
    assert np.abs(got - centroids).max() > 1e-4
    cent = g.to_crs("+proj=laea +lat_0=-8 +lon_0=-34.87").centroid.to_crs(4326)
    np.testing.assert_allclose(res.table["lon"], cent.x, atol=1e-6)
    # the support count comes from the polygons' shares; the settings are recorded
    sup = res.info["support"]
    assert sup["out_of_support"] == int((share > 0.5).sum()) and "polygons" in sup["source"]
    assert res.info["polygons"]["points_per_polygon"] == 40 and res.bundle_fingerprint
    # deterministic: the same run again gives the same numbers
    again = run_evaluation(read_table(path), cfg)
    np.testing.assert_array_equal(again.table[cols].to_numpy(), got)
    np.testing.assert_array_equal(again.records["deviance"].to_numpy(), res.records["deviance"].to_numpy())
    # another seed, other points
    other = run_evaluation(read_table(path), _cfg(path, bundle_path).model_copy(update={"polygon_seed": 4}))
    assert not np.array_equal(other.table[cols].to_numpy(), got)


def test_a_bad_polygon_is_an_error_naming_its_row(tmp_path, bundle_path):
    path, g = _tracts(tmp_path)
    x0, y0, x1, y1 = g.geometry.iloc[5].bounds
    g.loc[5, "geometry"] = shapely.Polygon([(x0, y0), (x1, y0), (x1, y1)],  # a hole outside its shell
                                           [[(x1 + 0.01, y1), (x1 + 0.02, y1), (x1 + 0.02, y1 + 0.01)]])
    g.to_parquet(path)
    with pytest.raises(InputError, match=r"(?s)evaluate.table .*olinda.parquet.*row 5: invalid_geometry \(Hole") as e:
        run_evaluation(read_table(path), _cfg(path, bundle_path))
    assert "--on-invalid null" in str(e.value) and "without evaluate.bundle" in str(e.value)


def test_an_enriched_polygon_table_is_used_as_is_without_a_bundle(tmp_path, bundle_path):
    path, g = _tracts(tmp_path)
    emb, _, _ = embed_polygons(bundle_path, g, 20, 0)
    for i, c in enumerate(EMB):
        g[c] = emb[:, i] * 2.0  # not what the bundle gives: shows which columns are used
    g.to_parquet(path)
    res = run_evaluation(read_table(path), _cfg(path, None))
    np.testing.assert_array_equal(res.table[EMB].to_numpy(), emb * 2.0)
    assert res.bundle_fingerprint is None and "polygons" not in res.info


def test_polygon_support_rule():
    cfg = EvaluateConfig(target="y", max_out_of_support_share=0.3)

    class B:
        out_of_support_km = 2.0

    share = np.array([0.0, 0.5, 0.51, 1.0, np.nan])
    s = support_summary(np.zeros(5), cfg, polygon_share=share, bundle=B())
    assert s["out_of_support"] == 2 and s["share"] == pytest.approx(0.4) and s["over_limit"]


def test_command_on_a_geopackage_of_tracts(tmp_path, bundle_path):
    _tracts(tmp_path, "olinda.gpkg")
    cfg = {"workdir": "run", "evaluate": {"table": "olinda.gpkg", "bundle": str(bundle_path), "target": "V014",
                                          "exposure": "area_km2", "features": ["embeddings"], "models": ["glm"],
                                          "points_per_polygon": 30, "figures": False,
                                          "split": {"kind": "random", "n_folds": 3}}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["evaluate", "-c", str(tmp_path / "cfg.yaml"), "--no-progress"]) == 0
    recs = json.loads((tmp_path / "run" / "evaluation" / "evaluation.json").read_text())
    assert {r["n_out_of_support"] for r in recs} == {0} and all(r["bundle_fingerprint"] for r in recs)
    assert "polygons: out of support when more than half" in (tmp_path / "run" / "evaluation" / "report.md").read_text()


def test_weight_raster_from_the_config(tmp_path, bundle_path):
    import rasterio
    from rasterio.transform import from_origin

    from geoembed.config import load_config

    path, g = _tracts(tmp_path)
    tif = tmp_path / "pop.tif"
    w = np.tile(np.linspace(0.0, 5.0, 200, dtype=np.float32), (200, 1))  # density rising eastwards
    with rasterio.open(tif, "w", driver="GTiff", width=200, height=200, count=1, dtype="float32",
                       crs="EPSG:4326", transform=from_origin(-34.93, -7.94, 0.0006, 0.0006)) as ds:
        ds.write(w, 1)
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump({"evaluate": {"table": "olinda.parquet", "bundle": str(bundle_path),
                                                     "target": "V014", "weight_raster": "pop.tif"}}))
    ev = load_config(cfg_file).evaluate
    assert ev.weight_raster == str(tif)  # relative to the config file
    cfg = _cfg(path, bundle_path, weight_raster=ev.weight_raster)
    res = run_evaluation(read_table(path), cfg)
    want, _, _ = embed_polygons(bundle_path, g, 40, 3, weight=tif)
    plain, _, _ = embed_polygons(bundle_path, g, 40, 3)
    np.testing.assert_array_equal(res.table[res.embedding_columns].to_numpy(), want)
    assert not np.array_equal(want, plain)


def test_enriched_polygon_columns_follow_the_same_majority_rule():
    """Without a bundle, an enriched polygon table counts a polygon as out of support when more than half of its
    points are (its share column), as evaluate does with the bundle, not only when all are (its flag)."""
    cfg = EvaluateConfig(target="y", max_out_of_support_share=0.5)
    table = pd.DataFrame({"geoembed_out_of_support": [False, False, True, False, True],
                          "geoembed_out_of_support_share": [0.0, 0.6, 1.0, 0.5, np.nan]})
    s = support_summary(table, cfg)
    assert s["out_of_support"] == 3 and s["share"] == pytest.approx(0.6) and s["over_limit"]
    assert "more than half" in s["source"]
    points = table.drop(columns="geoembed_out_of_support_share")  # a point table: its flags as they are
    assert support_summary(points, cfg)["out_of_support"] == 2
