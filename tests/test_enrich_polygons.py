"""Polygon enrichment (issue 11, item 5): one embedding per polygon, the mean over points sampled uniformly in
its area (or weighted by a density raster), deterministic for a seed whatever the chunk size and row order;
the same through ``geoembed enrich``, ``LocationEmbedder`` and :func:`embed_polygons`; clear errors."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import shapely

from geoembed import LocationEmbedder
from geoembed.cli import main as cli_main
from geoembed.enrich import enrich_file
from geoembed.enrich.polygons import PolygonSampler, embed_polygons
from geoembed.errors import InputError
from geoembed.io.enriched import INVALID_COL, OOS_COL, POINTS_COL, SHARE_COL, SUPPORT_COL
from geoembed.testing.bundles import TINY_EMB as EMB

ROOT = Path(__file__).resolve().parents[1]
TRACTS = ROOT / "data" / "olinda" / "olinda1.shp"


def tracts(n: int = 40, seed: int = 0) -> gpd.GeoDataFrame:
    """Small polygons of varied shapes inside the Olinda footprint (squares with holes, L-shapes, pairs)."""
    rng = np.random.default_rng(seed)
    geoms = []
    for i in range(n):
        x, y = rng.uniform(-34.91, -34.84), rng.uniform(-8.03, -7.97)
        s = rng.uniform(0.002, 0.01)
        kind = i % 3
        if kind == 0:
            geoms.append(shapely.Polygon([(x, y), (x + s, y), (x + s, y + s), (x, y + s)],
                                         [[(x + s / 4, y + s / 4), (x + s / 2, y + s / 4), (x + s / 2, y + s / 2),
                                           (x + s / 4, y + s / 2)]]))
        elif kind == 1:
            geoms.append(shapely.Polygon([(x, y), (x + 2 * s, y), (x + 2 * s, y + s), (x + s, y + s),
                                          (x + s, y + 2 * s), (x, y + 2 * s)]))
        else:
            geoms.append(shapely.MultiPolygon([shapely.box(x, y, x + s, y + s),
                                               shapely.box(x + 2 * s, y, x + 3 * s, y + s / 2)]))
    return gpd.GeoDataFrame({"tract": [f"T{i:03d}" for i in range(n)], "pop": rng.integers(10, 999, n)},
                            geometry=geoms, crs="EPSG:4326")


def emb_by(path: Path, key: str = "tract") -> pd.DataFrame:
    df = pq.read_table(path).to_pandas()
    return df.set_index(key)[[*EMB, POINTS_COL, SHARE_COL, SUPPORT_COL]].sort_index()


# ------------------------------------------------------------------------------------------ sampling

def test_points_are_uniform_in_area_and_inside():
    poly = shapely.Polygon([(0, 0), (3, 0), (3, 1), (1, 1), (1, 3), (0, 3)], [[(0.2, 0.2), (0.8, 0.2), (0.8, 0.8),
                                                                               (0.2, 0.8)]])
    s = PolygonSampler(60_000, seed=4)
    codes, _, keys, ea, _ = s.prepare(np.array([poly], dtype=object), None, True)
    lon, lat = s.sample(ea, keys)
    assert codes.tolist() == [0] and len(lon) == 60_000
    assert shapely.contains_xy(poly, lon, lat).all()  # never in the hole, never outside
    # five unit cells (of equal area near the equator) and the square with the hole: shares by area
    cells = [((1, 2), (0, 1)), ((2, 3), (0, 1)), ((0, 1), (1, 2)), ((0, 1), (2, 3))]
    area = poly.area
    for (x0, x1), (y0, y1) in cells:
        share = ((lon >= x0) & (lon < x1) & (lat >= y0) & (lat < y1)).mean()
        assert abs(share - 1.0 / area) < 4 * np.sqrt((1 / area) * (1 - 1 / area) / 60_000)
    # equal-area, not equal-degree: a 1-degree box at 60 N gets points evenly in sin(latitude)
    high = shapely.box(10, 59.5, 11, 60.5)
    codes, _, keys, ea, _ = s.prepare(np.array([high], dtype=object), None, True)
    _, lat = s.sample(ea, keys)
    south = (lat < 60).mean()
    want = (np.sin(np.radians(60)) - np.sin(np.radians(59.5))) / (np.sin(np.radians(60.5)) - np.sin(np.radians(59.5)))
    assert abs(south - want) < 0.006 and want > 0.503


def test_a_polygon_gets_the_same_points_whatever_shares_its_chunk():
    g = tracts(30)
    s = PolygonSampler(200, seed=7)
    geoms = np.asarray(g.geometry.values, dtype=object)
    _, _, keys, ea, _ = s.prepare(geoms, None, True)
    lon_all, lat_all = s.sample(ea, keys)
    for i in (0, 13, 29):
        _, _, k1, e1, _ = s.prepare(geoms[[i]], None, True)
        lon1, lat1 = s.sample(e1, k1)
        np.testing.assert_array_equal(lon1, lon_all[i * 200:(i + 1) * 200])
        np.testing.assert_array_equal(lat1, lat_all[i * 200:(i + 1) * 200])
    _, _, k2, e2, _ = PolygonSampler(200, seed=8).prepare(geoms[[0]], None, True)
    assert not np.array_equal(PolygonSampler(200, seed=8).sample(e2, k2)[0], lon_all[:200])


def test_antimeridian_polygon_is_sampled_as_one_shape():
    fiji = shapely.MultiPolygon([shapely.box(179.5, -17.0, 180.0, -16.0), shapely.box(-180.0, -17.0, -179.5, -16.0)])
    s = PolygonSampler(4000, seed=0)
    codes, _, keys, ea, _ = s.prepare(np.array([fiji], dtype=object), None, True)
    lon, lat = s.sample(ea, keys)
    assert codes.tolist() == [0]
    assert ((lon >= 179.5) | (lon <= -179.5)).all() and (np.abs(lon) <= 180).all()
    assert abs((lon > 0).mean() - 0.5) < 0.04  # both halves, by area


# ------------------------------------------------------------------------------------------ enrich

def test_enrich_polygons_is_the_mean_over_sampled_points(tmp_path, bundle, bundle_path):
    g = tracts(25)
    src = tmp_path / "t.parquet"
    g.to_parquet(src)
    out = tmp_path / "o.parquet"
    s = enrich_file(bundle_path, src, out, points_per_polygon=300, polygon_seed=3)
    assert s.kind == "polygon" and s.rows == 25 and s.invalid == 0
    res = gpd.read_parquet(out)
    assert res.geometry.geom_equals(g.geometry).all() and res.crs.equals(g.crs)
    assert (res[POINTS_COL] == 300).all() and (res[SHARE_COL] == 0).all() and (res[SUPPORT_COL] == 0).all()
    assert not res[OOS_COL].any() and res[INVALID_COL].isna().all()
    sampler = PolygonSampler(300, seed=3)
    _, _, keys, ea, _ = sampler.prepare(np.asarray(g.geometry.values, dtype=object), None, True)
    lon, lat = sampler.sample(ea, keys)
    want = bundle.embed(lon, lat).astype(np.float64).reshape(25, 300, -1).mean(axis=1)
    np.testing.assert_allclose(res[EMB].to_numpy(), want, rtol=1e-6, atol=1e-7)
    meta = pq.read_schema(out).metadata
    assert b'"points_per_polygon": 300' in meta[b"geoembed"] and b'"geometry_kind": "polygon"' in meta[b"geoembed"]


def test_same_result_whatever_chunk_size_order_and_format(tmp_path, bundle_path):
    g = tracts(40, seed=2)
    ref = None
    for k, (chunk, order, fmt) in enumerate([(1000, None, "parquet"), (1, None, "parquet"), (7, 3, "parquet"),
                                             (16, 5, "gpkg"), (1000, None, "geojson"), (9, 1, "shp")]):
        df = g if order is None else g.sample(frac=1.0, random_state=order)
        src = tmp_path / f"t{k}.{fmt}"
        df.to_parquet(src) if fmt == "parquet" else df.to_file(src)
        out = tmp_path / f"o{k}.parquet"
        enrich_file(bundle_path, src, out, chunk_rows=chunk, points_per_polygon=100, workers=1 + k % 2)
        got = emb_by(out)
        if ref is None:
            ref = got
        else:
            pd.testing.assert_frame_equal(got, ref, check_dtype=False, obj=f"run {k}")  # bit for bit, polygon by polygon


def test_any_crs_gives_the_same_embeddings_up_to_sampling(tmp_path, bundle_path):
    g = tracts(12, seed=3)
    a, b = tmp_path / "a.parquet", tmp_path / "b.shp"
    g.to_parquet(a)
    g.to_crs("EPSG:31985").to_file(b)
    enrich_file(bundle_path, a, tmp_path / "a_out.parquet", points_per_polygon=2000)
    enrich_file(bundle_path, b, tmp_path / "b_out.parquet", points_per_polygon=2000)
    ea, eb = emb_by(tmp_path / "a_out.parquet"), emb_by(tmp_path / "b_out.parquet")
    spread = np.abs(ea[EMB].to_numpy()).mean()
    assert np.abs(ea[EMB].to_numpy() - eb[EMB].to_numpy()).max() < 0.05 * spread + 5e-3


def test_real_tracts_through_the_command_line(tmp_path, bundle_path, capsys):
    out = tmp_path / "tracts.parquet"
    rc = cli_main(["enrich", "--bundle", str(bundle_path), "--input", str(TRACTS), "--output", str(out),
                   "--points-per-polygon", "200", "--polygon-seed", "1"])
    assert rc == 0 and "enriched 470 polygons (0 invalid" in capsys.readouterr().out
    res = gpd.read_parquet(out)
    assert len(res) == 470 and (res[POINTS_COL] == 200).all()
    assert res[SHARE_COL].max() < 0.05  # all tracts lie inside the Landsat footprint
    assert res.crs is not None and res["V014"].sum() > 300_000
    # LocationEmbedder on the same GeoDataFrame: the same numbers
    g = gpd.read_file(TRACTS)
    emb = LocationEmbedder(bundle_path, points_per_polygon=200, polygon_seed=1, dtype="float32").fit_transform(g)
    np.testing.assert_array_equal(emb, res[EMB].to_numpy())
    # and the function evaluate calls
    e2, n2, share2 = embed_polygons(bundle_path, g, 200, 1)
    np.testing.assert_array_equal(e2, emb)
    assert (n2 == 200).all() and np.array_equal(share2, res[SHARE_COL].to_numpy())


def test_weight_raster(tmp_path, bundle, bundle_path):
    import rasterio
    from rasterio.transform import from_origin

    # weight 0 on the western half of each box, 5 on the eastern half (a 0.001-degree grid)
    tif = tmp_path / "w.tif"
    x0, y1, res_deg = -34.92, -7.95, 0.001
    w = np.zeros((100, 100), dtype=np.float32)
    cols_lon = x0 + (np.arange(100) + 0.5) * res_deg
    w[:, cols_lon > -34.87] = 5.0
    with rasterio.open(tif, "w", driver="GTiff", width=100, height=100, count=1, dtype="float32",
                       crs="EPSG:4326", transform=from_origin(x0, y1, res_deg, res_deg), nodata=-1) as ds:
        ds.write(w, 1)
    boxes = [shapely.box(-34.89, -8.0, -34.85, -7.98), shapely.box(-34.915, -8.0, -34.90, -7.99)]
    g = gpd.GeoDataFrame({"tract": ["A", "B"]}, geometry=boxes, crs="EPSG:4326")
    src = tmp_path / "t.parquet"
    g.to_parquet(src)
    out = tmp_path / "o.parquet"
    with pytest.raises(InputError, match=r"row 1: zero_weight \(all 400 points weigh 0"):
        enrich_file(bundle_path, src, out, points_per_polygon=400, weight_raster=tif)
    enrich_file(bundle_path, src, out, points_per_polygon=400, weight_raster=tif, on_invalid="null")
    res = pq.read_table(out).to_pandas()
    sampler = PolygonSampler(400, seed=0)
    _, _, keys, ea, _ = sampler.prepare(np.asarray(g.geometry.values[:1], dtype=object), None, True)
    lon, lat = sampler.sample(ea, keys)
    east = lon > -34.87
    want = bundle.embed(lon[east], lat[east]).astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(res.loc[0, EMB].to_numpy(float), want, rtol=1e-5, atol=1e-6)
    assert res.loc[0, POINTS_COL] == east.sum() and res[INVALID_COL].isna().tolist() == [True, False]
    assert res.loc[1, INVALID_COL] == "zero_weight"
    meta = pq.read_schema(out).metadata[b"geoembed"]
    assert b"weight_raster" in meta and b"w.tif" in meta
    # a negative density is an error naming the raster
    with rasterio.open(tif, "r+") as ds:
        ds.write(-w, 1)
    with pytest.raises(InputError, match=r"weight raster .*w.tif: negative value"):
        enrich_file(bundle_path, src, out, points_per_polygon=50, weight_raster=tif, on_invalid="null")
    with pytest.raises(InputError, match=r"raster .*nope.tif does not exist"):
        enrich_file(bundle_path, src, out, weight_raster=tmp_path / "nope.tif")
    pts = tmp_path / "pts.parquet"
    pd.DataFrame({"lon": [-34.88], "lat": [-7.99]}).to_parquet(pts)
    with pytest.raises(InputError, match=r"--weight-raster weighs points sampled in polygons.*\(lon, lat\)"):
        enrich_file(bundle_path, pts, out, weight_raster=tif)


# ------------------------------------------------------------------------------------------ bad input

def test_bad_polygons_are_errors_naming_rows_or_flagged(tmp_path, bundle_path, caplog):
    good = shapely.box(-34.89, -8.0, -34.88, -7.99)
    bow_tie = shapely.Polygon([(-34.89, -8.0), (-34.88, -7.99), (-34.88, -8.0), (-34.89, -7.99)])
    hole_outside = shapely.Polygon([(-34.89, -8.0), (-34.88, -8.0), (-34.88, -7.99)],
                                   [[(-34.87, -7.98), (-34.86, -7.98), (-34.86, -7.97)]])
    flat = shapely.Polygon([(-34.89, -8.0), (-34.88, -8.0), (-34.87, -8.0)])
    geoms = [good, None, shapely.Polygon(), bow_tie, hole_outside, flat, shapely.box(-200, 0, -199, 1)]
    g = gpd.GeoDataFrame({"tract": list("ABCDEFG")}, geometry=geoms, crs="EPSG:4326")
    src = tmp_path / "bad.parquet"
    g.to_parquet(src)
    out = tmp_path / "o.parquet"
    out.write_bytes(b"earlier output")
    with pytest.raises(InputError) as err:
        enrich_file(bundle_path, src, out, points_per_polygon=50)
    msg = str(err.value)
    assert "bad.parquet: 5 of 7 polygons are invalid" in msg
    for row, reason in [(1, "missing (null geometry)"), (2, "empty (Polygon EMPTY)"),
                        (4, "invalid_geometry (Hole lies outside shell"), (5, "zero_area"), (6, "out_of_range")]:
        assert f"row {row}: {reason}" in msg, (row, msg)
    assert out.read_bytes() == b"earlier output"  # nothing written that looks complete
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.parquet", "o.parquet"]
    s = enrich_file(bundle_path, src, out, points_per_polygon=50, on_invalid="null")
    assert s.repaired == 1 and s.invalid == 5
    res = pq.read_table(out).to_pandas()
    assert pq.read_table(out)[INVALID_COL].to_pylist() == [None, "missing", "empty", None, "invalid_geometry",
                                                          "zero_area", "out_of_range"]
    assert res.loc[3, POINTS_COL] == 50  # the bow-tie, repaired
    assert res[EMB].notna().all(axis=1).tolist() == [True, False, False, True, False, False, False]


@pytest.mark.parametrize("case", ["crs_null", "no_prj"])
def test_unknown_crs_names_the_file(tmp_path, bundle_path, case):
    g = tracts(3)
    if case == "crs_null":
        src = tmp_path / "t.parquet"
        g.set_crs(None, allow_override=True).to_parquet(src)
        pattern = r"t.parquet: geometry column 'geometry' has no CRS \(its GeoParquet metadata says crs: null\)"
    else:
        src = tmp_path / "t.shp"
        g.to_file(src)
        (tmp_path / "t.prj").unlink()
        pattern = r"t.shp: geometry column 'geometry' has no CRS \(no .prj file beside it\)"
    with pytest.raises(InputError, match=pattern):
        enrich_file(bundle_path, src, tmp_path / "o.parquet")
    assert not (tmp_path / "o.parquet").exists()
    s = enrich_file(bundle_path, src, tmp_path / "o.parquet", crs="EPSG:4326", points_per_polygon=20)
    assert s.rows == 3 and s.invalid == 0
    with pytest.raises(InputError, match="the GeoDataFrame's geometry has no CRS"):
        LocationEmbedder(bundle_path).fit(g.set_crs(None, allow_override=True))
    with pytest.raises(InputError, match="have no CRS"):
        embed_polygons(bundle_path, g.set_crs(None, allow_override=True))


def test_location_embedder_polygons_with_a_reduction_and_zero_rows(bundle_path):
    g = tracts(30, seed=5)
    est = LocationEmbedder(bundle_path, points_per_polygon=100, n_components=2).fit(g)
    out = est.transform(g)
    assert out.shape == (30, 2) and np.isfinite(out).all()
    assert est.transform(g.iloc[:0]).shape == (0, 2)
    # with pandas output, the columns are named
    est.set_output(transform="pandas")
    assert list(est.transform(g.iloc[:3]).columns) == ["emb_pc_0", "emb_pc_1"]
