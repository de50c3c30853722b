"""Tests of the OSM view: catalogue, readers, hex layout, exact disk aggregates, distances, build/resume."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import h3
import numpy as np
import pandas as pd
import pytest
import shapely
from pyproj import Transformer

from geoembed.config.build import DaskConfig, OsmViewConfig, RasterViewConfig
from geoembed.errors import ConfigError, InputError
from geoembed.geo import utm_crs as metric_crs
from geoembed.io.locations import make_locations
from geoembed.io.viewstore import ViewStore
from geoembed.testing.osm import synthetic_features, write_features_parquet, write_osm_xml
from geoembed.views import driver
from geoembed.views import osm as osm_mod
from geoembed.views.driver import build_view_store
from geoembed.views.osm import OsmView, compute_osm_chunk, prepare_osm
from geoembed.views.osm_catalogue import load_catalogue, parse_catalogue
from geoembed.views.osm_geom import (
    HEX_MASK,
    HEX_OFFSETS,
    DiskIndex,
    polygon_edges,
    segment_length_in_disk,
)
from geoembed.views.osm_read import read_osm_features

CENTRE = (24.94, 60.17)


def _gtype(gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    t = shapely.get_type_id(gdf.geometry.values)
    gdf = gdf.copy()
    gdf["gtype"] = np.select([t == 0, t == 1, t == 3], ["point", "line", "polygon"], "")
    return gdf


def _project(lon, lat, crs):
    x, y = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(np.asarray(lon), np.asarray(lat))
    return np.asarray(x), np.asarray(y)


def _random_locations(n, seed=1, extent_m=3000.0):
    rng = np.random.default_rng(seed)
    lon = CENTRE[0] + rng.uniform(-0.5, 0.5, n) * extent_m / (111_320 * np.cos(np.radians(CENTRE[1])))
    lat = CENTRE[1] + rng.uniform(-0.5, 0.5, n) * extent_m / 111_320
    return lon, lat


# ------------------------------------------------------------------------------------------ catalogue
def test_default_catalogue_has_paper_and_risk_categories():
    cat = load_catalogue()
    assert cat.hex_categories == ["health", "shops", "tourism", "food_and_drink", "education", "public_services"]
    for name in ("buildings", "roads_major", "roads_primary", "roads_local", "water", "green", "emergency"):
        assert name in cat.names
    names = cat.radius_feature_names([250.0, 1000.0])
    assert "roads_major_length_m_r250" in names and "buildings_area_m2_r1000" in names
    assert "green_share_r250" in names and "shops_count_r1000" in names
    assert len(names) == len(set(names))


def test_catalogue_matching():
    cat = parse_catalogue({"categories": {
        "food": {"tags": {"amenity": ["cafe", "restaurant"]}},
        "bld": {"tags": {"building": "*"}, "geometry": ["polygon"], "measures": ["count", "area"]},
        "road": {"tags": {"highway": "primary"}, "geometry": ["line"], "measures": ["length"]},
    }})
    tags = pd.DataFrame({"amenity": ["cafe", "bench", None, "restaurant", None, None],
                         "building": [None, None, "yes", "yes", "no", "house"],
                         "highway": [None, None, None, None, "primary", "primary"]})
    gtype = np.array(["point", "point", "polygon", "polygon", "line", "point"])
    m = cat.match(tags, gtype)
    np.testing.assert_array_equal(m[:, 0], [1, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(m[:, 1], [0, 0, 1, 1, 0, 0])  # "no" excluded; point rejected
    np.testing.assert_array_equal(m[:, 2], [0, 0, 0, 0, 1, 0])  # point primary rejected by geometry
    assert cat.keys == ["amenity", "building", "highway"]


def test_catalogue_errors_name_the_key(tmp_path):
    bad = tmp_path / "cat.yaml"
    bad.write_text("categories:\n  health:\n    tags: {amenity: hospital}\n    measures: [cnt]\n")
    with pytest.raises(ConfigError, match=r"cat.yaml.*\n.*categories\.health\.measures"):
        load_catalogue(bad)
    bad.write_text("categories:\n  health:\n    tags: {amenity: hospital}\n    colour: red\n")
    with pytest.raises(ConfigError, match=r"categories\.health\.colour: unknown key"):
        load_catalogue(bad)
    bad.write_text("categories:\n  water:\n    tags: {natural: water}\n    geometry: [point]\n"
                   "    measures: [area]\n")
    with pytest.raises(ConfigError, match=r"categories\.water.*'area' needs geometry 'polygon'"):
        load_catalogue(bad)
    bad.write_text("categories: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_catalogue(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_catalogue(tmp_path / "nope.yaml")


def test_gdal_pbf_reader_on_the_helsinki_kit(helsinki_pbf):
    """The GDAL fallback (``reader="gdal"``; the default is libosmium, tests/test_osm_pbf.py): the
    catalogue's keys come straight from GDAL's OSM driver (a generated osmconf.ini); the counts equal
    those of the former reader, which parsed GDAL's other_tags strings."""
    f = read_osm_features(helsinki_pbf, load_catalogue().keys, reader="gdal")
    assert f["gtype"].value_counts().to_dict() == {"point": 9115, "line": 5161, "polygon": 1199}
    assert f.drop(columns=["geometry", "gtype"]).notna().sum().to_dict() == {
        "amenity": 1091, "building": 525, "emergency": 50, "healthcare": 6, "highway": 4070, "landuse": 243,
        "leisure": 44, "natural": 832, "office": 231, "shop": 625, "tourism": 118, "water": 1, "waterway": 6}
    assert f.crs.to_epsg() == 4326 and (f.loc[f["shop"].notna(), "shop"] == "supermarket").any()
    # keys with a colon (GDAL names their fields addr_street) are read too
    g = read_osm_features(helsinki_pbf, ["addr:street", "amenity"], reader="gdal")
    assert g["addr:street"].notna().sum() > 1000 and g["amenity"].notna().sum() == 1091


def test_hex_mask_layout():
    assert HEX_MASK.shape == (7, 7) and HEX_MASK.sum() == 37
    assert len(HEX_OFFSETS) == 37
    # the 12 non-cells are the two corners where |di - dj| > 3
    assert HEX_MASK[0, 6] == 0 and HEX_MASK[6, 0] == 0 and HEX_MASK[0, 0] == 1 and HEX_MASK[6, 6] == 1


def test_hex_tensor_positions():
    res = 9
    centre = h3.latlng_to_cell(CENTRE[1], CENTRE[0], res)
    ring1 = h3.grid_ring(centre, 1)
    ring3 = h3.grid_ring(centre, 3)
    ring4 = h3.grid_ring(centre, 4)
    cells = [centre] + ring1 + [ring3[0], ring4[0]]
    n_per = [1] + [k + 2 for k in range(6)] + [50, 100]  # distinct counts identify each cell
    lat, lon = np.array([h3.cell_to_latlng(c) for c in cells]).T
    rep = np.repeat(np.arange(len(cells)), n_per)
    feats = gpd.GeoDataFrame({"shop": ["bakery"] * len(rep)}, geometry=shapely.points(lon[rep], lat[rep]),
                             crs="EPSG:4326")
    cat = load_catalogue()
    crs = metric_crs(lon, lat)
    prep = prepare_osm(_gtype(feats), cat, crs, h3_resolution=res)
    x, y = _project([lon[0]], [lat[0]], crs)
    out = compute_osm_chunk(prep, x, y, lon[:1], lat[:1], parts=("hex",))
    hx = out["hex"][0, cat.hex_categories.index("shops")]
    assert hx[3, 3] == 1  # the location's own cell sits in the centre
    assert hx.sum() == 1 + sum(range(2, 8)) + 50  # ring 4 is outside the tensor
    assert np.all(hx[HEX_MASK == 0] == 0)
    pos = {}
    cx, cy = _project(lon, lat, crs)
    for k in range(6):
        (i,), (j,) = np.nonzero(hx == k + 2)
        pos[k] = (i - 3, j - 3)
    # ring-1 cells occupy exactly the six axial neighbour positions ...
    assert set(pos.values()) == {(1, 0), (0, 1), (1, 1), (-1, 0), (0, -1), (-1, -1)}
    # ... and positions opposite in the layout are opposite on the ground (an axial, not a scrambled, map)
    for k, (di, dj) in pos.items():
        opp = next(m for m, p in pos.items() if p == (-di, -dj))
        mid = ((cx[1 + k] + cx[1 + opp]) / 2 - cx[0], (cy[1 + k] + cy[1 + opp]) / 2 - cy[0])
        assert np.hypot(*mid) < 5.0
    # axial addition: cell (1,0) + cell (0,1) directions sum to the (1,1) direction
    vec = {p: np.array([cx[1 + k] - cx[0], cy[1 + k] - cy[0]]) for k, p in pos.items()}
    assert np.linalg.norm(vec[(1, 0)] + vec[(0, 1)] - vec[(1, 1)]) < 5.0
    (i,), (j,) = np.nonzero(hx == 50)
    assert max(abs(i - 3), abs(j - 3), abs((i - 3) - (j - 3))) == 3


# ------------------------------------------------------------------------------------------ disk kernels
def test_segment_kernel_against_shapely():
    rng = np.random.default_rng(0)
    seg = rng.uniform(-100, 100, (300, 4))
    qx, qy = rng.uniform(-60, 60, 300), rng.uniform(-60, 60, 300)
    r = 45.0
    disks = shapely.buffer(shapely.points(qx, qy), r, quad_segs=2048)
    ref_l = shapely.length(shapely.intersection(shapely.linestrings(seg.reshape(-1, 2, 2)), disks))
    # shapely's disk is a 8192-gon: a near-tangent chord can differ by sqrt(2 r sagitta) ~ 1 cm
    np.testing.assert_allclose(segment_length_in_disk(seg, qx, qy, r), ref_l, rtol=1e-5, atol=2e-2)


def test_polygon_edges_are_oriented():
    poly = shapely.Polygon([(0, 0), (0, 200), (300, 200), (300, 0)], [[(50, 50), (100, 50), (100, 120)]])
    bow = shapely.Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])  # invalid bow-tie: repaired
    seg, owner, polys, powner = polygon_edges(np.array([poly, shapely.box(1000, 0, 1010, 10), bow]), 20.0)
    xdy = (seg[:, 0] + seg[:, 2]) / 2 * (seg[:, 3] - seg[:, 1])  # Green: sum of x dy = area (CCW)
    np.testing.assert_allclose(np.bincount(owner, weights=xdy), [poly.area, 100.0, 50.0], rtol=1e-12)
    assert np.hypot(seg[:, 2] - seg[:, 0], seg[:, 3] - seg[:, 1]).max() <= 20.0 + 1e-9
    assert sorted(powner.tolist()) == [0, 1, 2, 2]


def _area_index(polys, cats, n_cat, cell):
    seg, owner, parts, powner = polygon_edges(np.asarray(polys, dtype=object), cell)
    return DiskIndex.build("area", seg, np.asarray(cats)[owner], n_cat, cell, polygons=parts,
                           polygon_cat=np.asarray(cats)[powner])


def test_area_closed_forms():
    r = 100.0
    big = shapely.box(-1000, -1000, 1000, 1000)
    half = shapely.box(50, -1000, 1000, 1000)  # chord at x = r/2: segment area r^2 (pi/3 - sqrt(3)/4)
    small = shapely.Polygon([(10, 10), (30, 10), (20, 40)])
    idx = _area_index([big, half, small], [0, 1, 2], 3, 10.0)
    got = idx.query(np.array([0.0]), np.array([0.0]), r)[0]
    np.testing.assert_allclose(got, [np.pi * r * r, r * r * (np.pi / 3 - np.sqrt(3) / 4), small.area],
                               rtol=1e-12)
    # a disk inside two big polygons, and one far outside everything
    got = idx.query(np.array([500.0, 5000.0]), np.array([500.0, 0.0]), r)
    np.testing.assert_allclose(got, [[np.pi * r * r, np.pi * r * r, 0], [0, 0, 0]], rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("kind", ["count", "length"])
def test_disk_index_equals_brute_force(kind):
    """The grid (prefix sums inside, exact kernel on the rim) equals summing the kernel over everything."""
    rng = np.random.default_rng(3)
    m, n_cat = 3000, 3
    if kind == "count":
        data = rng.uniform(0, 2000, (m, 2))
    else:
        p = rng.uniform(0, 2000, (m, 2))
        data = np.hstack([p, p + rng.uniform(-15, 15, (m, 2))])
    cat = rng.integers(0, n_cat, m)
    qx = np.r_[rng.uniform(-300, 2300, 200), -5000.0, 1000.0]
    qy = np.r_[rng.uniform(-300, 2300, 200), -5000.0, 1000.0]
    for cell in (7.0, 40.0):
        idx = DiskIndex.build(kind, data, cat, n_cat, cell)
        for r in (30.0, 333.0):
            got = idx.query(qx, qy, r, batch=64)
            want = np.zeros((len(qx), n_cat))
            for q in range(len(qx)):
                if kind == "count":
                    v = (np.hypot(data[:, 0] - qx[q], data[:, 1] - qy[q]) <= r).astype(float)
                else:
                    v = segment_length_in_disk(data, qx[q], qy[q], r)
                want[q] = np.bincount(cat, weights=v, minlength=n_cat)
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-6)


def test_count_ties_on_the_circle_are_exact():
    """Points exactly on the circle count (hypot <= r, as the brute force); just outside do not."""
    q = np.array([[1000.0, 2000.0], [1013.0, 2007.0]])
    ring = np.array([(3, 4), (-4, 3), (0, -5), (5, 0), (-3, -4)], dtype=float)  # |.| = 5 exactly
    pts = np.vstack([q[0] + ring, q[1] + ring, q[0] + ring * (1 + 1e-15), q[0] + [5.0 + 1e-12, 0.0],
                     q[0] + [0.0, 4.999999999]])
    cat = np.r_[np.zeros(10, int), np.ones(7, int)]
    for cell in (0.7, 2.0, 30.0):
        idx = DiskIndex.build("count", pts, cat, 2, cell)
        got = idx.query(q[:, 0], q[:, 1], 5.0, batch=1)
        want = np.array([[(np.hypot(*(pts[cat == k] - p).T) <= 5.0).sum() for k in (0, 1)] for p in q])
        np.testing.assert_array_equal(got, want)
        # ties count; ring * (1 + 1e-15) rounds back onto the circle; 5 + 1e-12 is out, 4.999999999 in
        assert got[0, 0] == 5 and got[1, 0] == 5 and got[0, 1] == 6 and got[1, 1] == 0


def test_query_order_and_batches_do_not_change_results():
    rng = np.random.default_rng(7)
    p = rng.uniform(0, 3000, (4000, 2))
    seg = np.hstack([p, p + rng.uniform(-20, 20, (4000, 2))])
    idx = DiskIndex.build("length", seg, rng.integers(0, 2, 4000), 2, 25.0)
    qx, qy = rng.uniform(-100, 3100, 300), rng.uniform(-100, 3100, 300)
    ref = idx.query(qx, qy, 400.0, batch=300)
    perm = rng.permutation(300)
    np.testing.assert_allclose(idx.query(qx[perm], qy[perm], 400.0, batch=7), ref[perm], rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("cap", [60.0, 5000.0])
def test_nearest_index_equals_shapely_distance(cap):
    """Lines, polygons with holes, multipolygons and multipoints; queries inside, in holes, on edges,
    far outside the grid and beyond the cap."""
    from geoembed.views.osm_geom import NearestIndex

    rng = np.random.default_rng(11)
    geoms = [shapely.LineString(rng.uniform(0, 1000, (int(rng.integers(2, 6)), 2))) for _ in range(30)]
    geoms += [shapely.Polygon([(100, 100), (400, 100), (400, 400), (100, 400)], [[(200, 200), (300, 200),
                                                                                  (300, 300), (200, 300)]]),
              shapely.MultiPolygon([shapely.box(600, 600, 650, 700), shapely.box(700, 600, 720, 620)]),
              shapely.MultiPoint([(900, 50), (950, 80)]),
              shapely.MultiLineString([[(0, 900), (50, 950)], [(60, 960), (400, 990)]])]
    geoms = np.array(geoms, dtype=object)
    qx = np.r_[rng.uniform(-200, 1200, 400), 250.0, 150.0, 400.0, 5000.0, -3000.0, 625.0]
    qy = np.r_[rng.uniform(-200, 1200, 400), 250.0, 150.0, 250.0, 5000.0, 500.0, 650.0]
    for max_part in (7.0, 60.0):
        idx = NearestIndex(geoms, max_part)
        got = idx.distance(qx, qy, cap)
        want = np.minimum(shapely.distance(geoms[None, :], shapely.points(qx, qy)[:, None]).min(1), cap)
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
        assert got[-6] > 0  # in the hole
        assert got[-5] == 0 and got[-4] == 0 and got[-1] == 0  # inside, on the ring, inside a multipolygon part
        assert got[-3] == cap


def test_nearest_index_of_nothing_is_the_cap():
    from geoembed.views.osm_geom import NearestIndex

    idx = NearestIndex(np.array([], dtype=object), 10.0)
    np.testing.assert_array_equal(idx.distance(np.r_[1.0, 2.0], np.r_[3.0, 4.0], 77.0), [77.0, 77.0])


def test_tune_malloc_on_linux():
    import sys

    from geoembed.views.osm_geom import tune_malloc

    assert tune_malloc() is sys.platform.startswith("linux")
    assert tune_malloc() is sys.platform.startswith("linux")  # idempotent


def test_area_index_vs_shapely():
    """Overlapping rectangles, a polygon with a hole and big polygons against shapely intersections."""
    rng = np.random.default_rng(4)
    c = rng.uniform(0, 2000, (150, 2))
    w = rng.uniform(5, 400, (150, 2))
    polys = list(shapely.box(c[:, 0], c[:, 1], c[:, 0] + w[:, 0], c[:, 1] + w[:, 1]))
    polys.append(shapely.Polygon([(0, 0), (1500, 100), (900, 1400)], [[(700, 500), (900, 500), (800, 700)]]))
    cats = rng.integers(0, 2, len(polys))
    qx = np.r_[rng.uniform(-200, 2200, 120), 800.0]
    qy = np.r_[rng.uniform(-200, 2200, 120), 600.0]
    for cell in (9.0, 60.0):
        idx = _area_index(polys, cats, 2, cell)
        for r in (40.0, 450.0):
            got = idx.query(qx, qy, r, batch=50)
            disks = shapely.buffer(shapely.points(qx, qy), r, quad_segs=1024)
            inter = shapely.area(shapely.intersection(np.array(polys)[None, :], disks[:, None]))
            want = np.stack([inter[:, cats == k].sum(1) for k in range(2)], 1)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=0.5)

# ------------------------------------------------------------------------------------------ view maths
@pytest.fixture(scope="module")
def synth():
    feats = synthetic_features(400, 80, 80, centre=CENTRE, extent_m=3000.0, seed=5)
    # a green polygon with a hole and a multi-part polygon, to exercise triangulation
    lon0, lat0 = CENTRE
    m = 1 / 111_320
    f = m / np.cos(np.radians(lat0))
    holed = shapely.Polygon([(lon0 - 300 * f, lat0 - 300 * m), (lon0 + 300 * f, lat0 - 300 * m),
                             (lon0 + 300 * f, lat0 + 250 * m), (lon0 - 300 * f, lat0 + 250 * m)],
                            [[(lon0 - 100 * f, lat0 - 100 * m), (lon0 + 100 * f, lat0 - 100 * m),
                              (lon0, lat0 + 100 * m)]])
    extra = gpd.GeoDataFrame({"leisure": ["park"]}, geometry=[holed], crs="EPSG:4326")
    return _gtype(pd.concat([feats, extra], ignore_index=True).pipe(gpd.GeoDataFrame, crs="EPSG:4326"))


def test_radius_aggregates_and_distances_vs_brute_force(synth):
    cat = load_catalogue()
    lon, lat = _random_locations(40)
    crs = metric_crs(lon, lat)
    radii = [150.0, 600.0]
    prep = prepare_osm(synth, cat, crs, radii_m=radii, max_distance_m=400.0)
    x, y = _project(lon, lat, crs)
    out = compute_osm_chunk(prep, x, y, lon, lat)
    assert out["valid"].all()
    names = cat.radius_feature_names(radii)
    got = pd.DataFrame(out["radius"].astype(np.float64), columns=names)

    geom = np.asarray(synth.to_crs(crs).geometry.values, dtype=object)
    member = cat.match(synth, synth["gtype"].to_numpy())
    t = shapely.get_type_id(geom)
    rep = geom.copy()
    rep[t == 1] = shapely.line_interpolate_point(geom[t == 1], 0.5, normalized=True)
    rep[t == 3] = shapely.point_on_surface(geom[t == 3])
    pts = shapely.points(x, y)
    checked = 0
    for r in radii:
        disks = shapely.buffer(pts, r, quad_segs=1024)
        rl = str(int(r))
        for k, name in enumerate(cat.names):
            c = cat.categories[name]
            g = geom[member[:, k]]
            if "count" in c.measures:
                want = shapely.dwithin(rep[member[:, k]][None, :], pts[:, None], r).sum(1)
                np.testing.assert_array_equal(got[f"{name}_count_r{rl}"], want)
                checked += want.sum() > 0
            if "length" in c.measures:
                lines = g[shapely.get_type_id(g) == 1]
                want = shapely.length(shapely.intersection(lines[None, :], disks[:, None])).sum(1)
                # reference disk is a 4096-gon: near-tangent chords may differ by up to ~0.5 m
                np.testing.assert_allclose(got[f"{name}_length_m_r{rl}"], want, rtol=2e-5, atol=0.5)
                checked += want.sum() > 0
            if "area" in c.measures:
                polys = g[shapely.get_type_id(g) == 3]
                want = shapely.area(shapely.intersection(polys[None, :], disks[:, None])).sum(1)
                np.testing.assert_allclose(got[f"{name}_area_m2_r{rl}"], want, rtol=2e-5, atol=0.5)
                np.testing.assert_allclose(got[f"{name}_share_r{rl}"], want / (np.pi * r * r), rtol=2e-5,
                                           atol=1e-5)
                checked += want.sum() > 0
    assert checked >= 15  # most categories are non-trivial in this fixture

    # capped nearest distance, geometry to point (0 inside polygons)
    for k in range(len(cat.names)):
        g = geom[member[:, k]]
        want = np.full(len(x), 400.0) if len(g) == 0 else np.minimum(
            shapely.distance(g[None, :], pts[:, None]).min(1), 400.0)
        np.testing.assert_allclose(out["distance"][:, k], want, rtol=1e-6, atol=1e-3)
    assert (out["distance"] < 400).any() and (out["distance"] == 400).any()


def test_outside_extent_is_invalid_nan(synth):
    cat = load_catalogue()
    lon = np.array([CENTRE[0], CENTRE[0] + 1.0])
    lat = np.array([CENTRE[1], CENTRE[1]])
    crs = metric_crs(lon, lat)
    prep = prepare_osm(synth, cat, crs)
    x, y = _project(lon, lat, crs)
    out = compute_osm_chunk(prep, x, y, lon, lat)
    assert out["valid"].tolist() == [True, False]
    for k in ("hex", "radius", "distance"):
        assert np.isfinite(out[k][0]).all() and np.isnan(out[k][1]).all()


# ------------------------------------------------------------------------------------------ readers + build
def _locs(n=30, seed=2):
    lon, lat = _random_locations(n, seed=seed, extent_m=2000.0)
    return make_locations(np.arange(n) * 7 + 3, lon, lat)


def test_xml_and_geoparquet_sources_agree(tmp_path, synth):
    small = synth.iloc[np.r_[0:40, 400:415, 480:495]].drop(columns="gtype")
    # OSM files hold coordinates to 1e-7 degrees (libosmium reads them so): both sources get those
    small = small.set_geometry(shapely.transform(small.geometry.values, lambda c: np.round(c, 7)))
    xml = write_osm_xml(small, tmp_path / "tiny.osm")
    pq = write_features_parquet(small, tmp_path / "tiny.parquet")
    keys = load_catalogue().keys
    fx = read_osm_features(xml, keys)
    fp = read_osm_features(pq, keys)
    assert fx["gtype"].value_counts().to_dict() == fp["gtype"].value_counts().to_dict() == {
        "point": 40, "line": 15, "polygon": 15}
    assert read_osm_features(xml, keys, reader="gdal")["gtype"].value_counts().to_dict() == {  # osmnx
        "point": 40, "line": 15, "polygon": 15}
    locs = _locs()
    dcfg = DaskConfig(chunk_size=8)
    sx = build_view_store(OsmViewConfig(name="a", source=str(xml)), locs, tmp_path / "vx", dask_cfg=dcfg)
    sp = build_view_store(OsmViewConfig(name="b", source=str(pq)), locs, tmp_path / "vp", dask_cfg=dcfg)
    for name in ("hex", "radius", "distance", "valid"):
        np.testing.assert_allclose(sx.read(name), sp.read(name), rtol=1e-5, atol=1e-3)
    assert sx.read("radius")[sx.read("valid")].sum() > 0


@pytest.mark.parametrize("content,name", [(None, "missing.osm.pbf"), (b"", "empty.osm.pbf"),
                                          (b"\x00garbage" * 50, "corrupt.osm.pbf"),
                                          (b"<osm><node", "corrupt.osm"), (b"not parquet", "bad.parquet"),
                                          (b"x", "features.csv")])
def test_bad_sources_name_the_file(tmp_path, content, name):
    p = tmp_path / name
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(InputError, match=name.replace(".", r"\.")):
        read_osm_features(p, ["amenity"])
    if content is None:
        with pytest.raises(InputError, match=name.replace(".", r"\.")):
            build_view_store(OsmViewConfig(name="v", source=str(p)), _locs(5), tmp_path / "v",
                           dask_cfg=DaskConfig())


def test_build_resume_recomputes_only_missing_chunks(tmp_path, synth, monkeypatch):
    pq = write_features_parquet(synth.drop(columns="gtype"), tmp_path / "f.parquet")
    cfg = OsmViewConfig(name="osm", source=str(pq), radii_m=[200.0])
    locs = _locs(45)
    dcfg = DaskConfig(chunk_size=10)
    out = tmp_path / "view"
    store = build_view_store(cfg, locs, out, dask_cfg=dcfg)
    assert store.complete and store.n_chunks == 5
    assert store.read("location_id").tolist() == locs["location_id"].tolist()
    full = {k: store.read(k) for k in ("hex", "radius", "distance")}
    meta = json.loads((out / "meta.json").read_text())
    assert meta["attrs"]["source_fingerprint"].startswith("sha256:")
    assert meta["attrs"]["radius_features"][0] == "health_count_r200"
    assert np.array(meta["attrs"]["hex_mask"]).sum() == 37

    for i in (1, 3):
        (out / "_chunks" / f"{i}.json").unlink()
    for arr in ("radius",):  # wipe the rows too, to prove they are rewritten
        ViewStore.open(out, require_complete=False)._group("r+")[arr][10:20] = np.nan
    calls = []
    real = osm_mod.compute_osm_chunk

    def spy(prep, x, *a, **kw):
        calls.append(len(x))
        return real(prep, x, *a, **kw)

    monkeypatch.setattr(osm_mod, "compute_osm_chunk", spy)
    again = build_view_store(cfg, locs, out, dask_cfg=dcfg)
    assert sorted(calls) == [10, 10] and again.complete
    for k, v in full.items():
        np.testing.assert_array_equal(again.read(k), v)
    calls.clear()
    build_view_store(cfg, locs, out, dask_cfg=dcfg)  # complete: nothing to do
    assert calls == []
    with pytest.raises(InputError, match="different inputs"):
        build_view_store(cfg.model_copy(update={"radii_m": [300.0]}), locs, out, dask_cfg=dcfg)


def test_process_workers_give_the_same_store(tmp_path, synth):
    """Worker processes read the prepared features from a scratch file (removed afterwards) and write
    the same rows as the threaded run."""
    pq = write_features_parquet(synth.drop(columns="gtype"), tmp_path / "f.parquet")
    cfg = OsmViewConfig(name="osm", source=str(pq), radii_m=[150.0, 500.0])
    locs = _locs(40)
    a = build_view_store(cfg, locs, tmp_path / "threads", dask_cfg=DaskConfig(chunk_size=15))
    b = build_view_store(cfg, locs, tmp_path / "procs",
                       dask_cfg=DaskConfig(chunk_size=15, scheduler="processes", num_workers=2))
    for k in ("hex", "radius", "distance", "valid"):
        np.testing.assert_array_equal(b.read(k), a.read(k))
    assert not list((tmp_path / "procs").glob(".prepared*"))


def test_process_policy():
    """The OSM view holds the GIL: large local builds go to worker processes (a raster view's never do
    unless asked)."""
    from geoembed.views.raster import RasterView

    osm = OsmView(OsmViewConfig(name="o", source="x.osm.pbf"))
    big = driver.PROCESS_MIN_ROWS

    def use(*args):
        return driver.use_processes(osm, *args)

    assert use(None, 2, big) and use("threads", 2, big) and use("processes", 1, 10)
    assert not use(None, 2, big - 1) and not use(None, 1, big) and not use("synchronous", 2, big)
    assert not use("tcp://127.0.0.1:8786", 2, big)
    raster = RasterView(RasterViewConfig(name="r", sources=["x.tif"]))
    assert not driver.use_processes(raster, None, 2, big) and driver.use_processes(raster, "processes", 2, 10)


def test_prepared_round_trip(tmp_path, synth):
    cat = load_catalogue()
    lon, lat = _random_locations(25)
    crs = metric_crs(lon, lat)
    prep = prepare_osm(synth, cat, crs, radii_m=[200.0])
    x, y = _project(lon, lat, crs)
    path = driver.save_prepared(prep, tmp_path / "p.pkl")
    again = driver.load_prepared(path)
    assert driver.load_prepared(path) is again  # read once per process
    want, got = compute_osm_chunk(prep, x, y, lon, lat), compute_osm_chunk(again, x, y, lon, lat)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_helsinki_end_to_end(tmp_path, helsinki_pbf):
    rng = np.random.default_rng(0)
    n = 120
    lon = np.r_[rng.uniform(24.938, 24.950, n - 1), 25.3]  # central, plus one far outside
    lat = np.r_[rng.uniform(60.166, 60.176, n - 1), 60.3]
    locs = make_locations(np.arange(n), lon, lat)
    cfg = OsmViewConfig(name="osm", source=str(helsinki_pbf), radii_m=[250.0], max_distance_m=2000.0)
    store = build_view_store(cfg, locs, tmp_path / "osm", dask_cfg=DaskConfig(chunk_size=50))
    names = store.attrs["radius_features"]
    rad = pd.DataFrame(store.read("radius"), columns=names)
    valid = store.read("valid")
    assert valid[:-1].all() and not valid[-1]
    inside = rad.iloc[:-1]
    for col in ("buildings_count_r250", "buildings_area_m2_r250", "roads_local_length_m_r250",
                "shops_count_r250", "food_and_drink_count_r250"):
        assert (inside[col] > 0).mean() > 0.9, col
    assert (inside["buildings_share_r250"] < 1).all()
    assert np.isnan(rad.iloc[-1]).all()
    hx = store.read("hex")
    assert hx.shape == (n, 6, 7, 7) and np.nansum(hx[:-1]) > 0
    assert store.attrs["h3_resolution"] == 9 and store.attrs["categories"][0] == "health"
    dist = store.read("distance")
    d_bld = dist[:-1, store.attrs["categories"].index("buildings")]
    assert np.median(d_bld) < 30 and (d_bld == 0).any() and d_bld.max() < 2000
    assert (dist[:-1, store.attrs["categories"].index("roads_major")] == 2000).all()  # none in the kit
    assert store.stats["radius"]["count"][0] == n - 1


def test_osm_region_without_features_is_an_error(tmp_path, helsinki_pbf):
    """Locations far from every feature of the extract: a clear error, as for a raster, and no store."""
    rng = np.random.default_rng(0)
    locs = make_locations(np.arange(20), rng.uniform(25.30, 25.31, 20), rng.uniform(60.30, 60.31, 20))
    cfg = OsmViewConfig(name="osm", source=str(helsinki_pbf), radii_m=[250.0], max_distance_m=2000.0)
    with pytest.raises(InputError, match=r"holds no features where the locations are: .*lon 24\.9"):
        build_view_store(cfg, locs, tmp_path / "osm", dask_cfg=DaskConfig(chunk_size=50))
    from geoembed.io.viewstore import ViewStore

    if (tmp_path / "osm" / "meta.json").exists():  # the driver may have laid out the store: never complete
        assert not ViewStore.open(tmp_path / "osm", require_complete=False).complete


def test_osm_view_config_validation():
    from geoembed.config import parse_config

    with pytest.raises(ConfigError, match=r"views\.0\.osm.*radii_m"):
        parse_config({"views": [{"kind": "osm", "name": "o", "source": "x.osm.pbf", "radii_m": [0]}]})
    with pytest.raises(ConfigError, match=r"views\.0\.osm\.catalog: unknown key"):
        parse_config({"views": [{"kind": "osm", "name": "o", "source": "x.osm.pbf", "catalog": "c.yaml"}]})


def test_helsinki_config_parses():
    from geoembed.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "helsinki_osm.yaml")
    (view,) = cfg.views
    assert view.kind == "osm" and Path(view.source).is_file()
    assert cfg.locations.region.bbox == (24.935, 60.164, 24.953, 60.179)

