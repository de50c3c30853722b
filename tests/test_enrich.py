"""Streaming file enrichment: exactness against the encoder, untouched rows/columns, hygiene, metadata,
atomic failure, CSV / Parquet / GeoParquet."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely

from geoembed.enrich import enrich_file, read_enrich_metadata
from geoembed.enrich.enricher import load_bundle_cached
from geoembed.errors import GeoembedError, InputError
from geoembed.geo import SupportIndex, haversine_km
from geoembed.io.enriched import INVALID_COL, OOS_COL, SUPPORT_COL
from geoembed.testing.bundles import OLINDA_BOX as FOOTPRINT
from geoembed.testing.bundles import TINY_EMB as EMB


def inside_points(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(-34.91, -34.83, n), rng.uniform(-8.035, -7.955, n)


def odd_table(n: int, seed: int = 0) -> pa.Table:
    """Coordinates inside the footprint plus columns of awkward types, with nulls."""
    lon, lat = inside_points(n, seed)
    rng = np.random.default_rng(seed + 1)
    mask = rng.random(n) < 0.2
    return pa.table({
        "policy_id": pa.array([f"P{i:06d}" for i in range(n)]),
        "lon": lon,
        "lat": lat,
        "exposure": pa.array(rng.random(n), mask=mask),
        "claims": pa.array(rng.integers(0, 5, n), type=pa.int16()),
        "region": pa.array(np.where(rng.random(n) < 0.5, "north", "south")).dictionary_encode(),
        "start": pa.array([dt.date(2020, 1, 1) + dt.timedelta(days=int(d)) for d in rng.integers(0, 900, n)]),
        "flag": pa.array(rng.random(n) < 0.3, mask=~mask),
        "amount": pa.array([None if m else f"{v:.2f}" for m, v in zip(mask, rng.random(n) * 1e4, strict=True)],
                           type=pa.string()),
        "tags": pa.array([[int(i % 3)] * int(i % 3) for i in range(n)], type=pa.list_(pa.int32())),
    })


def emb_matrix(table: pa.Table, names=EMB) -> np.ndarray:
    return np.column_stack([table[c].to_numpy(zero_copy_only=False) for c in names])


# ------------------------------------------------------------------------------------------ exactness

def test_parquet_equals_direct_embed_and_keeps_everything(tmp_path, bundle):
    t = odd_table(1000)
    src = tmp_path / "in.parquet"
    pq.write_table(t, src, row_group_size=300)
    out = tmp_path / "out.parquet"
    s = enrich_file(bundle, src, out)
    res = pq.read_table(out)
    assert res.num_rows == t.num_rows == s.rows
    # Every input column, in order, value for value (row order unchanged).
    assert res.schema.names[: len(t.schema)] == t.schema.names
    assert res.select(t.schema.names).equals(t)
    direct = np.vstack([bundle.embed(c["lon"].to_numpy().copy(), c["lat"].to_numpy().copy())
                        for c in pq.ParquetFile(src).iter_batches(batch_size=300)])
    # Same batches as the encoder's direct call: bit for bit equal.
    np.testing.assert_array_equal(emb_matrix(res), direct)
    assert res[INVALID_COL].null_count == t.num_rows
    np.testing.assert_array_equal(res[SUPPORT_COL].to_numpy(), 0.0)
    assert not res[OOS_COL].to_numpy().any()
    assert s.invalid == 0 and s.out_of_support == 0


def test_chunk_size_and_threads_do_not_change_the_output(tmp_path, bundle):
    t = odd_table(500, seed=3)
    src = tmp_path / "in.parquet"
    pq.write_table(t, src)
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    enrich_file(bundle, src, a, chunk_rows=7, workers=1)
    enrich_file(bundle, src, b, chunk_rows=10_000, workers=3, embed_batch=50)
    ta, tb = pq.read_table(a), pq.read_table(b)
    # Encoder calls are padded to >= 64 rows, so chunking cannot change a row's rounding: bit-equal.
    assert ta.equals(tb)
    direct = bundle.embed(t["lon"].to_numpy().copy(), t["lat"].to_numpy().copy())
    np.testing.assert_array_equal(emb_matrix(ta), direct)


def test_metadata_records_bundle_and_columns(tmp_path, bundle, bundle_path):
    import geoembed

    src = tmp_path / "in.parquet"
    pq.write_table(odd_table(50), src)
    out = tmp_path / "out.parquet"
    enrich_file(bundle_path, src, out)
    meta = read_enrich_metadata(out)
    assert meta["bundle"]["fingerprint"] == bundle.fingerprint
    assert meta["bundle"]["path"] == str(bundle_path.resolve())
    assert meta["geoembed_version"] == geoembed.__version__
    assert meta["columns"]["embedding"] == EMB
    assert meta["input"]["lon_col"] == "lon" and meta["input"]["lat_col"] == "lat"
    assert meta["summary"] == {"rows": 50, "invalid": 0, "by_reason": {}, "out_of_support": 0,
                               "max_support_km": 0.0, "complete": True}
    # Also visible to any Parquet reader through the Arrow schema.
    assert json.loads(pq.read_schema(out).metadata[b"geoembed"])["bundle"]["fingerprint"] == bundle.fingerprint


def test_support_distance_and_flag(tmp_path, bundle):
    # inside, 1 km east of the east edge, 1 degree east, 3 km north of the north edge
    lon = np.array([-34.87, -34.826 + 1.0 / (111.32 * np.cos(np.radians(-8.0))), -33.826, -34.87])
    lat = np.array([-8.0, -8.0, -8.0, -7.950 + 3.0 / 111.2])
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"lon": lon, "lat": lat}), src)
    out = tmp_path / "out.parquet"
    s = enrich_file(bundle, src, out)
    res = pq.read_table(out)
    d = res[SUPPORT_COL].to_numpy()
    assert d[0] == 0.0
    np.testing.assert_allclose(d[1], 1.0, rtol=0.01)
    np.testing.assert_allclose(d[2], haversine_km(-33.826, -8.0, -34.826, -8.0), rtol=1e-3)
    np.testing.assert_allclose(d[3], 3.0, rtol=0.01)
    assert res[OOS_COL].to_pylist() == [False, False, True, True]  # threshold 2 km
    assert s.out_of_support == 2
    # embeddings are still given outside the support
    np.testing.assert_array_equal(emb_matrix(res), bundle.embed(lon, lat))


def test_support_index_matches_brute_force_haversine():
    idx = SupportIndex(FOOTPRINT)
    rng = np.random.default_rng(1)
    lon = rng.uniform(-35.5, -34.2, 300)
    lat = rng.uniform(-8.6, -7.4, 300)
    d = idx.distance_km(lon, lat)
    # brute force: minimum haversine distance to a dense sampling of the footprint boundary
    ring = shapely.segmentize(FOOTPRINT.exterior, 0.0005)
    bx, by = np.asarray(ring.xy)
    brute = haversine_km(lon[:, None], lat[:, None], bx[None, :], by[None, :]).min(axis=1)
    inside = shapely.contains_xy(FOOTPRINT, lon, lat)
    brute[inside] = 0.0
    np.testing.assert_allclose(d, brute, rtol=5e-3, atol=0.06)


# ------------------------------------------------------------------------------------------ formats

def test_csv_to_csv_keeps_text_and_writes_sidecar(tmp_path, bundle):
    lon, lat = inside_points(300, seed=5)
    df = pd.DataFrame({"zip": [f"{i:05d}" for i in range(300)], "lon": [f"{v:.6f}" for v in lon],
                       "lat": [f"{v:.6f}" for v in lat], "note": ["a,b", "", "NA"] * 100,
                       "amount": ["1.50", "2", "0003"] * 100})
    src = tmp_path / "in.csv"
    df.to_csv(src, index=False)
    out = tmp_path / "out.csv"
    enrich_file(bundle, src, out, chunk_rows=64)
    res = pd.read_csv(out, dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(res[df.columns.tolist()], df)  # leading zeros, "NA", "1.50" intact
    got = pd.read_csv(out)[EMB].to_numpy(np.float32)
    np.testing.assert_array_equal(got, bundle.embed(np.array(df["lon"], dtype=float),
                                                    np.array(df["lat"], dtype=float)))
    meta = read_enrich_metadata(out)
    assert meta["bundle"]["fingerprint"] == bundle.fingerprint
    assert meta["summary"]["rows"] == 300 and meta["output"]["bytes"] == out.stat().st_size


def test_csv_to_parquet_keeps_text_unless_types_are_inferred(tmp_path, bundle):
    lon, lat = inside_points(200, seed=6)
    n = 200
    df = pd.DataFrame({"id": np.arange(n), "lon": lon, "lat": lat, "x": np.linspace(0, 1, n),
                       "code": [f"{i:04d}" for i in range(n)], "note": ["NA", "", "n/a", "x"] * 50})
    src = tmp_path / "in.csv.gz"
    df.to_csv(src, index=False)
    # by default every column but the coordinates keeps its text: "0007" stays "0007", "NA" stays "NA"
    out = tmp_path / "text.parquet"
    enrich_file(bundle, src, out, chunk_rows=16)
    res = pq.read_table(out)
    assert res.schema.field("lon").type == pa.float64() and res.schema.field("id").type == pa.string()
    assert res["code"].to_pylist() == df["code"].tolist() and res["code"][7].as_py() == "0007"
    assert res["note"].to_pylist() == df["note"].tolist() and res["note"].null_count == 0
    np.testing.assert_array_equal(res["lon"].to_numpy(), df["lon"].to_numpy())
    np.testing.assert_array_equal(emb_matrix(res), bundle.embed(lon, lat))
    # asked for, types are inferred (as pandas would)
    out = tmp_path / "out.parquet"
    enrich_file(bundle, src, out, chunk_rows=16, infer_types=True)
    res = pq.read_table(out)
    assert res.schema.field("id").type == pa.int64() and res.schema.field("code").type == pa.int64()
    assert res.schema.field("lon").type == pa.float64()
    np.testing.assert_array_equal(res["lon"].to_numpy(), df["lon"].to_numpy())
    np.testing.assert_array_equal(emb_matrix(res), bundle.embed(lon, lat))
    # a column that only turns out to be text after the first block
    late = tmp_path / "late.csv"
    df2 = df.assign(code=[str(i) for i in range(n - 1)] + ["X9"])
    df2.to_csv(late, index=False)
    out2 = tmp_path / "late.parquet"
    enrich_file(bundle, late, out2, chunk_rows=16, infer_types=True)
    res2 = pq.read_table(out2)
    assert res2["code"].to_pylist() == df2["code"].tolist()
    assert res2.num_rows == n


def test_geoparquet_in_projected_crs(tmp_path, bundle):
    import geopandas as gpd

    lon, lat = inside_points(400, seed=7)
    g = gpd.GeoDataFrame({"policy": np.arange(400)}, geometry=gpd.points_from_xy(lon, lat), crs="EPSG:4326")
    g = g.to_crs("EPSG:31985")  # SIRGAS 2000 / UTM 25S, metres
    g.loc[3, "geometry"] = None  # a missing geometry
    src = tmp_path / "in.parquet"
    g.to_parquet(src)
    out = tmp_path / "out.parquet"
    s = enrich_file(bundle, src, out, on_invalid="null", chunk_rows=100)
    res = gpd.read_parquet(out)
    assert res.crs.equals(g.crs)
    assert res.geometry.equals(g.geometry)  # geometry column kept as it was
    emb = res[EMB].to_numpy(np.float32)
    ok = np.arange(400) != 3
    np.testing.assert_allclose(emb[ok], bundle.embed(lon[ok], lat[ok]), atol=1e-5)
    assert np.isnan(emb[3]).all() and res[INVALID_COL][3] == "missing"
    assert s.invalid == 1
    assert read_enrich_metadata(out)["input"]["geometry"] == "geometry"


def test_geoparquet_points_among_polygons_and_lines(tmp_path, bundle):
    """A geometry column with any polygon is a polygon table: polygons get the mean over points sampled in
    them, a point its own embedding (one point), a line is flagged (before polygons existed, the polygon
    was flagged not_point)."""
    import geopandas as gpd

    geoms = [shapely.Point(-34.87, -8.0), shapely.box(-34.9, -8.0, -34.85, -7.96), shapely.Point(-34.86, -7.99),
             shapely.LineString([(-34.9, -8.0), (-34.85, -7.96)])]
    src = tmp_path / "in.parquet"
    gpd.GeoDataFrame({"k": [1, 2, 3, 4]}, geometry=geoms, crs="EPSG:4326").to_parquet(src)
    out = tmp_path / "out.parquet"
    with pytest.raises(InputError, match=r"row 3: not_polygon \(LineString\)"):
        enrich_file(bundle, src, out)
    enrich_file(bundle, src, out, on_invalid="null", points_per_polygon=50)
    res = pq.read_table(out)
    assert res[INVALID_COL].to_pylist() == [None, None, None, "not_polygon"]
    assert res["geoembed_points"].to_pylist() == [1, 50, 1, None]
    emb = emb_matrix(res)
    np.testing.assert_array_equal(emb[[0, 2]], bundle.embed(np.array([-34.87, -34.86]), np.array([-8.0, -7.99])))
    assert np.isfinite(emb[1]).all() and np.isnan(emb[3]).all()


# ------------------------------------------------------------------------------------------ hygiene

BAD = [  # (lon, lat, reason)
    (np.nan, -8.0, "missing"),
    (-34.87, np.inf, "infinite"),
    (-34.87, -98.0, "out_of_range"),
    (-190.0, -8.0, "out_of_range"),
    (0.0, 0.0, "null_island"),
]


def _bad_table(n=40):
    lon, lat = inside_points(n, seed=11)
    lon, lat = lon.copy(), lat.copy()
    rows = [5, 9, 17, 23, 31]
    for r, (lo, la, _) in zip(rows, BAD, strict=True):
        lon[r], lat[r] = lo, la
    return pa.table({"id": np.arange(n), "lon": lon, "lat": lat}), rows


def test_invalid_rows_error_names_count_rows_and_reasons(tmp_path, bundle):
    t, rows = _bad_table()
    src = tmp_path / "in.parquet"
    pq.write_table(t, src)
    out = tmp_path / "out.parquet"
    out.write_bytes(b"previous output")
    with pytest.raises(InputError) as exc:
        enrich_file(bundle, src, out, chunk_rows=8)
    msg = str(exc.value)
    assert "5 of 40 rows have invalid coordinates" in msg
    for r, (_, _, reason) in zip(rows, BAD, strict=True):
        assert f"row {r}: {reason}" in msg
    assert str(src) in msg and "--on-invalid null" in msg
    assert out.read_bytes() == b"previous output"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet", "out.parquet"]  # no temp files


def test_invalid_rows_null_mode_flags_and_keeps_rows(tmp_path, bundle):
    t, rows = _bad_table()
    src = tmp_path / "in.parquet"
    pq.write_table(t, src)
    out = tmp_path / "out.parquet"
    s = enrich_file(bundle, src, out, on_invalid="null", chunk_rows=8)
    res = pq.read_table(out)
    pd.testing.assert_frame_equal(res.select(["id", "lon", "lat"]).to_pandas(), t.to_pandas())  # NaN == NaN
    flags = res[INVALID_COL].to_pylist()
    expected = [None] * 40
    for r, (_, _, reason) in zip(rows, BAD, strict=True):
        expected[r] = reason
    assert flags == expected
    emb = emb_matrix(res)
    bad = np.zeros(40, bool)
    bad[rows] = True
    assert np.isnan(emb[bad]).all() and res["emb_0"].null_count == 5
    lon, lat = t["lon"].to_numpy().copy(), t["lat"].to_numpy().copy()
    np.testing.assert_array_equal(emb[~bad], bundle.embed(lon[~bad], lat[~bad]))
    assert res[SUPPORT_COL].null_count == 5 and res[OOS_COL].null_count == 5
    assert s.invalid == 5 and s.by_reason == {"missing": 1, "infinite": 1, "out_of_range": 2, "null_island": 1}


def test_text_coordinates_in_csv(tmp_path, bundle):
    lon, lat = inside_points(10, seed=2)
    lons = [f"{v}" for v in lon]
    lats = [f"{v}" for v in lat]
    lons[2], lats[4], lons[6] = "abc", "", "12,5"
    src = tmp_path / "in.csv"
    pd.DataFrame({"lon": lons, "lat": lats}).to_csv(src, index=False)
    with pytest.raises(InputError, match=r"3 of 10 rows.*\n.*row 2: non_numeric \(lon='abc'"):
        enrich_file(bundle, src, tmp_path / "out.csv")
    out = tmp_path / "out.parquet"
    enrich_file(bundle, src, out, on_invalid="null")
    flags = pq.read_table(out)[INVALID_COL].to_pylist()
    assert flags[2] == "non_numeric" and flags[4] == "missing" and flags[6] == "non_numeric"
    assert sum(f is not None for f in flags) == 3


def test_swapped_columns_are_an_error_that_says_so(tmp_path, bundle):
    lon, lat = inside_points(200, seed=4)
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"lon": lat, "lat": lon}), src)  # exchanged
    for mode in ("error", "null"):
        with pytest.raises(InputError, match="look swapped") as exc:
            enrich_file(bundle, src, tmp_path / "out.parquet", on_invalid=mode)
        assert "--lon-col" in str(exc.value)
    assert not (tmp_path / "out.parquet").exists()
    # named the right way round, the same file is fine
    enrich_file(bundle, src, tmp_path / "ok.parquet", lon_col="lat", lat_col="lon")


def test_points_outside_footprint_are_not_called_swapped(tmp_path, bundle):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"lon": [2.35, 4.35, 13.4], "lat": [48.85, 50.85, 52.5]}), src)
    s = enrich_file(bundle, src, tmp_path / "out.parquet")
    assert s.out_of_support == 3


@pytest.mark.parametrize("case", ["missing_columns", "missing_file", "unreadable", "wrong_bundle",
                                  "bad_extension", "same_path", "already_enriched", "bad_bundle",
                                  "date_column", "nested_to_csv"])
def test_bad_inputs_raise_clear_errors(tmp_path, bundle_path, case):
    src = tmp_path / "in.parquet"
    lon, lat = inside_points(5)
    pq.write_table(pa.table({"x": lon, "latitude": lat}), src)
    out = tmp_path / "out.parquet"
    bp = bundle_path
    kwargs = {}
    if case == "missing_columns":
        pattern = r"coordinate column\(s\) \['lon', 'lat'\] not found.*candidates: \['x', 'latitude'\]"
    elif case == "missing_file":
        src, pattern = tmp_path / "nope.parquet", "nope.parquet does not exist"
    elif case == "unreadable":
        src = tmp_path / "junk.parquet"
        src.write_bytes(b"this is not parquet")
        pattern = "cannot read Parquet file .*junk.parquet"
    elif case == "wrong_bundle":
        bp, pattern = tmp_path / "no_bundle", "no_bundle does not exist"
    elif case == "bad_bundle":
        bp = tmp_path / "bad_bundle"
        bp.mkdir()
        (bp / "geoembed.json").write_text("{}")
        pattern = "bad_bundle is incomplete"
    elif case == "bad_extension":
        out, pattern = tmp_path / "out.xlsx", "unknown table format"
    elif case == "same_path":
        kwargs = {"lon_col": "x", "lat_col": "latitude"}
        out, pattern = src, "would overwrite the input"
    elif case == "already_enriched":
        pq.write_table(pa.table({"lon": lon, "lat": lat, "emb_0": lon}), src)
        pattern = r"already has column\(s\) \['emb_0'\]"
    elif case == "date_column":
        pq.write_table(pa.table({"lon": pa.array([dt.date(2020, 1, 1)] * 5), "lat": lat}), src)
        pattern = "type date32.*not numeric.*'lon'"
    elif case == "nested_to_csv":
        pq.write_table(pa.table({"lon": lon, "lat": lat, "tags": pa.array([[1]] * 5)}), src)
        out, pattern = tmp_path / "out.csv", r"cannot write column\(s\) \['tags \(list"
    with pytest.raises(GeoembedError, match=pattern):
        enrich_file(bp, src, out, **kwargs)
    if case != "same_path":
        assert not out.exists()


def test_failure_mid_run_leaves_no_complete_looking_output(tmp_path, bundle_path, monkeypatch):
    from geoembed.io.bundle import Bundle

    src = tmp_path / "in.parquet"
    pq.write_table(odd_table(100).drop_columns(["tags"]), src)
    for name in ("out.parquet", "out.csv"):
        out = tmp_path / name
        out.write_bytes(b"old result")
        calls = {"n": 0}
        real = Bundle.embed

        def flaky(self, lon, lat, batch_size=65536, _real=real, _calls=calls):
            _calls["n"] += 1
            if _calls["n"] == 3:
                raise RuntimeError("simulated crash in chunk 3")
            return _real(self, lon, lat, batch_size)

        monkeypatch.setattr(Bundle, "embed", flaky)
        with pytest.raises(RuntimeError, match="chunk 3"):
            enrich_file(bundle_path, src, out, chunk_rows=10, workers=1)
        monkeypatch.setattr(Bundle, "embed", real)
        assert calls["n"] == 3
        assert out.read_bytes() == b"old result"
        assert not (tmp_path / (name + ".meta.json")).exists()
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == ["in.parquet", "out.csv", "out.parquet"]


def test_loaded_bundle_is_cached(bundle_path):
    assert load_bundle_cached(bundle_path) is load_bundle_cached(bundle_path)


def test_pandas_index_and_dtypes_survive(tmp_path, bundle):
    lon, lat = inside_points(30, seed=8)
    df = pd.DataFrame({"lon": lon, "lat": lat, "cat": pd.Categorical(["a", "b", "c"] * 10),
                       "n": pd.array([1, None, 3] * 10, dtype="Int64")},
                      index=pd.Index(np.arange(500, 530), name="policy"))
    src = tmp_path / "in.parquet"
    df.to_parquet(src)
    enrich_file(bundle, src, tmp_path / "out.parquet")
    res = pd.read_parquet(tmp_path / "out.parquet")
    pd.testing.assert_frame_equal(res[df.columns], df)  # index, categorical and nullable ints intact
    assert list(res.columns[len(df.columns):]) == [*EMB, INVALID_COL, SUPPORT_COL, OOS_COL]
