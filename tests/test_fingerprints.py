"""Source fingerprints: remembered across processes for large files, VRTs cover their member files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from geoembed.errors import InputError
from geoembed.io import fingerprint
from geoembed.io.rasters import raster_fingerprint
from geoembed.testing.rasters import from_origin, write_geotiff

UTM = "EPSG:32633"


@pytest.fixture
def small_threshold(monkeypatch):
    monkeypatch.setattr(fingerprint, "MIN_BYTES", 1)
    monkeypatch.setattr(fingerprint, "_FINGERPRINTS", {})


def _count_hashes(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = fingerprint.file_fingerprint

    def counting(path, *a, **k):
        calls.append(str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(fingerprint, "file_fingerprint", counting)
    return calls


def test_large_files_are_hashed_once_across_processes(tmp_path, small_threshold, monkeypatch):
    f = tmp_path / "big.bin"
    f.write_bytes(b"a" * 1000)
    calls = _count_hashes(monkeypatch)
    first = fingerprint.source_fingerprint(f)
    assert first == fingerprint.file_fingerprint(f) and len(calls) == 2  # the call above and the check
    calls.clear()
    monkeypatch.setattr(fingerprint, "_FINGERPRINTS", {})  # as a new process
    assert fingerprint.source_fingerprint(f) == first and calls == []  # from the on-disk cache
    assert fingerprint.cache_file().is_file()
    # rewritten (new size and time): hashed again, new value
    f.write_bytes(b"b" * 1001)
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    monkeypatch.setattr(fingerprint, "_FINGERPRINTS", {})
    second = fingerprint.source_fingerprint(f)
    assert second != first and len(calls) == 1


def test_an_unwritable_or_disabled_cache_only_costs_a_rehash(tmp_path, small_threshold, monkeypatch):
    f = tmp_path / "x.bin"
    f.write_bytes(b"xyz" * 100)
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("GEOEMBED_CACHE_DIR", str(blocker))
    want = fingerprint.file_fingerprint(f)
    assert fingerprint.source_fingerprint(f) == want
    monkeypatch.setenv("GEOEMBED_CACHE_DIR", "")
    assert fingerprint.cache_file() is None
    monkeypatch.setattr(fingerprint, "_FINGERPRINTS", {})
    assert fingerprint.source_fingerprint(f) == want


def test_a_corrupt_cache_file_is_ignored(tmp_path, small_threshold, monkeypatch):
    f = tmp_path / "y.bin"
    f.write_bytes(b"y" * 50)
    fingerprint.cache_file().parent.mkdir(parents=True, exist_ok=True)
    fingerprint.cache_file().write_text("{not json")
    assert fingerprint.source_fingerprint(f) == fingerprint.file_fingerprint(f)


def test_small_files_stay_out_of_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(fingerprint, "_FINGERPRINTS", {})
    f = tmp_path / "small.bin"
    f.write_bytes(b"s" * 10)
    fingerprint.source_fingerprint(f)
    path = fingerprint.cache_file()
    assert not path.exists() or str(f.resolve()) not in path.read_text()


def _vrt_over(tmp_path, member) -> Path:
    """A 20 x 20 VRT in UTM 33N whose one band is ``member``'s."""
    vrt = tmp_path / "m.vrt"
    vrt.write_text(
        '<VRTDataset rasterXSize="20" rasterYSize="20"><SRS>EPSG:32633</SRS>'
        "<GeoTransform>400000, 10, 0, 6000000, 0, -10</GeoTransform>"
        '<VRTRasterBand dataType="Float32" band="1"><SimpleSource>'
        f'<SourceFilename relativeToVRT="1">{member.name}</SourceFilename><SourceBand>1</SourceBand>'
        "</SimpleSource></VRTRasterBand></VRTDataset>"
    )
    return vrt


def test_vrt_fingerprint_changes_with_a_member_file(tmp_path):
    grid = from_origin(400_000, 6_000_000, 10, 10)
    a = write_geotiff(tmp_path / "a.tif", np.full((1, 20, 20), 1, np.float32), crs=UTM, transform=grid)
    vrt = _vrt_over(tmp_path, a)
    before = raster_fingerprint(vrt)
    assert raster_fingerprint(a) == fingerprint.file_fingerprint(a)  # a lone GeoTIFF: its file's sha256
    assert before != fingerprint.file_fingerprint(vrt)  # the VRT's covers its member too
    write_geotiff(a, np.full((1, 20, 20), 2, np.float32), crs=UTM, transform=grid)  # same size, new values
    st = a.stat()
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert raster_fingerprint(vrt) != before


def test_locations_follow_the_files_behind_a_vrt_region(tmp_path):
    """region: raster given as a VRT: a changed member tile makes the locations stale (their valid area
    may have moved), while a lone GeoTIFF keeps the fingerprint it always had."""
    from geoembed.build import build_locations
    from geoembed.config import parse_config

    grid = from_origin(400_000, 6_000_000, 10, 10)
    a = write_geotiff(tmp_path / "a.tif", np.full((1, 20, 20), 1, np.float32), crs=UTM, transform=grid)
    vrt = _vrt_over(tmp_path, a)
    cfg = parse_config({"workdir": str(tmp_path / "run"),
                        "locations": {"region": {"raster": str(vrt)}, "n": 30, "block_size_m": 50}})
    _, meta = build_locations(cfg)
    _, again = build_locations(cfg)  # up to date
    assert again["build_fingerprint"] == meta["build_fingerprint"]
    write_geotiff(a, np.full((1, 20, 20), 2, np.float32), crs=UTM, transform=grid)  # same size, new values
    st = a.stat()
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(InputError, match="--overwrite"):
        build_locations(cfg)
    _, rebuilt = build_locations(cfg, overwrite=True)
    assert rebuilt["build_fingerprint"] != meta["build_fingerprint"]
