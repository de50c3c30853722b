"""Block-by-block sampling of tiled rasters: same chips as window reads, each block decoded once,
a bounded cache, a replaced file never served stale; the shared cache itself; the geodesic series."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyproj
import pytest

from geoembed import geo
from geoembed.io import tilecache
from geoembed.io.tilecache import TileCache, tile_cache
from geoembed.testing.rasters import from_origin, write_geotiff
from geoembed.views import raster as rv
from geoembed.views.raster import RasterSource, aeqd_offset, extract_chips

UTM = "EPSG:32633"
RES = 30.0
X0, Y0 = 500_000.0 - 100 * RES, 5_500_000.0
GRID = from_origin(X0, Y0, RES, RES)
TO_LL = pyproj.Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)


def _lonlat(rows, cols):
    return TO_LL.transform(X0 + np.asarray(cols, float) * RES, Y0 - np.asarray(rows, float) * RES)


def _random_raster(path, dtype, nodata, size=300, bands=3, block=64, seed=0):
    rng = np.random.default_rng(seed)
    data = rng.integers(1, 200, (bands, size, size)).astype(dtype)
    if dtype == "float32":
        data[:, 40:60, 40:60] = np.nan  # a NaN hole
    if nodata is not None:
        data[1, 100:130, 150:190] = nodata  # a nodata patch in one band
    return write_geotiff(path, data, crs=UTM, transform=GRID, nodata=nodata, blocksize=block)


def _locations(n=300, seed=1, size=300):
    rng = np.random.default_rng(seed)
    return _lonlat(rng.uniform(-20, size + 20, n), rng.uniform(-20, size + 20, n))  # some off the edges


@pytest.mark.parametrize("dtype, nodata", [("uint8", None), ("int16", -9999), ("float32", None),
                                           ("uint16", 0)])
@pytest.mark.parametrize("resampling", ["nearest", "bilinear"])
@pytest.mark.parametrize("chip_size", [8, 40])  # 40-pixel chips span several 64-pixel blocks
def test_blocks_give_the_same_chips_as_windows(tmp_path, monkeypatch, dtype, nodata, resampling, chip_size):
    path = _random_raster(tmp_path / f"r_{dtype}.tif", dtype, nodata)
    lon, lat = _locations()
    src = [RasterSource(str(path))]
    tile_cache().clear()
    got, vf = extract_chips(src, lon, lat, chip_size=chip_size, resolution_m=RES, resampling=resampling)
    assert tile_cache().decodes > 0  # read block by block
    monkeypatch.setattr(rv.sampling, "block_shape", lambda *a: None)  # force window reads
    ref, vf_ref = extract_chips(src, lon, lat, chip_size=chip_size, resolution_m=RES, resampling=resampling)
    np.testing.assert_array_equal(got, ref)  # bit for bit (NaN where NaN)
    np.testing.assert_array_equal(vf, vf_ref)
    assert 0 < vf.min() < 1 or vf.min() == 0  # edges and holes are exercised
    assert (vf == 1).any()


def test_each_block_is_decoded_once_across_chunks_and_threads(tmp_path):
    path = _random_raster(tmp_path / "r.tif", "uint8", None, size=640, block=64)
    rng = np.random.default_rng(3)
    rows, cols = rng.uniform(10, 630, 4000), rng.uniform(10, 630, 4000)
    order = geo.hilbert_order(cols, rows)
    lon, lat = _lonlat(rows[order], cols[order])
    src = [RasterSource(str(path))]
    tile_cache().clear()
    single, _ = extract_chips(src, lon, lat, chip_size=16, resolution_m=RES)
    n_blocks = tile_cache().decodes
    assert n_blocks == 100  # 10 x 10 blocks, all touched
    tile_cache().clear()
    bounds = [(a, min(a + 256, len(lon))) for a in range(0, len(lon), 256)]
    with ThreadPoolExecutor(2) as pool:
        parts = list(pool.map(lambda ab: extract_chips(src, lon[ab[0]:ab[1]], lat[ab[0]:ab[1]], chip_size=16,
                                                       resolution_m=RES)[0], bounds))
    rv.close_cached_datasets()
    assert tile_cache().decodes == n_blocks and tile_cache().hits > 0
    np.testing.assert_array_equal(np.concatenate(parts), single)


def test_a_tiny_cache_evicts_and_gives_the_same_chips(tmp_path, monkeypatch):
    path = _random_raster(tmp_path / "r.tif", "int16", -9999)
    lon, lat = _locations(n=200)
    src = [RasterSource(str(path))]
    ref, _ = extract_chips(src, lon, lat, chip_size=16, resolution_m=RES)
    small = TileCache(max_bytes=1)  # arenas of 4 slots
    monkeypatch.setattr(tilecache, "_SHARED", small)
    got = np.concatenate([extract_chips(src, lon[a:a + 20], lat[a:a + 20], chip_size=16, resolution_m=RES)[0]
                          for a in range(0, 200, 20)])
    assert small.decodes > 25  # blocks were evicted and read again
    np.testing.assert_array_equal(got, ref)
    # blocks that find no room in the arena are read into a private buffer instead
    ref, _ = extract_chips(src, lon, lat, chip_size=40, resolution_m=RES)
    monkeypatch.setattr(tilecache.BlockArena, "acquire", lambda self, keys, load: None)
    small.clear()
    got, _ = extract_chips(src, lon, lat, chip_size=40, resolution_m=RES)
    assert small.decodes == 0
    np.testing.assert_array_equal(got, ref)


def test_a_replaced_file_is_never_served_from_the_cache(tmp_path):
    path = tmp_path / "r.tif"
    write_geotiff(path, np.full((1, 128, 128), 7, np.uint8), crs=UTM, transform=GRID, blocksize=64)
    lon, lat = _lonlat([64], [64])
    src = [RasterSource(str(path))]
    assert (extract_chips(src, lon, lat, chip_size=8, resolution_m=RES)[0] == 7).all()
    time.sleep(0.01)
    write_geotiff(path, np.full((1, 128, 128), 9, np.uint8), crs=UTM, transform=GRID, blocksize=64)
    assert (extract_chips(src, lon, lat, chip_size=8, resolution_m=RES)[0] == 9).all()


def _filler(arena, calls, gate=None):
    def load(key, slot):
        calls.append(key)
        if gate is not None:
            gate.wait(1.0)
        arena.data[slot] = hash(key) % 200
        return True
    return load


def test_arena_loads_a_key_once_under_contention_and_retries_after_a_failure():
    cache = TileCache(max_bytes=4 * 16)
    arena = cache.arena("src", np.uint8, 1, (4, 4), False)
    assert arena.capacity == 4
    calls, gate = [], threading.Event()
    with ThreadPoolExecutor(4) as pool:
        futs = [pool.submit(arena.acquire, ["k"], _filler(arena, calls, gate)) for _ in range(4)]
        time.sleep(0.05)
        gate.set()
        slots = [f.result() for f in futs]
    assert calls == ["k"] and all(s.tolist() == slots[0].tolist() for s in slots)
    assert cache.decodes == 1 and cache.hits == 3
    arena.release(slots[0].tolist() * 4)

    def boom(key, slot):
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        arena.acquire(["a", "bad"], lambda k, s: boom(k, s) if k == "bad" else True)
    got = arena.acquire(["bad", "a", "k"], _filler(arena, calls))  # nothing was left pinned or half-loaded
    assert got is not None and len(set(got.tolist())) == 3
    arena.release(got.tolist())


def test_arena_never_reuses_pinned_slots():
    cache = TileCache(max_bytes=4 * 16)
    arena = cache.arena("src", np.uint8, 1, (4, 4), False)
    calls = []
    held = arena.acquire(["a", "b", "c"], _filler(arena, calls))
    values = arena.data[held].copy()
    assert arena.acquire(["d", "e"], _filler(arena, calls)) is None  # only one slot is free
    assert calls == ["a", "b", "c"]
    one = arena.acquire(["d"], _filler(arena, calls))
    arena.release(one.tolist())
    for key in ("e", "f", "g"):  # churn through the one unpinned slot
        arena.release(arena.acquire([key], _filler(arena, calls)).tolist())
    np.testing.assert_array_equal(arena.data[held], values)  # the pinned blocks are untouched
    arena.release(held.tolist())
    again = arena.acquire(["a"], _filler(arena, calls))  # still cached
    assert calls.count("a") == 1
    arena.release(again.tolist())


def test_cache_budget_from_the_environment_is_checked(monkeypatch):
    from geoembed.errors import ConfigError

    monkeypatch.setattr(tilecache, "_SHARED", None)
    monkeypatch.setenv("GEOEMBED_TILE_CACHE_MB", "lots")
    with pytest.raises(ConfigError, match="GEOEMBED_TILE_CACHE_MB"):
        tile_cache()
    monkeypatch.setenv("GEOEMBED_TILE_CACHE_MB", "3")
    assert tile_cache().max_bytes == 3 * 2**20


@pytest.mark.parametrize("dist, tol_m", [(150.0, 1e-5), (1000.0, 5e-4), (2000.0 * 2**0.5, 7e-3)])
def test_geodesic_series_matches_pyproj(dist, tol_m):
    geod = pyproj.Geod(ellps="WGS84")
    rng = np.random.default_rng(0)
    lat = rng.uniform(-79.9, 79.9, 3000)
    lon = rng.uniform(-180, 180, 3000)
    for az in (0.0, 37.0, 90.0, 135.0, 200.0, 315.0):
        e, n = dist * np.sin(np.radians(az)), dist * np.cos(np.radians(az))
        lo, la = aeqd_offset(lon, lat, e, n)
        lo2, la2, _ = geod.fwd(lon, lat, np.full(3000, az), np.full(3000, dist))
        err = geod.inv(lo, la, lo2, la2)[2]
        assert err.max() < tol_m


@pytest.mark.parametrize("crs, transform, lon0, lat0", [
    ("EPSG:32633", from_origin(300_000, 6_700_000, 10, 10), 15.0, 60.0),
    ("EPSG:4326", from_origin(10, 71, 0.0003, 0.0003), 10.3, 70.7),
    ("EPSG:3857", from_origin(1e6, 8e6, 10, 10), 10.0, 45.0),
    ("EPSG:32760", from_origin(300_000, 1_000_000, 30, 30), 179.8, -79.0),  # antimeridian, far south
])
@pytest.mark.parametrize("chip_size, res", [(16, 10.0), (256, 30.0)])
def test_interpolated_frame_matches_the_exact_frame(crs, transform, lon0, lat0, chip_size, res):
    rng = np.random.default_rng(0)
    lon = lon0 + rng.uniform(0, 0.35, 2000)
    lon = (lon + 180) % 360 - 180
    lat = lat0 + rng.uniform(0, 0.25, 2000)
    wkt = pyproj.CRS(crs).to_wkt()
    step = (chip_size - 1) / 2 * res
    got = rv.source_pixel_frame(wkt, transform, lon, lat, step)
    exact = rv.geometry._exact_frame(wkt, transform, lon, lat, step)
    np.testing.assert_array_equal(got[0], exact[0])  # centres are exact
    np.testing.assert_array_equal(got[3], exact[3])
    for e, n in ((step, step), (-step, step), (step, -step), (-step, -step)):  # the chip corners
        terms = np.array([e, n, e * e, e * n, n * n])
        assert np.abs((got[2] - exact[2]) @ terms).max() < 2e-4
    # a location's frame does not depend on the other locations of the call
    part = rv.source_pixel_frame(wkt, transform, lon[7:9], lat[7:9], step)
    np.testing.assert_array_equal(part[2], got[2][7:9])


def test_chunks_of_large_chips_are_capped_in_bytes():
    assert rv.raster_chunk_rows(4096, 3, 16) == 4096  # 3 KB per row: the configured size
    assert rv.raster_chunk_rows(4096, 3, 256) == 85  # 768 KB per row: 64 MB per chunk
    assert rv.raster_chunk_rows(4096, 64, 1024) == 16  # never fewer than 16 rows
    assert rv.raster_chunk_rows(10, 3, 256) == 10


@pytest.mark.parametrize("tiled", [True, False])
@pytest.mark.parametrize("resolution", [RES, 2.5 * RES, 1.9 * RES])  # native, decimated, factor by location
def test_a_chip_does_not_depend_on_the_other_locations(tmp_path, tiled, resolution):
    path = write_geotiff(tmp_path / "r.tif", np.random.default_rng(5).integers(1, 900, (2, 300, 300)).astype(
        "uint16"), crs=UTM, transform=GRID, tiled=tiled, blocksize=64)
    lon, lat = _locations(n=120, size=300)
    src = [RasterSource(str(path))]
    everything, vf = extract_chips(src, lon, lat, chip_size=12, resolution_m=resolution)
    for part in (slice(0, 1), slice(5, 9), slice(40, 120, 7)):
        alone, vf_alone = extract_chips(src, np.asarray(lon)[part], np.asarray(lat)[part], chip_size=12,
                                        resolution_m=resolution)
        np.testing.assert_array_equal(alone, everything[part])
        np.testing.assert_array_equal(vf_alone, vf[part])


@pytest.mark.parametrize("tiled", [True, False])
def test_float32_nodata_is_compared_as_the_band_stores_it(tmp_path, tiled):
    data = np.full((1, 64, 64), np.float32(-9999.9), dtype=np.float32)
    data[0, :, 32:] = 5.0
    data[0, 0, 40] = np.inf  # infinite values are no data too
    path = write_geotiff(tmp_path / "f.tif", data, crs=UTM, transform=GRID, tiled=tiled, blocksize=32)
    lon, lat = _lonlat([16, 16, 1], [16, 48, 40])
    chips, vf = extract_chips([RasterSource(str(path), nodata=-9999.9)], lon, lat, chip_size=4,
                              resolution_m=RES, resampling="nearest")
    assert vf[0] == 0 and np.isnan(chips[0]).all()  # -9999.9 as a float32: no data
    assert vf[1] == 1 and (chips[1] == 5).all()
    assert 0 < vf[2] < 1 and np.isnan(chips[2]).sum() == round((1 - vf[2]) * 16)  # the inf pixel is NaN
    assert not np.isinf(chips).any()


@pytest.mark.parametrize("tiled", [True, False])
def test_a_geographic_raster_at_the_antimeridian_serves_both_sides(tmp_path, tiled):
    px = 0.0003
    path = write_geotiff(tmp_path / "am.tif", np.full((1, 334, 334), 7, np.uint8), crs="EPSG:4326",
                         transform=from_origin(180.0 - 334 * px, 0.05, px, px), tiled=tiled, blocksize=64)
    chips, vf = extract_chips([RasterSource(str(path))], np.r_[179.995, -179.995, 0.0], np.r_[0.0, 0.0, 0.0],
                              chip_size=64, resolution_m=30.0)
    assert vf[0] == pytest.approx(0.797, abs=0.02)  # the west of the chip on the raster
    assert vf[1] == pytest.approx(0.203, abs=0.02)  # east of the antimeridian: the west of its chip too
    assert vf[2] == 0
    assert np.isfinite(chips[1, 0, :, :10]).all() and np.isnan(chips[1, 0, :, -10:]).all()
    np.testing.assert_allclose(chips[np.isfinite(chips)], 7, rtol=1e-6)  # renormalised edge weights: ulps


def test_complex_rasters_are_refused_with_the_file_named(tmp_path):
    from geoembed.errors import InputError

    path = write_geotiff(tmp_path / "slc.tif", (np.ones((1, 64, 64)) + 1j).astype(np.complex64), crs=UTM,
                         transform=GRID)
    lon, lat = _lonlat([32], [32])
    with pytest.raises(InputError, match=r"slc\.tif.*complex64 is not supported"):
        extract_chips([RasterSource(str(path))], lon, lat, chip_size=4, resolution_m=RES)


def test_a_geographic_raster_stored_past_180_serves_west_longitudes(tmp_path):
    # stored as lon 179.9..180.1: a location at -179.95 (= 180.05) is inside, with a full chip
    px = 0.0002
    path = write_geotiff(tmp_path / "past180.tif", np.full((1, 1000, 1000), 5, np.uint8), crs="EPSG:4326",
                         transform=from_origin(179.9, 0.1, px, px), tiled=True, blocksize=64)
    chips, vf = extract_chips([RasterSource(str(path))], np.r_[-179.95, 179.95, 170.0], np.r_[0.0, 0.0, 0.0],
                              chip_size=16, resolution_m=10.0)
    assert vf[0] == 1.0 and vf[1] == 1.0 and vf[2] == 0.0
    np.testing.assert_array_equal(chips[:2], 5.0)
