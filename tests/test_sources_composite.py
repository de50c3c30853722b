"""Compositing per-item chips: median and first, masks, no data, exactly on small arrays; the STAC
and Overpass config blocks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from pydantic import ValidationError

from geoembed.config import read_yaml
from geoembed.sources.composite import composite
from geoembed.sources.config import OverpassConfig, StacConfig, parse_interval
from geoembed.sources.extent import bbox_parts, chip_bounds, chips_extent, extent_around

nan = np.nan


def stack(*items):
    """(K, N=1, C, H=1, W=len) from per-item lists of per-channel pixel rows."""
    return np.array(items, dtype=np.float32)[:, None, :, None, :]


def test_median_over_items_odd_even_and_missing():
    x = stack([[1, 5, nan, 7, nan]], [[3, 1, 2, nan, nan]], [[2, 9, 4, nan, nan]], [[10, nan, nan, nan, nan]])
    out = composite(x, method="median")[0, 0, 0]
    # pixel 0: median of 1,3,2,10 = 2.5; 1: of 5,1,9 = 5; 2: of 2,4 = 3; 3: 7 alone; 4: none
    np.testing.assert_array_equal(out, np.array([2.5, 5, 3, 7, nan], dtype=np.float32))


def test_first_takes_the_first_valid_item_in_order():
    x = stack([[nan, 5, nan]], [[3, 1, nan]], [[2, 9, nan]])
    np.testing.assert_array_equal(composite(x, method="first")[0, 0, 0], np.array([3, 5, nan], np.float32))


def test_an_observation_needs_every_band():
    # item 0 has band 1 missing at pixel 0: its band 0 value there is not used either
    x = stack([[1, 1], [nan, 1]], [[7, 2], [8, 2]])
    np.testing.assert_array_equal(composite(x, method="first")[0, :, 0], np.array([[7, 1], [8, 1]], np.float32))
    np.testing.assert_array_equal(composite(x, method="median")[0, :, 0],
                                  np.array([[7, 1.5], [8, 1.5]], np.float32))


def test_mask_keeps_listed_classes_only():
    x = stack([[10, 10, 10, 10]], [[20, 20, 20, 20]], [[30, 30, 30, 30]])
    classes = np.array([[4, 9, 4, nan], [5, 5, 3, nan], [4, 4, 9, 4]], dtype=np.float32)[:, None, None, :]
    first = composite(x, classes, keep=[4, 5], method="first")[0, 0, 0]
    np.testing.assert_array_equal(first, np.array([10, 20, 10, 30], np.float32))
    med = composite(x, classes[:, :, None], keep=[4, 5], method="median")[0, 0, 0]  # (K, N, 1, H, W) works too
    np.testing.assert_array_equal(med, np.array([20, 25, 10, 30], np.float32))
    none_kept = composite(x, classes, keep=[11], method="median")
    assert np.isnan(none_kept).all()


def test_shapes_many_locations_and_errors():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3, 2, 4, 4)).astype(np.float32)
    x[rng.random(x.shape) < 0.3] = nan
    med = composite(x, method="median")
    valid = np.isfinite(x).all(2, keepdims=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels
        ref = np.nanmedian(np.where(valid, x, nan), axis=0)
    np.testing.assert_allclose(med, ref, rtol=1e-6)
    assert med.shape == (3, 2, 4, 4) and med.dtype == np.float32
    first = composite(x, method="first")
    k = np.argmax(valid[:, :, 0], axis=0)
    exp = np.take_along_axis(x, k[None, :, None], 0)[0]
    exp[np.broadcast_to(~valid.any(0), exp.shape)] = nan
    np.testing.assert_array_equal(first, exp)
    assert np.isnan(composite(np.zeros((0, 2, 1, 3, 3), np.float32))).all()
    with pytest.raises(ValueError, match="method"):
        composite(x, method="mean")
    with pytest.raises(ValueError, match="keep"):
        composite(x, np.zeros((5, 3, 4, 4)))


# ----------------------------------------------------------------------------- extents
def test_chip_bounds_and_extent_across_the_antimeridian():
    b = chip_bounds(np.array([179.999, -179.999]), np.array([-17.0, -17.0]), 16, 30.0)
    half_deg = 9 * 30.0 / 111_000
    assert b[0, 2] > 180.0 and b[1, 0] < -180.0  # continuous around each location
    np.testing.assert_allclose(b[:, 3] - b[:, 1], 2 * half_deg, rtol=0.01)
    w, s, e, n = chips_extent(b)
    assert w > e and 179.9 < w < 180.0 and -180.0 < e < -179.9  # crosses
    assert bbox_parts((w, s, e, n)) == [(-180.0, s, e, n), (w, s, 180.0, n)]
    assert chips_extent(chip_bounds(np.array([24.9, 25.0]), np.array([60.1, 60.2]), 8, 10.0))[0] < 24.9
    w, s, e, n = extent_around(np.array([24.94, 24.95]), np.array([60.17, 60.175]), 1000.0)
    np.testing.assert_allclose([n - 60.175, 60.17 - s], 1000.0 / 111_400, rtol=0.01)  # metres north/south
    np.testing.assert_allclose([24.94 - w, e - 24.95], 1000.0 / (111_320 * np.cos(np.radians(60.17))), rtol=0.01)


# ----------------------------------------------------------------------------- config
def stac(**kw):
    return StacConfig.model_validate({"catalog": "https://host/stac/v1", "assets": ["red"], **kw})


ISSUE_EXAMPLE = """
catalog: https://host/stac/v1          # a STAC API (pystac-client) or a path/URL to a static catalog.json (pystac)
collections: [sentinel-2-l2a]
assets: [red, green, blue, nir]          # become the chip's bands, in this order
datetime: 2023-06-01/2023-08-31
query: {"eo:cloud_cover": {"lt": 20}}
mask: {asset: scl, keep: [4, 5, 6, 7, 11]}   # per-pixel classification; other classes become no data
composite: median                       # or `first` (least cloudy first)
"""


def test_the_issue_example_parses():
    cfg = StacConfig.model_validate(read_yaml(ISSUE_EXAMPLE))
    assert cfg.datetime == "2023-06-01/2023-08-31" and cfg.assets == ["red", "green", "blue", "nir"]
    assert cfg.query == {"eo:cloud_cover": {"lt": 20}} and cfg.mask.keep == [4, 5, 6, 7, 11]


def test_datetime_forms_from_yaml():
    data = read_yaml("catalog: x\nassets: [red]\ndatetime: 2023-06-01\n")
    assert StacConfig.model_validate(data).datetime == "2023-06-01"  # YAML reads a date: accepted
    data = read_yaml("catalog: x\nassets: [red]\ndatetime: 2023-06-01/2023-08-31\n")
    assert StacConfig.model_validate(data).datetime == "2023-06-01/2023-08-31"
    data = read_yaml("catalog: x\nassets: [red]\ndatetime: [2023-06-01, 2023-08-31]\n")
    assert StacConfig.model_validate(data).datetime == "2023-06-01/2023-08-31"
    data = read_yaml("catalog: x\nassets: [red]\ndatetime: 2023-06-01T10:00:00+02:00\n")
    assert StacConfig.model_validate(data).datetime == "2023-06-01T08:00:00Z"
    assert stac(datetime="../2023-08-31").datetime == "../2023-08-31"
    assert stac(datetime=["2023-06", None]).datetime == "2023-06/.."
    start, end = parse_interval("2023-06/2023-08-31")
    assert (start.isoformat(), end.isoformat()) == ("2023-06-01T00:00:00", "2023-08-31T23:59:59.999999")
    assert parse_interval("2024")[1].isoformat() == "2024-12-31T23:59:59.999999"


@pytest.mark.parametrize("bad, match", [
    ("2023-13-01", "not a date"), ("2023-08-31/2023-06-01", "start is after the end"), ("../..", "at least one"),
    ("..", "cannot be open"), (["2023-06-01"], r"\[start, end\]"), ("a/b/c", "start/end"), (20230601, "not a date"),
])
def test_bad_datetimes(bad, match):
    with pytest.raises(ValidationError, match=match):
        stac(datetime=bad)


def test_stac_config_checks():
    cfg = stac(query={"eo:cloud_cover": {"lt": 20}, "platform": {"in": ["sentinel-2a", "sentinel-2b"]}},
               mask={"asset": "scl", "keep": [4, 5]}, sign="planetary_computer:sign")
    assert cfg.composite == "median" and cfg.mask.keep == [4, 5]
    for bad, match in [({"query": {"eo:cloud_cover": {"less": 20}}}, "unknown operator"),
                       ({"query": {"x": {"in": 3}}}, "'in' takes a list"),
                       ({"query": {"x": {}}}, "no operator"),
                       ({"sign": "just_a_name"}, "module:function"),
                       ({"assets": ["red", "red"]}, "assets repeat"),
                       ({"assets": []}, "at least 1"),
                       ({"composite": "mean"}, "median"),
                       ({"mask": {"asset": "scl", "keep": ["4"]}}, "valid integer"),
                       ({"max_items": True}, "valid integer"),
                       ({"collection": ["s2"]}, "Extra inputs")]:
        with pytest.raises(ValidationError, match=match):
            stac(**bad)


def test_overpass_config():
    cfg = OverpassConfig.model_validate({"url": "http://localhost:1234/api/interpreter", "timeout_s": 60})
    assert cfg.tile_deg == 0.1 and cfg.retries == 4
    with pytest.raises(ValidationError, match="http"):
        OverpassConfig.model_validate({"url": "ftp://x"})
    with pytest.raises(ValidationError, match="valid integer"):
        OverpassConfig.model_validate({"timeout_s": "60"})
