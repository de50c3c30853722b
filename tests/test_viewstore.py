"""The view store: chunk writes, markers, stats, resume and reading."""

from __future__ import annotations

import numpy as np
import pytest

from geoembed.errors import InputError
from geoembed.io.viewstore import ArraySpec, ViewStore, channel_moments


def _store(path, n=10, chunk=4, fp="a"):
    return ViewStore.create_or_resume(path, location_ids=np.arange(100, 100 + n), chunk_rows=chunk,
                                      arrays={"x": ArraySpec((2, 3), "float32")}, kind="test",
                                      attrs={"k": 1}, build_fingerprint=fp)


def test_channel_moments_exact_with_nan_and_invalid_rows():
    a = np.arange(24, dtype=np.float32).reshape(3, 2, 4)
    a[0, 0, 0] = np.nan
    m = channel_moments(a, np.array([True, False, True]))
    ch0 = np.array([1, 2, 3, 16, 17, 18, 19], float)
    ch1 = np.array([4, 5, 6, 7, 20, 21, 22, 23], float)
    assert m["count"] == [7, 8]
    np.testing.assert_allclose(m["sum"], [ch0.sum(), ch1.sum()])
    np.testing.assert_allclose(m["sumsq"], [(ch0**2).sum(), (ch1**2).sum()])


def test_write_finalize_read_and_stats(tmp_path):
    s = _store(tmp_path / "v")
    assert s.pending_chunks() == [0, 1, 2]
    rng = np.random.default_rng(0)
    data = rng.normal(5, 2, (10, 2, 3)).astype(np.float32)
    valid = np.ones(10, bool)
    valid[3] = False
    for i in s.pending_chunks():
        a, b = s.chunk_bounds(i)
        s.write_chunk(i, {"x": data[a:b]}, valid.astype(float)[a:b], valid[a:b])
    with pytest.raises(InputError, match="incomplete"):
        ViewStore.open(tmp_path / "v")
    s.finalize()
    r = ViewStore.open(tmp_path / "v")
    np.testing.assert_array_equal(r.read("x"), data)
    np.testing.assert_array_equal(r.read("x", np.array([9, 0])), data[[9, 0]])
    np.testing.assert_array_equal(r.read("location_id"), np.arange(100, 110))
    kept = data[valid]
    np.testing.assert_allclose(r.stats["x"]["mean"], kept.mean(axis=(0, 2)), rtol=1e-5)
    np.testing.assert_allclose(r.stats["x"]["std"], kept.std(axis=(0, 2)), rtol=1e-4)
    idx = r.read_index()
    assert idx["valid"].tolist() == valid.tolist() and r.meta["n_valid"] == 9


def test_resume_and_fingerprint_mismatch(tmp_path):
    s = _store(tmp_path / "v")
    s.write_chunk(1, {"x": np.zeros((4, 2, 3))}, np.ones(4), np.ones(4, bool))
    again = _store(tmp_path / "v")
    assert again.pending_chunks() == [0, 2]
    with pytest.raises(InputError, match="--overwrite"):
        _store(tmp_path / "v", fp="b")
    fresh = ViewStore.create_or_resume(tmp_path / "v", location_ids=np.arange(10), chunk_rows=4,
                                       arrays={"x": ArraySpec((2, 3), "float32")}, kind="test", attrs={},
                                       build_fingerprint="b", overwrite=True)
    assert fresh.pending_chunks() == [0, 1, 2]


def test_bad_chunk_shapes_are_rejected(tmp_path):
    s = _store(tmp_path / "v")
    with pytest.raises(ValueError, match="shape"):
        s.write_chunk(0, {"x": np.zeros((4, 3, 3))}, np.ones(4), np.ones(4, bool))
    with pytest.raises(ValueError, match="arrays"):
        s.write_chunk(0, {"y": np.zeros((4, 2, 3))}, np.ones(4), np.ones(4, bool))
    assert s.pending_chunks() == [0, 1, 2]


def test_open_non_store_is_clear(tmp_path):
    with pytest.raises(InputError, match="not a geoembed view store"):
        ViewStore.open(tmp_path)


def test_source_fingerprint_remote_cached_and_missing(tmp_path):
    from geoembed.io.fingerprint import file_fingerprint, source_fingerprint

    assert source_fingerprint("/vsicurl/https://example.org/a.tif") == "remote:/vsicurl/https://example.org/a.tif"
    p = tmp_path / "a.bin"
    p.write_bytes(b"abc")
    assert source_fingerprint(p) == file_fingerprint(p)
    p.write_bytes(b"abcd")  # new size: a new fingerprint, not the cached one
    assert source_fingerprint(p) == file_fingerprint(p)
    with pytest.raises(InputError, match="does not exist"):
        source_fingerprint(tmp_path / "missing.tif")


def test_a_chunk_without_valid_rows_is_written(tmp_path):
    """A spatially sorted chunk can lie wholly over no data (the sea): zero valid rows, zero stats."""
    store = ViewStore.create_or_resume(tmp_path / "v", location_ids=np.arange(8),
                                       arrays={"x": ArraySpec((2, 3, 3), "float32")}, chunk_rows=4, kind="raster",
                                       attrs={}, build_fingerprint="f")
    store.write_chunk(0, {"x": np.full((4, 2, 3, 3), np.nan, np.float32)}, np.zeros(4, np.float32),
                      np.zeros(4, bool))
    store.write_chunk(1, {"x": np.ones((4, 2, 3, 3), np.float32)}, np.ones(4, np.float32), np.ones(4, bool))
    store = store.finalize()
    assert store.meta["n_valid"] == 4
    assert store.meta["stats"]["x"]["count"] == [36, 36] and store.meta["stats"]["x"]["mean"] == [1.0, 1.0]
    assert np.isnan(store.read("x", np.arange(4))).all()
