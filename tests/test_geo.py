"""Longitude extents and continuity across the antimeridian."""

from __future__ import annotations

import numpy as np
import pytest

from geoembed.geo import continuous_lon, lon_extent, unwrap_lon, wrap_lon


def test_ordinary_extents_are_min_max_bit_for_bit():
    lon = np.array([-34.95, -34.87, -34.81, np.nan])
    c, w = lon_extent(lon)
    assert c == (-34.95 + -34.81) / 2 and w == -34.81 - -34.95
    assert np.array_equal(continuous_lon(lon), lon, equal_nan=True)
    assert wrap_lon(-34.87) == -34.87  # no rounding through the modulo


def test_extent_across_the_antimeridian():
    lon = np.array([178.0, 179.5, -179.0, -176.0])
    c, w = lon_extent(lon)
    assert w == pytest.approx(6.0) and c == pytest.approx(-179.0)  # the arc 178 -> 184 (= -176), centre 181
    u = continuous_lon(lon)
    assert np.ptp(u) == pytest.approx(6.0) and np.allclose(wrap_lon(u), lon)
    assert np.allclose(unwrap_lon(np.array([-179.0]), 179.0), [181.0])


def test_spatial_blocks_across_the_antimeridian_are_local():
    from geoembed.geo import grid_blocks as spatial_blocks

    # 2 km blocks: points 1 km apart on either side of 180 (at the equator) share or neighbour a block
    lon = np.array([179.9955, -179.9955, 179.99, -179.99])
    lat = np.zeros(4)
    b = spatial_blocks(lon, lat, 2000.0)
    ix = (b >> 21) - (1 << 20)
    assert np.abs(np.diff(np.sort(ix))).max() <= 1


def test_training_footprint_and_support_across_the_antimeridian():
    from geoembed.geo import SupportIndex, haversine_km
    from geoembed.geo import training_footprint as _footprint

    rng = np.random.default_rng(0)
    lon = wrap_lon(rng.uniform(178.0, 182.0, 500))  # Fiji-like: both sides of 180
    lat = rng.uniform(-18.0, -16.0, 500)
    fp = _footprint(lon, lat)
    assert fp.geom_type == "MultiPolygon" and fp.area < 4.0 * 2.0 + 1e-9  # not a band around the globe
    s = SupportIndex(fp)
    assert s.contains(np.r_[179.5, -179.5], np.r_[-17.0, -17.0]).all()
    assert not s.contains(np.r_[0.0, 170.0], np.r_[-17.0, -17.0]).any()
    # one degree east of the eastern edge (about -178): about 106 km at 17 S
    east = lon[lon < 0].max()
    d = s.distance_km(np.r_[east + 1.0], np.r_[-17.0])[0]
    assert d == pytest.approx(haversine_km(east, -17.0, east + 1.0, -17.0), rel=0.05)


def test_bundle_distance_to_a_footprint_across_the_antimeridian(tmp_path):
    """Bundle.distance_to_footprint_km agrees with the support index for a footprint split at 180
    (it once projected the split footprint around its centroid near 0 and reported ~5,750 km)."""
    from geoembed.geo import SupportIndex, haversine_km, training_footprint
    from geoembed.io.bundle import build_coordinate_encoder, load_bundle, save_bundle

    rng = np.random.default_rng(0)
    lon = wrap_lon(rng.uniform(178.0, 182.0, 500))
    lat = rng.uniform(-18.0, -16.0, 500)
    fp = training_footprint(lon, lat)
    spec = {"encodings": [{"type": "spherical_harmonics", "degrees": 4}], "network": {"type": "mlp", "hidden": [8]},
            "embedding_dim": 4}
    enc = build_coordinate_encoder(spec)
    save_bundle(tmp_path / "b", enc, enc.spec, footprint=fp, out_of_support_km=5.0, config={}, metrics={},
                data_fingerprint="test")
    b = load_bundle(tmp_path / "b")
    west = lon[lon > 0].min()
    q_lon, q_lat = np.r_[west - 1.0, 179.9], np.r_[-17.0, -17.0]
    d = b.distance_to_footprint_km(q_lon, q_lat)
    np.testing.assert_allclose(d, SupportIndex(fp).distance_km(q_lon, q_lat), rtol=1e-9)
    assert d[0] == pytest.approx(haversine_km(west - 1.0, -17.0, west, -17.0), rel=0.05)  # ~106 km
    assert d[1] == 0.0


def test_destination_is_at_the_distance_and_bearing_also_across_the_antimeridian():
    from geoembed.geo import destination, haversine_km

    lon = np.array([-34.87, 179.99, 10.0, 0.0])
    lat = np.array([-7.99, 0.0, 60.0, 0.0])
    bearing = np.array([0.0, 90.0, 225.0, 180.0])
    dist = np.array([1.0, 5.0, 300.0, 111.195])
    lon2, lat2 = destination(lon, lat, bearing, dist)
    np.testing.assert_allclose(haversine_km(lon, lat, lon2, lat2), dist, rtol=1e-9)
    assert lat2[0] > lat[0] and abs(lon2[0] - lon[0]) < 1e-9           # north
    assert -180.0 <= lon2[1] < -179.9 and abs(lat2[1]) < 1e-9             # east across 180
    assert lon2[2] < lon[2] and lat2[2] < lat[2]                         # south-west
    np.testing.assert_allclose([lon2[3], lat2[3]], [0.0, -1.0], atol=1e-4)  # 1 degree south


def test_uniform_in_area_stays_inside_and_is_deterministic():
    import shapely

    from geoembed.geo import uniform_in_area

    box = shapely.box(170.0, -10.0, 190.0, 10.0)  # across the antimeridian, split as footprints are
    from geoembed.geo import split_at_antimeridian

    geom = split_at_antimeridian(box)
    a = uniform_in_area(geom, 500, np.random.default_rng(3))
    b = uniform_in_area(geom, 500, np.random.default_rng(3))
    np.testing.assert_array_equal(a[0], b[0])
    assert len(a[0]) == 500 and ((a[0] >= 170.0) | (a[0] <= -170.0)).all() and (np.abs(a[1]) <= 10).all()
    assert (a[0] < 0).mean() > 0.3 and (a[0] > 0).mean() > 0.3  # both sides of 180
