"""Longitude extents and continuity across the antimeridian."""

from __future__ import annotations

import numpy as np
import pytest

from geoembed.lonlat import continuous_lon, lon_extent, unwrap_lon, wrap_lon


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
    from geoembed.locations import spatial_blocks

    # 2 km blocks: points 1 km apart on either side of 180 (at the equator) share or neighbour a block
    lon = np.array([179.9955, -179.9955, 179.99, -179.99])
    lat = np.zeros(4)
    b = spatial_blocks(lon, lat, 2000.0)
    ix = (b >> 21) - (1 << 20)
    assert np.abs(np.diff(np.sort(ix))).max() <= 1


def test_training_footprint_and_support_across_the_antimeridian():
    from geoembed.enrich.support import SupportIndex, haversine_km
    from geoembed.train import _footprint

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
