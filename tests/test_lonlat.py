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
