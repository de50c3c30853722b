"""Location sampling: determinism, coverage exclusion, weighting, user tables, blocks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
from rasterio.transform import from_origin

from geoembed.config import parse_config
from geoembed.errors import InputError
from geoembed.geo import grid_blocks as spatial_blocks
from geoembed.geo import morton_order
from geoembed.io.locations import read_locations, read_locations_meta, write_locations
from geoembed.io.rasters import raster_footprint
from geoembed.locations import make_location_table


def _raster(path, data, crs="EPSG:4326", origin=(10.0, 50.0), res=0.01):
    data = np.asarray(data, dtype=np.float32)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                       dtype="float32", crs=crs, transform=from_origin(*origin, res, res)) as ds:
        ds.write(data, 1)
    return path


def _loc_cfg(**loc):
    return parse_config({"locations": loc}).locations


def test_uniform_is_deterministic_and_inside_bbox():
    cfg = _loc_cfg(region={"bbox": [10, 49, 11, 50]}, n=500)
    a, meta = make_location_table(cfg, [], seed=3)
    b, _ = make_location_table(cfg, [], seed=3)
    c, _ = make_location_table(cfg, [], seed=4)
    assert len(a) == 500 and meta["sampling"]["kept"] == 500
    np.testing.assert_array_equal(a["lon"], b["lon"])
    assert not np.array_equal(np.sort(a["lon"]), np.sort(c["lon"]))
    assert a["lon"].between(10, 11).all() and a["lat"].between(49, 50).all()
    assert a["location_id"].is_unique and a["lon"].dtype == np.float64


def test_uniform_is_uniform_in_area_on_the_sphere():
    # Between the equator and 80N, the fraction of area below 40N is sin(40)/sin(80).
    cfg = _loc_cfg(region={"bbox": [0, 0, 10, 80]}, n=40000)
    g, _ = make_location_table(cfg, [], seed=0)
    frac = (g["lat"] < 40).mean()
    expected = np.sin(np.radians(40)) / np.sin(np.radians(80))
    assert abs(frac - expected) < 0.01


def test_coverage_exclusion_is_counted(tmp_path):
    # Raster covers lon 10..10.5 of a 10..11 bbox: about half the draws fall outside and are excluded.
    r = _raster(tmp_path / "half.tif", np.ones((100, 50)))
    cfg = _loc_cfg(region={"bbox": [10, 49, 11, 50]}, n=1000)
    g, meta = make_location_table(cfg, [raster_footprint(r)], seed=0)
    s = meta["sampling"]
    assert len(g) == 1000 and g["lon"].max() <= 10.5
    assert s["excluded_no_coverage"] > 300 and s["drawn"] == s["excluded_no_coverage"] + s["kept"]


def test_no_overlap_is_a_clear_error(tmp_path):
    r = _raster(tmp_path / "far.tif", np.ones((10, 10)), origin=(100.0, 0.0))
    cfg = _loc_cfg(region={"bbox": [10, 49, 11, 50]}, n=10)
    with pytest.raises(InputError, match="no sampled location"):
        make_location_table(cfg, [raster_footprint(r)], seed=0)


def test_density_raster_weighting(tmp_path):
    # Left column weight 0, right columns weight 1 and 3: counts follow 0 : 1 : 3.
    data = np.zeros((10, 30), np.float32)
    data[:, 10:20] = 1
    data[:, 20:] = 3
    r = _raster(tmp_path / "dens.tif", data, origin=(10.0, 50.0), res=0.01)
    cfg = _loc_cfg(region={"bbox": [10, 49.9, 10.3, 50]}, n=8000, weight={"raster": str(r)})
    g, _ = make_location_table(cfg, [], seed=1)
    third = np.digitize(g["lon"], [10.1, 10.2])
    counts = np.bincount(third, minlength=3) / len(g)
    assert counts[0] == 0
    assert abs(counts[1] - 0.25) < 0.02 and abs(counts[2] - 0.75) < 0.02


def test_point_layer_weighting(tmp_path):
    import geopandas as gpd

    pts = gpd.GeoDataFrame(geometry=gpd.points_from_xy([10.2, 10.8], [49.5, 49.5]), crs="EPSG:4326")
    pts.to_file(tmp_path / "pts.gpkg")
    cfg = _loc_cfg(region={"bbox": [10, 49, 11, 50]}, n=2000,
                   weight={"points": str(tmp_path / "pts.gpkg"), "jitter_m": 500})
    g, _ = make_location_table(cfg, [], seed=0)
    d = np.minimum(np.hypot(g["lon"] - 10.2, g["lat"] - 49.5), np.hypot(g["lon"] - 10.8, g["lat"] - 49.5))
    assert np.quantile(d, 0.99) < 0.05  # 500 m jitter is about 0.007 degrees


def test_user_points_table(tmp_path):
    df = pd.DataFrame({"pid": [7, 3, 9, 1], "x": [10.1, 10.2, 10.9, 10.4], "y": [49.5, 49.6, 49.7, 49.8]})
    df.to_csv(tmp_path / "p.csv", index=False)
    r = _raster(tmp_path / "half.tif", np.ones((100, 50)))  # covers lon < 10.5
    cfg = _loc_cfg(points=str(tmp_path / "p.csv"), lon_col="x", lat_col="y", id_col="pid")
    g, meta = make_location_table(cfg, [raster_footprint(r)], seed=0)
    assert sorted(g["location_id"]) == [1, 3, 7] and meta["sampling"]["excluded_no_coverage"] == 1
    row = g.set_index("location_id").loc[3]
    assert (row["lon"], row["lat"]) == (10.2, 49.6)


def test_user_points_bad_rows_are_named(tmp_path):
    df = pd.DataFrame({"lon": [10.1, "abc", 10.3, 200.0], "lat": [49.5, 49.6, None, 49.0]})
    df.to_csv(tmp_path / "p.csv", index=False)
    cfg = _loc_cfg(points=str(tmp_path / "p.csv"))
    with pytest.raises(InputError, match=r"p\.csv: 3 rows .* rows \[1, 2, 3\]"):
        make_location_table(cfg, [], seed=0)
    with pytest.raises(InputError, match="does not exist"):
        make_location_table(_loc_cfg(points=str(tmp_path / "missing.csv")), [], seed=0)


def test_blocks_are_square_metric_cells():
    # Block edges sit on multiples of 1 km from the points' mean; the first two points share a block.
    lon = np.array([10.0003, 10.0004, 10.05, 9.95])
    lat = np.array([50.0003, 50.0004, 50.0, 50.0])
    b = spatial_blocks(lon, lat, 1000.0)
    assert b[0] == b[1] and len({b[0], b[2], b[3]}) == 3


def test_morton_order_keeps_neighbours_together():
    rng = np.random.default_rng(0)
    lon, lat = rng.uniform(0, 1, 4096), rng.uniform(0, 1, 4096)
    o = morton_order(lon, lat)
    assert sorted(o) == list(range(4096))
    step = np.hypot(np.diff(lon[o]), np.diff(lat[o]))
    assert np.median(step) < 0.05  # random order would give about 0.5


def test_locations_round_trip_with_metadata(tmp_path):
    cfg = _loc_cfg(region={"bbox": [10, 49, 11, 50]}, n=50)
    g, meta = make_location_table(cfg, [], seed=0)
    write_locations(g, tmp_path / "l.parquet", meta)
    back = read_locations(tmp_path / "l.parquet")
    assert back.crs.to_epsg() == 4326
    assert list(back.columns[:4]) == ["location_id", "lon", "lat", "block_id"]
    assert read_locations_meta(tmp_path / "l.parquet")["sampling"]["kept"] == 50
    assert shapely.equals(back.geometry.iloc[0], g.geometry.iloc[0])


def test_footprint_across_the_antimeridian_is_split_geographic(tmp_path):
    # lon 170..190 (as a geographic raster may store it): the footprint holds both sides of 180.
    r = _raster(tmp_path / "am.tif", np.ones((100, 2000)), origin=(170.0, 10.0), res=0.01)
    fp = raster_footprint(r)
    assert fp.bounds[0] == pytest.approx(-180.0) and fp.bounds[2] == pytest.approx(180.0)
    assert fp.area == pytest.approx(20.0 * 1.0, rel=1e-9)
    inside = shapely.contains_xy(fp, [175.0, 179.99, -179.99, -175.0], [9.5] * 4)
    outside = shapely.contains_xy(fp, [0.0, -165.0, 165.0, 175.0], [9.5, 9.5, 9.5, 11.0])
    assert inside.all() and not outside.any()


def test_footprint_across_the_antimeridian_is_split_projected(tmp_path):
    # UTM 60N (central meridian 177E): x 600..800 km at 50N reaches past 180 (about 181.2E).
    r = _raster(tmp_path / "utm60.tif", np.ones((100, 200)), crs="EPSG:32660", origin=(600_000.0, 5_600_000.0),
                res=1000.0)
    fp = raster_footprint(r)
    assert fp.geom_type == "MultiPolygon" and len(fp.geoms) == 2
    assert shapely.contains_xy(fp, [178.8, -179.5], [50.1, 50.1]).all()
    assert not shapely.contains_xy(fp, [0.0, -170.0], [50.1, 50.1]).any()


def test_footprint_of_a_0_360_raster_covers_west_longitudes(tmp_path):
    r = _raster(tmp_path / "g360.tif", np.ones((18, 36)), origin=(0.0, 90.0), res=10.0)
    fp = raster_footprint(r)
    assert shapely.contains_xy(fp, [-90.0, -179.0, 90.0, 179.0], [0.0, 45.0, -45.0, 0.0]).all()
    assert fp.area == pytest.approx(360.0 * 180.0, rel=1e-9)


def test_locations_in_a_raster_across_the_antimeridian_fall_on_both_sides(tmp_path):
    r = _raster(tmp_path / "am.tif", np.ones((100, 2000)), origin=(170.0, 10.0), res=0.01)
    cfg = _loc_cfg(region={"raster": str(r)}, n=400)
    g, meta = make_location_table(cfg, [raster_footprint(r)], seed=0)
    assert len(g) == 400 and meta["sampling"]["excluded_no_coverage"] == 0
    east, west = (g["lon"] > 0).sum(), (g["lon"] < 0).sum()
    assert east > 120 and west > 120  # about half each
    assert g["lon"].abs().min() >= 170.0 and g["lat"].between(9.0, 10.0).all()


def test_density_raster_across_the_antimeridian_gives_wrapped_longitudes(tmp_path):
    # density 1 on 175..180, 3 on 180..185 (stored as 175..185): draws east of 180 come back as -180..-175.
    data = np.ones((10, 1000), np.float32)
    data[:, 500:] = 3
    r = _raster(tmp_path / "dens_am.tif", data, origin=(175.0, 10.0), res=0.01)
    cfg = _loc_cfg(region={"raster": str(r)}, n=4000, weight={"raster": str(r)})
    g, meta = make_location_table(cfg, [raster_footprint(r)], seed=0)
    assert len(g) == 4000 and meta["sampling"]["excluded_no_coverage"] == 0
    assert g["lon"].between(-180.0, 180.0).all()
    west = (g["lon"] < 0).mean()
    assert abs(west - 0.75) < 0.03 and g.loc[g["lon"] < 0, "lon"].max() <= -175.0


def test_bbox_across_the_antimeridian(tmp_path):
    cfg = _loc_cfg(region={"bbox": [170, -20, -170, -10]}, n=3000)
    g, meta = make_location_table(cfg, [], seed=0)
    assert len(g) == 3000 and meta["sampling"]["kept"] == 3000
    assert ((g["lon"] >= 170) | (g["lon"] <= -170)).all() and g["lat"].between(-20, -10).all()
    assert abs((g["lon"] > 0).mean() - 0.5) < 0.04  # 10 degrees on each side
    assert meta["sampling"]["drawn"] < 3000 * 2  # drawn from the unwrapped box, not the whole globe
    for bad in ([170, -20, 170, -10], [5, -20, -5, -10]):  # empty; swapped corners (350 degrees wide)
        with pytest.raises(Exception, match="across the antimeridian, at most 180 degrees wide"):
            _loc_cfg(region={"bbox": bad}, n=10)
