"""Raster view: chip geometry, sampling, nodata, stacking, the store build, resume and bad inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyproj
import pytest
import rasterio

from geoembed.config.build import DaskConfig, RasterViewConfig
from geoembed.errors import ConfigError, InputError
from geoembed.geo import hilbert_order as spatial_order
from geoembed.io.locations import make_locations
from geoembed.io.tilecache import tile_cache
from geoembed.io.viewstore import ViewStore
from geoembed.testing.rasters import from_origin, random_bytes_file, rowcol_raster, write_geotiff
from geoembed.views import driver
from geoembed.views import raster as rv
from geoembed.views.driver import build_view_store
from geoembed.views.raster import (
    RasterSource,
    chip_offsets,
    chip_pixel_coords,
    extract_chips,
    source_pixel_frame,
)

# A UTM 33N grid whose column 100 lies on the central meridian (easting 500 000): there the local
# azimuthal-equidistant chip grid matches the raster grid to a few thousandths of a pixel.
UTM = "EPSG:32633"
RES = 30.0
X0, Y0 = 500_000.0 - 100 * RES, 5_500_000.0
GRID = from_origin(X0, Y0, RES, RES)
TO_LL = pyproj.Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)


def corner_lonlat(rows, cols):
    """lon/lat of the top-left corner of pixels (rows, cols) of GRID."""
    x = X0 + np.asarray(cols, dtype=float) * RES
    y = Y0 - np.asarray(rows, dtype=float) * RES
    return TO_LL.transform(x, y)


@pytest.fixture(scope="module")
def rowcol(tmp_path_factory):
    d = tmp_path_factory.mktemp("rowcol")
    return rowcol_raster(d / "rowcol.tif", 200, 200, crs=UTM, transform=GRID, dtype="float32")


# ----------------------------------------------------------------------------- geometry
@pytest.mark.parametrize(
    "crs, transform, lon, lat",
    [
        ("EPSG:32633", from_origin(300_000, 6_000_000, 30, 30), 17.9, 52.0),
        ("EPSG:32632", from_origin(600_000, 6_000_000, 30, 30), 16.5, 52.0),  # another zone
        ("EPSG:4326", from_origin(10, 71, 0.0003, 0.0003), 10.3, 70.7),
    ],
)
@pytest.mark.parametrize("chip_size", [16, 256])
def test_quadratic_frame_matches_exact_transform(crs, transform, lon, lat, chip_size):
    """The local quadratic model vs per-pixel pyproj transforms through the chip's AEQD plane."""
    res = 30.0
    half = (chip_size - 1) / 2 * res
    col, row, coef, ok = source_pixel_frame(pyproj.CRS(crs).to_wkt(), transform, np.array([lon]),
                                            np.array([lat]), half)
    assert ok.all()
    c, r = chip_pixel_coords(col, row, coef, chip_size, res)
    aeqd = pyproj.CRS.from_proj4(f"+proj=aeqd +lat_0={lat} +lon_0={lon} +datum=WGS84 +units=m")
    dx, dy = chip_offsets(chip_size, res)
    ex, ey = np.meshgrid(dx, dy)
    x, y = pyproj.Transformer.from_crs(aeqd, crs, always_xy=True).transform(ex.ravel(), ey.ravel())
    inv = ~transform
    ce = (inv.a * np.asarray(x) + inv.b * np.asarray(y) + inv.c).reshape(chip_size, chip_size)
    re = (inv.d * np.asarray(x) + inv.e * np.asarray(y) + inv.f).reshape(chip_size, chip_size)
    assert np.abs(c[0] - ce).max() < 2e-3  # source pixels
    assert np.abs(r[0] - re).max() < 2e-3


def test_spatial_order_is_a_local_permutation():
    rng = np.random.default_rng(1)
    lon, lat = rng.uniform(0, 1, 5000), rng.uniform(0, 1, 5000)
    order = spatial_order(lon, lat)
    assert np.array_equal(np.sort(order), np.arange(5000))
    step = np.hypot(np.diff(lon[order]), np.diff(lat[order])).mean()
    assert step < 0.1 * np.hypot(np.diff(lon), np.diff(lat)).mean()


# ----------------------------------------------------------------------------- exact content
@pytest.mark.parametrize("chip_size", [16, 7])
def test_nearest_reproduces_exact_rowcol_windows(rowcol, chip_size):
    rng = np.random.default_rng(0)
    R0 = rng.integers(30, 170, 40)
    C0 = rng.integers(80, 120, 40)  # within 600 m of the central meridian
    if chip_size % 2:  # odd chips are centred on a pixel centre
        lon, lat = corner_lonlat(R0 + 0.5, C0 + 0.5)
    else:  # even chips on a pixel corner
        lon, lat = corner_lonlat(R0, C0)
    chips, vf = extract_chips([RasterSource(str(rowcol))], lon, lat, chip_size=chip_size,
                              resolution_m=RES, resampling="nearest")
    assert chips.shape == (40, 2, chip_size, chip_size) and chips.dtype == np.float32
    assert (vf == 1).all()
    k = np.arange(chip_size) - chip_size // 2
    exp_rows = (R0[:, None, None] + k[None, :, None]) + 0 * k[None, None, :]
    exp_cols = (C0[:, None, None] + k[None, None, :]) + 0 * k[None, :, None]
    np.testing.assert_array_equal(chips[:, 0], exp_rows)
    np.testing.assert_array_equal(chips[:, 1], exp_cols)


@pytest.mark.parametrize("resolution", [RES, 2.5 * RES, 4 * RES])
def test_bilinear_is_exact_on_a_linear_field(rowcol, resolution):
    """Bilinear interpolation of row/col values gives the sample's continuous coordinate (also
    through the decimated, averaged read used when chip pixels span several source pixels)."""
    lon, lat = corner_lonlat(np.array([100.3, 90.0]), np.array([100.0, 97.7]))
    chips, vf = extract_chips([RasterSource(str(rowcol))], lon, lat, chip_size=8, resolution_m=resolution,
                              resampling="bilinear")
    assert (vf == 1).all()
    k = (np.arange(8) - 3.5) * resolution / RES
    # continuous pixel coordinate of the sample minus 0.5 (pixel value = index at its centre)
    exp_rows = np.array([100.3, 90.0])[:, None, None] + k[None, :, None] - 0.5
    exp_cols = np.array([100.0, 97.7])[:, None, None] + k[None, None, :] - 0.5
    np.testing.assert_allclose(chips[:, 0], np.broadcast_to(exp_rows, (2, 8, 8)), atol=0.02)
    np.testing.assert_allclose(chips[:, 1], np.broadcast_to(exp_cols, (2, 8, 8)), atol=0.02)


@pytest.mark.parametrize("src_crs", ["EPSG:4326", "EPSG:32632"])
def test_reprojected_chips_match_gdal_warp(tmp_path, src_crs):
    """Chips from a raster in another CRS vs rasterio.warp.reproject onto the chip's own AEQD grid."""
    from rasterio.warp import Resampling, reproject

    lon0, lat0 = 13.4, 52.5
    if src_crs == "EPSG:4326":
        transform = from_origin(13.25, 52.6, 0.0004, 0.00025)
    else:  # UTM 32N, one zone west of the location
        x, y = pyproj.Transformer.from_crs("EPSG:4326", src_crs, always_xy=True).transform(lon0, lat0)
        transform = from_origin(x - 8000, y + 8000, 25, 25)
    rows, cols = np.indices((600, 600), dtype=np.float64)
    data = (100 + 50 * np.sin(rows / 23.0) * np.cos(cols / 17.0) + 0.1 * cols).astype(np.float32)
    path = write_geotiff(tmp_path / "src.tif", data, crs=src_crs, transform=transform)
    S, res = 32, 20.0
    lons = np.array([lon0, lon0 + 0.05, lon0 - 0.04])
    lats = np.array([lat0, lat0 - 0.03, lat0 + 0.02])
    chips, vf = extract_chips([RasterSource(str(path))], lons, lats, chip_size=S, resolution_m=res,
                              resampling="bilinear")
    assert (vf == 1).all()
    for k in range(len(lons)):
        dst_crs = f"+proj=aeqd +lat_0={lats[k]} +lon_0={lons[k]} +datum=WGS84 +units=m"
        dst = np.full((S, S), np.nan, dtype=np.float32)
        reproject(data, dst, src_transform=transform, src_crs=src_crs, dst_crs=dst_crs,
                  dst_transform=from_origin(-S / 2 * res, S / 2 * res, res, res),
                  resampling=Resampling.bilinear, dst_nodata=np.nan, ERROR_THRESHOLD=0)
        diff = np.abs(chips[k, 0] - dst)
        # stated tolerance: 0.5 % of the value range (GDAL's bilinear kernel vs ours, float32)
        assert np.nanmax(diff) < 0.005 * (data.max() - data.min())
        assert np.isfinite(dst).all()


# ----------------------------------------------------------------------------- nodata and types
def _hole_raster(tmp_path, dtype, nodata_value, declare):
    data = np.full((2, 200, 200), 7, dtype=dtype)
    data[1] = 9
    data[:, 100:110, 100:104] = nodata_value  # a 10 x 4 hole
    return write_geotiff(tmp_path / f"hole_{dtype}_{declare}.tif", data, crs=UTM, transform=GRID,
                         nodata=nodata_value if declare else None)


@pytest.mark.parametrize("dtype, nd", [("uint8", 0), ("int16", -9999), ("float32", -1.0e30)])
def test_declared_nodata_is_nan_and_counts(tmp_path, dtype, nd):
    path = _hole_raster(tmp_path, dtype, nd, declare=True)
    lon, lat = corner_lonlat([100, 50], [100, 50])  # chip over the hole's corner; chip far from it
    chips, vf = extract_chips([RasterSource(str(path))], lon, lat, chip_size=16, resolution_m=RES,
                              resampling="nearest")
    # chip rows 92..107, cols 92..107: the hole covers rows 100..107 x cols 100..103 = 8 x 4 pixels
    hole = np.isnan(chips[0, 0])
    assert hole.sum() == 32 and hole[8:, 8:12].all()
    np.testing.assert_array_equal(np.isnan(chips[0, 1]), hole)
    assert vf[0] == pytest.approx(1 - 32 / 256) and vf[1] == 1
    assert set(np.unique(chips[0, 0][~hole])) == {7.0}
    # bilinear has exactly the same NaN pattern and never bleeds nodata into valid pixels
    chips_b, vf_b = extract_chips([RasterSource(str(path))], lon, lat, chip_size=16, resolution_m=RES)
    np.testing.assert_array_equal(np.isnan(chips_b), np.isnan(chips))
    np.testing.assert_allclose(chips_b[0, 0][~hole], 7.0, rtol=1e-5)


def test_nodata_override_and_no_nodata(tmp_path):
    path = _hole_raster(tmp_path, "int16", -9999, declare=False)
    lon, lat = corner_lonlat([100], [100])
    raw, vf_raw = extract_chips([RasterSource(str(path))], lon, lat, chip_size=16, resolution_m=RES,
                                resampling="nearest")
    assert vf_raw[0] == 1 and (raw[0, 0] == -9999).sum() == 32  # no nodata: values kept as they are
    over, vf_over = extract_chips([RasterSource(str(path), nodata=-9999)], lon, lat, chip_size=16,
                                  resolution_m=RES, resampling="nearest")
    assert np.isnan(over[0, 0]).sum() == 32 and vf_over[0] == pytest.approx(1 - 32 / 256)
    # override a declared nodata with another value: the declared one becomes data
    declared = _hole_raster(tmp_path, "uint8", 0, declare=True)
    chips, _ = extract_chips([RasterSource(str(declared), nodata=7)], lon, lat, chip_size=16,
                             resolution_m=RES, resampling="nearest")
    assert np.isnan(chips[0, 0]).sum() == 256 - 32 and (chips[0, 0] == 0).sum() == 32
    assert (chips[0, 1] == 9).sum() == 256 - 32


def test_nan_values_in_float_raster_are_no_data(tmp_path):
    data = np.ones((1, 100, 100), dtype=np.float32)
    data[0, 50, 50] = np.nan
    path = write_geotiff(tmp_path / "nan.tif", data, crs=UTM, transform=GRID)
    lon, lat = corner_lonlat([50], [50])
    chips, vf = extract_chips([RasterSource(str(path))], lon, lat, chip_size=4, resolution_m=RES)
    assert np.isnan(chips).sum() == 1 and vf[0] == pytest.approx(15 / 16)


def test_multi_band_multi_source_stacking(tmp_path, rowcol):
    # second source: a different CRS (UTM 34N) and dtype, one band, constant 5
    lon_c, lat_c = corner_lonlat(100, 100)
    ex, ny = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32634", always_xy=True).transform(lon_c, lat_c)
    other_tf = from_origin(ex - 7500, ny + 7500, 50, 50)
    other = write_geotiff(tmp_path / "other.tif", np.full((1, 300, 300), 5, dtype=np.int16),
                          crs="EPSG:32634", transform=other_tf)
    third = rowcol_raster(tmp_path / "three.tif", 200, 200, crs=UTM, transform=GRID, dtype="uint8",
                          extra_bands=1)
    lon, lat = corner_lonlat([60, 120], [95, 105])
    srcs = [RasterSource(str(rowcol), bands=(2,)), RasterSource(str(other)), RasterSource(str(third))]
    chips, vf = extract_chips(srcs, lon, lat, chip_size=8, resolution_m=RES, resampling="nearest")
    assert chips.shape == (2, 1 + 1 + 3, 8, 8)
    ref, _ = extract_chips([RasterSource(str(rowcol))], lon, lat, chip_size=8, resolution_m=RES,
                           resampling="nearest")
    np.testing.assert_array_equal(chips[:, 0], ref[:, 1])  # band 2 = column
    assert (chips[:, 1] == 5).all()
    np.testing.assert_array_equal(chips[:, 2], ref[:, 0])
    np.testing.assert_array_equal(chips[:, 3], ref[:, 1])
    np.testing.assert_array_equal(chips[:, 4], ref[:, 0] + ref[:, 1])
    assert (vf == 1).all()


@pytest.fixture(scope="module")
def rowcol_striped(tmp_path_factory):
    """The rowcol raster without internal tiles (strips): sampled by windows, not by blocks."""
    d = tmp_path_factory.mktemp("rowcol_striped")
    rows, cols = np.indices((200, 200), dtype=np.float32)
    return write_geotiff(d / "rowcol_striped.tif", np.stack([rows, cols]), crs=UTM, transform=GRID, tiled=False)


def _spy_reads(monkeypatch):
    boxes = []
    real = rv.reading.read_window

    def spy(ds, path, bands, nodata, use_mask, box, factor, **kw):
        boxes.append(box)
        return real(ds, path, bands, nodata, use_mask, box, factor, **kw)

    monkeypatch.setattr(rv.reading, "read_window", spy)  # block reads
    monkeypatch.setattr(rv.sampling, "read_window", spy)  # window reads
    tile_cache().clear()
    return boxes


@pytest.mark.parametrize("layout", ["tiled", "striped"])
def test_partial_and_out_of_footprint_chips(rowcol, rowcol_striped, monkeypatch, layout):
    path = rowcol if layout == "tiled" else rowcol_striped
    boxes = _spy_reads(monkeypatch)
    lon, lat = corner_lonlat([100, 0, 100], [0, 0, 100])
    lon = np.append(lon, [120.0, 15.0])  # far outside (other side of the world), then the South Pole side
    lat = np.append(lat, [-40.0, -60.0])
    chips, vf = extract_chips([RasterSource(str(path))], lon, lat, chip_size=16, resolution_m=RES,
                              resampling="nearest")
    assert vf[0] == pytest.approx(0.5)  # half the chip left of the raster
    assert np.isnan(chips[0, :, :, :8]).all() and np.isfinite(chips[0, :, :, 8:]).all()
    assert vf[1] == pytest.approx(0.25)  # a corner
    assert vf[2] == 1
    assert vf[3] == 0 and vf[4] == 0 and np.isnan(chips[3:]).all()
    assert len(boxes) == 1
    x0, y0, x1, y1 = boxes[0]
    if layout == "tiled":  # the one 192 x 192 block that the three chips touch, decoded once
        assert boxes[0] == (0, 0, 192, 192)
        assert tile_cache().decodes == 1
    else:  # one small window covering only the chips that touch the raster
        assert (x1 - x0) * (y1 - y0) <= 120 * 120


@pytest.mark.parametrize("tiled", [True, False])
def test_sparse_locations_read_small_windows(tmp_path, monkeypatch, tiled):
    big = write_geotiff(tmp_path / "big.tif", np.ones((1, 2500, 2500), dtype=np.uint8), crs=UTM,
                        transform=GRID, tiled=tiled, blocksize=256)
    boxes = _spy_reads(monkeypatch)
    monkeypatch.setattr(rv.reading, "_MIN_WINDOW_PX", 1000)  # (default 1 Mpx: small windows are always fine)
    lon, lat = corner_lonlat([20, 2480, 20, 2480], [100, 100, 2400, 2400])
    chips, vf = extract_chips([RasterSource(str(big))], lon, lat, chip_size=16, resolution_m=RES)
    assert (vf == 1).all() and (chips == 1).all()
    assert len(boxes) == 4
    if tiled:  # the four corner blocks only, out of 100
        assert sorted(boxes) == [(0, 0, 256, 256), (0, 2304, 256, 2500), (2304, 0, 2500, 256),
                                 (2304, 2304, 2500, 2500)]
    else:
        assert max((b[2] - b[0]) * (b[3] - b[1]) for b in boxes) <= 20 * 20


# ----------------------------------------------------------------------------- the view store
def _locs(lon, lat):
    return make_locations(np.arange(len(lon)) * 10 + 3, lon, lat)


def _grid_locations(n, seed=0, lo=20, hi=180):
    rng = np.random.default_rng(seed)
    lon, lat = corner_lonlat(rng.uniform(lo, hi, n), rng.uniform(lo, hi, n))
    order = spatial_order(lon, lat)
    return _locs(np.asarray(lon)[order], np.asarray(lat)[order])


def test_build_writes_a_complete_store(tmp_path, rowcol):
    locs = _grid_locations(300)
    lon = np.append(locs["lon"].to_numpy(), 100.0)
    lat = np.append(locs["lat"].to_numpy(), 0.0)  # one location outside the raster
    locs = _locs(lon, lat)
    cfg = RasterViewConfig(name="rc", sources=[str(rowcol)], chip_size=8, resolution_m=RES,
                           resampling="nearest", min_valid_fraction=0.5)
    store = build_view_store(cfg, locs, tmp_path / "rc", dask_cfg=DaskConfig(chunk_size=64))
    assert store.complete and store.n_chunks == 5
    again = ViewStore.open(tmp_path / "rc")
    np.testing.assert_array_equal(again.read("location_id"), locs["location_id"].to_numpy())
    chips = again.read("chips")
    ref, vf = extract_chips([RasterSource(str(rowcol))], lon, lat, chip_size=8, resolution_m=RES,
                            resampling="nearest")
    np.testing.assert_array_equal(chips, ref)
    idx = again.read_index()
    np.testing.assert_array_equal(idx["valid_fraction"].to_numpy(), vf)
    assert idx["valid"].sum() == 300 and not idx["valid"].iloc[-1]
    a = again.attrs
    assert a["sources"] == [str(rowcol)] and a["crs"][0]["epsg"] == 32633
    assert a["fingerprints"][0].startswith("sha256:") and a["bands"] == [[1, 2]]
    assert a["chip_size"] == 8 and a["resampling"] == "nearest" and a["channels"] == 2
    # normalisation stats: per channel over valid rows
    valid = idx["valid"].to_numpy()
    assert again.stats["chips"]["mean"] == pytest.approx(np.nanmean(ref[valid], axis=(0, 2, 3)), rel=1e-6)
    assert again.stats["chips"]["std"] == pytest.approx(np.nanstd(ref[valid], axis=(0, 2, 3)), rel=1e-4)
    # different settings on the same folder: an error unless overwrite
    cfg2 = cfg.model_copy(update={"chip_size": 4})
    with pytest.raises(InputError, match="different inputs"):
        build_view_store(cfg2, locs, tmp_path / "rc", dask_cfg=DaskConfig(chunk_size=64))
    s2 = build_view_store(cfg2, locs, tmp_path / "rc", dask_cfg=DaskConfig(chunk_size=64), overwrite=True)
    assert s2.read("chips").shape == (301, 2, 4, 4)


def test_float16_store(tmp_path, rowcol):
    locs = _grid_locations(50)
    cfg = RasterViewConfig(name="h", sources=[str(rowcol)], chip_size=4, dtype="float16")
    store = build_view_store(cfg, locs, tmp_path / "h", dask_cfg=DaskConfig(chunk_size=20))
    chips = store.read("chips")
    assert chips.dtype == np.float16 and np.isfinite(chips).all()


def test_resume_recomputes_only_missing_chunks(tmp_path, rowcol, monkeypatch):
    locs = _grid_locations(400, seed=3)
    cfg = RasterViewConfig(name="r", sources=[str(rowcol)], chip_size=8, resolution_m=RES)
    dcfg = DaskConfig(chunk_size=50)
    clean = build_view_store(cfg, locs, tmp_path / "clean", dask_cfg=dcfg)
    store = build_view_store(cfg, locs, tmp_path / "r", dask_cfg=dcfg)
    calls = []
    real = driver._chunk_task
    monkeypatch.setattr(driver, "_chunk_task", lambda view, store, i, *a: calls.append(i) or real(view, store, i, *a))
    # a run "killed" after writing rows but before the markers: delete markers, corrupt the rows
    import zarr

    g = zarr.open_group(str(store.path / "store.zarr"), mode="r+")
    for i in (1, 5):
        (store.path / "_chunks" / f"{i}.json").unlink()
        a, b = store.chunk_bounds(i)
        g["chips"][a:b] = 0.0
        g["valid"][a:b] = False
    meta = json.loads((store.path / "meta.json").read_text())
    (store.path / "meta.json").write_text(json.dumps({**meta, "complete": False}))
    with pytest.raises(InputError, match="incomplete"):
        ViewStore.open(store.path)
    resumed = build_view_store(cfg, locs, tmp_path / "r", dask_cfg=dcfg)
    assert sorted(calls) == [1, 5]
    np.testing.assert_array_equal(resumed.read("chips"), clean.read("chips"))
    np.testing.assert_array_equal(resumed.read("valid"), clean.read("valid"))
    assert resumed.stats == clean.stats
    calls.clear()
    build_view_store(cfg, locs, tmp_path / "r", dask_cfg=dcfg)
    assert calls == []


KILL_SCRIPT = """
import sys, numpy as np, pyproj
from geoembed.config.build import DaskConfig, RasterViewConfig
from geoembed.geo import hilbert_order as spatial_order
from geoembed.io.locations import make_locations
from geoembed.io.tilecache import tile_cache
from geoembed.geo import hilbert_order as spatial_order
from geoembed.views.driver import build_view_store
src, out = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(7)
x = 500000 - 2000 * 30 + rng.uniform(100, 1900, 12000) * 30
y = 5500000 - rng.uniform(100, 1900, 12000) * 30
lon, lat = pyproj.Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True).transform(x, y)
o = spatial_order(lon, lat)
locs = make_locations(np.arange(12000), np.asarray(lon)[o], np.asarray(lat)[o])
cfg = RasterViewConfig(name="k", sources=[src], chip_size=16, resolution_m=20.0)
build_view_store(cfg, locs, out, dask_cfg=DaskConfig(chunk_size=200, scheduler="synchronous"))
"""


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted(tmp_path):
    from geoembed.testing.rasters import large_uint8_raster

    src = large_uint8_raster(tmp_path / "k.tif", size=2000, bands=3, crs=UTM,
                             origin=(500_000.0 - 2000 * 30, 5_500_000.0), res=30.0)
    script = tmp_path / "build.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "GEOEMBED_NO_PROGRESS": "1"}
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(src), str(out)], env=env)
    n_chunks = 60
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            markers = list((out / "_chunks").glob("*.json")) if (out / "_chunks").exists() else []
            if len(markers) >= 10:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the build finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    killed = ViewStore.open(out, require_complete=False)
    assert not killed.complete
    left = killed.pending_chunks()
    assert 0 < len(left) < n_chunks
    subprocess.run([sys.executable, str(script), str(src), str(out)], env=env, check=True)
    clean = tmp_path / "clean"
    old_argv = sys.argv
    try:  # the uninterrupted build, in this process
        sys.argv = ["build", str(src), str(clean)]
        exec(compile(KILL_SCRIPT, "build", "exec"), {})
    finally:
        sys.argv = old_argv
    a, b = ViewStore.open(out), ViewStore.open(clean)
    assert a.n_chunks == n_chunks
    np.testing.assert_array_equal(a.read("chips"), b.read("chips"))
    np.testing.assert_array_equal(a.read("valid_fraction"), b.read("valid_fraction"))
    assert a.stats == b.stats


# ----------------------------------------------------------------------------- real kit
def test_olinda_landsat_and_dem(tmp_path, olinda_dir):
    import geopandas as gpd

    tracts = gpd.read_file(olinda_dir / "olinda1.shp").to_crs("EPSG:4326")
    pts = tracts.sample_points(1, rng=0).explode(index_parts=False)  # one random point per tract
    pts = pts[:300]
    lon, lat = pts.x.to_numpy(), pts.y.to_numpy()
    o = spatial_order(lon, lat)
    locs = _locs(lon[o], lat[o])
    landsat, dem = olinda_dir / "L7_ETMs.tif", olinda_dir / "olinda_dem_utm25s.tif"
    cfg = RasterViewConfig(name="olinda", sources=[str(landsat), str(dem)], chip_size=8, resolution_m=30.0,
                           min_valid_fraction=1.0)
    store = build_view_store(cfg, locs, tmp_path / "olinda", dask_cfg=DaskConfig(chunk_size=64))
    chips = store.read("chips")
    assert chips.shape == (300, 7, 8, 8)
    idx = store.read_index()
    assert idx["valid"].all() and np.isfinite(chips).all()
    assert chips[:, :6].min() >= 0 and chips[:, :6].max() <= 255
    assert chips[:, :6].mean() > 10  # real imagery, not zeros
    assert -20 < chips[:, 6].min() and chips[:, 6].max() < 200  # elevation in metres
    assert chips[:, 6].std() > 1
    a = store.attrs
    assert a["crs"][0]["epsg"] == 31985 and "GRS" in a["crs"][1]["wkt"]
    assert len(a["band_names"]) == 7 and a["source_dtypes"] == ["uint8", "float32"]
    assert len(store.stats["chips"]["mean"]) == 7


# ----------------------------------------------------------------------------- bad inputs
def test_bad_inputs_name_the_file(tmp_path, rowcol):
    locs = _grid_locations(10)
    dcfg = DaskConfig(chunk_size=5)
    corrupt = random_bytes_file(tmp_path / "corrupt.tif")
    nocrs = write_geotiff(tmp_path / "nocrs.tif", np.ones((1, 20, 20), dtype=np.uint8), crs=None,
                          transform=GRID)
    cases = [(tmp_path / "missing.tif", "does not exist"), (corrupt, "cannot read"), (nocrs, "no CRS")]
    for path, msg in cases:
        out = tmp_path / f"out_{path.stem}"
        cfg = RasterViewConfig(name="bad", sources=[str(rowcol), str(path)])
        with pytest.raises(InputError, match=msg) as err:
            build_view_store(cfg, locs, out, dask_cfg=dcfg)
        assert str(path) in str(err.value)
        assert not (out / "meta.json").exists()
        with pytest.raises(InputError):
            ViewStore.open(out)
    cfg = RasterViewConfig(name="bad", sources=[str(rowcol)], bands=[[1, 3]])
    with pytest.raises(ConfigError, match=r"bands\[0\].*1\.\.2"):
        build_view_store(cfg, locs, tmp_path / "out_bands", dask_cfg=dcfg)


def test_rasterio_sees_written_nodata(tmp_path):
    """The synthetic maker really declares nodata (guards the nodata tests above)."""
    path = _hole_raster(tmp_path, "uint8", 0, declare=True)
    with rasterio.open(path) as ds:
        assert ds.nodata == 0 and ds.crs.to_epsg() == 32633
    assert Path(path).exists()


def test_dataset_mask_without_nodata_is_no_data(tmp_path):
    """An internal mask band (e.g. a COG's mask) marks no data when no nodata value is declared."""
    path = tmp_path / "masked.tif"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(
        path, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint8", crs=UTM, transform=GRID,
        tiled=True, blockxsize=16, blockysize=16,
    ) as dst:
        dst.write(np.full((1, 64, 64), 3, dtype=np.uint8))
        mask = np.full((64, 64), 255, dtype=np.uint8)
        mask[:32, :] = 0  # top half masked out
        dst.write_mask(mask)
    lon, lat = corner_lonlat([32], [32])
    chips, vf = extract_chips([RasterSource(str(path))], lon, lat, chip_size=8, resolution_m=RES,
                              resampling="nearest")
    assert vf[0] == pytest.approx(0.5)
    assert np.isnan(chips[0, 0, :4]).all() and (chips[0, 0, 4:] == 3).all()


def test_alpha_band_masks_the_others_and_is_not_a_channel(tmp_path):
    """An RGBA-style source: by default the alpha band is left out of the chips and masks the others;
    listing it explicitly still gives it as a channel."""
    path = tmp_path / "gray_alpha.tif"
    data = np.stack([np.full((64, 64), 5, np.uint8), np.full((64, 64), 255, np.uint8)])
    data[1, :32, :] = 0  # top half transparent
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=2, dtype="uint8", crs=UTM,
                       transform=GRID, photometric="minisblack") as dst:
        dst.write(data)
    with rasterio.open(path, "r+") as dst:
        dst.colorinterp = [rasterio.enums.ColorInterp.gray, rasterio.enums.ColorInterp.alpha]
    lon, lat = corner_lonlat([32], [32])
    chips, vf = extract_chips([RasterSource(str(path))], lon, lat, chip_size=8, resolution_m=RES,
                              resampling="nearest")
    assert chips.shape == (1, 1, 8, 8) and vf[0] == pytest.approx(0.5)
    assert np.isnan(chips[0, 0, :4]).all() and (chips[0, 0, 4:] == 5).all()
    cfg = RasterViewConfig(name="ga", sources=[str(path)], chip_size=8, resolution_m=RES)
    sources, infos = rv.resolve_sources(cfg)
    assert sources[0].bands == (1,) and infos[0]["bands"] == [1]
    both, _ = extract_chips([RasterSource(str(path), bands=(1, 2))], lon, lat, chip_size=8, resolution_m=RES,
                            resampling="nearest")
    assert both.shape == (1, 2, 8, 8) and (both[0, 1, 4:] == 255).all()


def test_vrt_source(tmp_path, rowcol):
    """A VRT over a GeoTIFF (band 2 only) gives the same chips as the GeoTIFF's band 2."""
    with rasterio.open(rowcol) as ds:
        h, w, gt = ds.height, ds.width, ds.transform.to_gdal()
        wkt = ds.crs.to_wkt()
    vrt = tmp_path / "rc.vrt"
    vrt.write_text(
        f'<VRTDataset rasterXSize="{w}" rasterYSize="{h}"><SRS>{wkt.replace("&", "&amp;").replace(chr(34), "&quot;")}</SRS>'
        f"<GeoTransform>{', '.join(map(repr, gt))}</GeoTransform>"
        '<VRTRasterBand dataType="Float32" band="1"><SimpleSource>'
        f'<SourceFilename relativeToVRT="0">{rowcol}</SourceFilename><SourceBand>2</SourceBand>'
        "</SimpleSource></VRTRasterBand></VRTDataset>"
    )
    lon, lat = corner_lonlat([50, 120], [90, 110])
    a, _ = extract_chips([RasterSource(str(vrt))], lon, lat, chip_size=8, resolution_m=RES)
    b, _ = extract_chips([RasterSource(str(rowcol), bands=(2,))], lon, lat, chip_size=8, resolution_m=RES)
    np.testing.assert_array_equal(a, b)
