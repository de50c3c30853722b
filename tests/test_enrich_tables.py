"""Tables alike everywhere (issue 13, items 4, 5, 7, 10): the same formats and errors in enrich, evaluate and
inspect; CSV text kept; projected coordinates named as such; whole-table verdicts whatever the chunk size
and row order; outputs checked before any work; temporaries of killed runs removed; 0 rows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from geoembed import LocationEmbedder
from geoembed.cli import main as cli_main
from geoembed.enrich import enrich_directory, enrich_file, fit_reduction_file
from geoembed.errors import InputError
from geoembed.evaluate.tables import read_table
from geoembed.inspect import describe
from geoembed.io.atomic import atomic_path, stale_temps
from geoembed.io.enriched import INVALID_COL
from geoembed.testing.bundles import TINY_EMB as EMB

ROOT = Path(__file__).resolve().parents[1]


def points(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(-34.91, -34.83, n), rng.uniform(-8.035, -7.955, n)


def emb_of(path: Path, key: str = "id") -> pd.DataFrame:
    """Embedding columns of an enriched table, indexed by ``key`` and sorted."""
    df = gpd.read_parquet(path) if b"geo" in (pq.read_schema(path).metadata or {}) else pd.read_parquet(path)
    return df.set_index(key)[EMB].sort_index()


# ------------------------------------------------------------------------------------------ formats

def write_all_formats(tmp_path: Path, n: int = 60) -> dict[str, Path]:
    lon, lat = points(n, seed=1)
    g = gpd.GeoDataFrame({"id": [f"{i:04d}" for i in range(n)], "claims": np.arange(n) % 3},
                         geometry=gpd.points_from_xy(lon, lat), crs="EPSG:4326")
    paths = {"csv": tmp_path / "t.csv", "csv.gz": tmp_path / "t.csv.gz", "parquet": tmp_path / "t.parquet",
             "geoparquet": tmp_path / "tg.parquet", "shp": tmp_path / "t.shp", "gpkg": tmp_path / "t.gpkg",
             "geojson": tmp_path / "t.geojson"}
    flat = pd.DataFrame({"id": g["id"], "claims": g["claims"], "lon": lon, "lat": lat})
    flat.to_csv(paths["csv"], index=False)
    flat.to_csv(paths["csv.gz"], index=False)
    flat.to_parquet(paths["parquet"])
    g.to_crs("EPSG:31985").to_parquet(paths["geoparquet"])  # any CRS
    g.to_crs("EPSG:31985").to_file(paths["shp"])
    g.to_file(paths["gpkg"], layer="policies")
    g.to_file(paths["geojson"])
    return paths


def test_every_stage_reads_every_format_alike(tmp_path, bundle_path, bundle):
    paths = write_all_formats(tmp_path)
    lon, lat = points(60, seed=1)
    want = bundle.embed(lon, lat)
    for fmt, path in paths.items():
        out = tmp_path / f"out_{fmt.replace('.', '_')}.parquet"
        enrich_file(bundle_path, path, out)
        got = emb_of(out).to_numpy()
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=fmt)  # projected ones: 1e-9 deg round trips
        if fmt in ("csv", "csv.gz", "parquet"):
            np.testing.assert_array_equal(got, want)
        # evaluate reads the same table with the same columns and lon/lat
        t = read_table(path)
        assert len(t) == 60 and list(t["id"].astype(str))[:2] == ["0000", "0001"], fmt
        np.testing.assert_allclose(t["lon"].astype(float), lon, atol=1e-7, err_msg=fmt)
        # inspect describes it
        info = describe(path)
        assert info["artefact"] == "table" and info["rows"] == 60, fmt
        if fmt in ("geoparquet", "shp", "gpkg", "geojson"):
            assert info["geometry"]["crs"] in ("EPSG:4326", "EPSG:31985", "OGC:CRS84"), (fmt, info["geometry"])
    # GeoPackage output of a vector input is GeoParquet (geometry and CRS kept)
    res = gpd.read_parquet(tmp_path / "out_gpkg.parquet")
    assert res.crs.equals("EPSG:4326") and res.geometry.geom_type.eq("Point").all()
    # the same errors everywhere: an unknown extension, a missing file
    (tmp_path / "t.xlsx").write_bytes(b"PK")
    for call in (lambda p: enrich_file(bundle_path, p, tmp_path / "x.parquet"), read_table, describe):
        with pytest.raises(InputError, match="t.xlsx"):
            call(tmp_path / "t.xlsx")
        with pytest.raises(InputError, match="nope.csv does not exist"):
            call(tmp_path / "nope.csv")


def test_geopackage_layers_and_missing_crs(tmp_path, bundle_path):
    lon, lat = points(10)
    g = gpd.GeoDataFrame({"id": np.arange(10)}, geometry=gpd.points_from_xy(lon, lat), crs="EPSG:4326")
    g.to_file(tmp_path / "two.gpkg", layer="a")
    g.iloc[:4].to_file(tmp_path / "two.gpkg", layer="b")
    out = tmp_path / "o.parquet"
    with pytest.raises(InputError, match=r"holds 2 layers \['a', 'b'\]; pass --layer"):
        enrich_file(bundle_path, tmp_path / "two.gpkg", out)
    with pytest.raises(InputError, match=r"holds 2 layers"):
        read_table(tmp_path / "two.gpkg")
    assert enrich_file(bundle_path, tmp_path / "two.gpkg", out, layer="b").rows == 4
    assert describe(tmp_path / "two.gpkg", layer="b")["rows"] == 4
    with pytest.raises(InputError, match="has no layer 'c'"):
        enrich_file(bundle_path, tmp_path / "two.gpkg", out, layer="c")
    # a shapefile without .prj: the error names the file and says how to pass the CRS
    g.to_crs("EPSG:31985").to_file(tmp_path / "noprj.shp")
    (tmp_path / "noprj.prj").unlink()
    with pytest.raises(InputError, match=r"noprj.shp: geometry column 'geometry' has no CRS \(no .prj.*--crs"):
        enrich_file(bundle_path, tmp_path / "noprj.shp", out)
    assert enrich_file(bundle_path, tmp_path / "noprj.shp", out, crs="EPSG:31985").invalid == 0
    assert describe(tmp_path / "noprj.shp")["geometry"]["crs"] is None


def test_csv_text_is_kept_and_named_columns_are_parsed(tmp_path, bundle_path):
    lon, lat = points(6)
    raw = ("code,lon,lat,note,claims\n" + "\n".join(
        f"{c},{lo},{la},{nt},{cl}" for c, lo, la, nt, cl in zip(
            ["0007", "0010", "A1", "0007", "12", "x"], lon, lat, ["NA", "", "n/a", "null", "1.50", "-"],
            ["1", "0", "2", "1", "NA", "3"], strict=True)) + "\n")
    src = tmp_path / "t.csv"
    src.write_text(raw)
    for out in (tmp_path / "o.csv", tmp_path / "o.parquet"):
        enrich_file(bundle_path, src, out)
        res = pd.read_csv(out, dtype=str, keep_default_na=False) if out.suffix == ".csv" else pd.read_parquet(out)
        assert res["code"].tolist() == ["0007", "0010", "A1", "0007", "12", "x"]
        assert res["note"].tolist() == ["NA", "", "n/a", "null", "1.50", "-"]
        assert res["claims"].tolist() == ["1", "0", "2", "1", "NA", "3"]
    # evaluate keeps the text too, and parses the columns the config names with errors naming the row
    t = read_table(src)
    assert t["code"].tolist()[0] == "0007" and t["note"].tolist()[0] == "NA"
    from geoembed.config.evaluate import EvaluateConfig
    from geoembed.evaluate.tables import validate_table

    cfg = EvaluateConfig(table="t.csv", target="claims", features=["none"], models=["glm"],
                         split={"kind": "random", "n_folds": 2})
    with pytest.raises(InputError, match=r"target column 'claims' has missing or non-numeric values in rows 4 "
                                         r"\(0-based\): row 4: 'NA' \(missing\)"):
        validate_table(t, cfg, needs_coords=False)


def test_projected_coordinates_are_named_and_a_crs_converts_them(tmp_path, bundle_path, bundle):
    lon, lat = points(200, seed=3)
    utm = gpd.GeoSeries(gpd.points_from_xy(lon, lat), crs="EPSG:4326").to_crs("EPSG:31985")
    df = pd.DataFrame({"id": np.arange(200), "x": utm.x, "y": utm.y})
    for name in ("m.csv", "m.parquet"):
        src = tmp_path / name
        df.to_csv(src, index=False) if name.endswith(".csv") else df.to_parquet(src)
        for mode in ("error", "null"):  # whatever on_invalid: a table verdict, not row flags
            with pytest.raises(InputError, match=r"200 of 200 coordinates \(e.g. x=2\d{5}\..*look like projected "
                                                 r"coordinates.*--crs EPSG:XXXX"):
                enrich_file(bundle_path, src, tmp_path / "o.parquet", lon_col="x", lat_col="y", on_invalid=mode)
        s = enrich_file(bundle_path, src, tmp_path / "o.parquet", lon_col="x", lat_col="y", crs="EPSG:31985")
        assert s.invalid == 0
        res = pq.read_table(tmp_path / "o.parquet")
        np.testing.assert_allclose(res.select(EMB).to_pandas().to_numpy(), bundle.embed(lon, lat), atol=1e-5)
        np.testing.assert_allclose(res["x"].to_numpy(), df["x"])  # the input columns are kept as they were
    # a few metre-like rows among degrees are row errors, not a table verdict
    mixed = pd.DataFrame({"lon": np.r_[lon[:190], utm.x[:10]], "lat": np.r_[lat[:190], utm.y[:10]]})
    mixed.to_parquet(tmp_path / "mixed.parquet")
    with pytest.raises(InputError, match="10 of 200 rows have invalid coordinates"):
        enrich_file(bundle_path, tmp_path / "mixed.parquet", tmp_path / "o2.parquet")
    # LocationEmbedder and evaluate say the same
    with pytest.raises(InputError, match="look like projected coordinates.*crs='EPSG:XXXX'"):
        LocationEmbedder(bundle_path, lon_col="x", lat_col="y").fit(df)
    emb = LocationEmbedder(bundle_path, lon_col="x", lat_col="y", crs="EPSG:31985").fit_transform(df)
    np.testing.assert_allclose(emb, bundle.embed(lon, lat), atol=1e-5)
    from geoembed.config.evaluate import EvaluateConfig
    from geoembed.evaluate.tables import validate_table

    cfg = EvaluateConfig(table="m.csv", target="id", lon_col="x", lat_col="y", features=["coords"],
                         models=["glm"], split={"kind": "random", "n_folds": 2})
    with pytest.raises(InputError, match="look like projected coordinates.*GeoParquet or GeoPackage"):
        validate_table(read_table(tmp_path / "m.csv"), cfg, needs_coords=True)


# ------------------------------------------------------------------------- whole-table verdicts

def _half_swapped(n: int, n_swapped: int, seed: int) -> pd.DataFrame:
    lon, lat = points(n, seed)
    lo, la = lon.copy(), lat.copy()
    lo[:n_swapped], la[:n_swapped] = lat[:n_swapped], lon[:n_swapped]
    return pd.DataFrame({"id": np.arange(n), "lon": lo, "lat": la})


@pytest.mark.parametrize("n_swapped,swapped", [(300, False), (700, True)])
def test_swapped_verdict_is_the_whole_tables(tmp_path, bundle_path, n_swapped, swapped):
    """The first 300 (700) of 1,000 rows are exchanged: a first chunk alone looks swapped either way, the
    table does (not) -- the same verdict whatever the chunk size and the row order."""
    base = _half_swapped(1000, n_swapped, seed=5)
    outputs = []
    for k, (order_seed, chunk) in enumerate([(None, 100), (None, 7), (None, 10_000), (1, 64), (2, 333)]):
        df = base if order_seed is None else base.sample(frac=1.0, random_state=order_seed)
        src = tmp_path / f"in{k}.parquet"
        df.to_parquet(src, index=False, row_group_size=50)
        out = tmp_path / f"out{k}.parquet"
        if swapped:
            for mode in ("error", "null"):
                with pytest.raises(InputError, match="look swapped"):
                    enrich_file(bundle_path, src, out, chunk_rows=chunk, on_invalid=mode)
            assert not out.exists()
        else:
            s = enrich_file(bundle_path, src, out, chunk_rows=chunk)
            assert s.rows == 1000
            outputs.append(emb_of(out))
    for o in outputs[1:]:
        pd.testing.assert_frame_equal(o, outputs[0])  # bit for bit, row by row
    # the same over a folder of parts: the verdict is the folder's, not each part's
    parts = tmp_path / "parts"
    parts.mkdir()
    for i in range(4):
        base.iloc[i * 250:(i + 1) * 250].to_parquet(parts / f"p{i}.parquet", index=False)
    if swapped:
        with pytest.raises(InputError, match="look swapped"):
            enrich_directory(bundle_path, parts, tmp_path / "pout", scheduler="synchronous")
        assert not (tmp_path / "pout").exists()
        with pytest.raises(InputError, match="look swapped"):
            fit_reduction_file(bundle_path, parts, tmp_path / "r.json", n_components=2)
    else:  # part 0 alone is all swapped, part 1 mostly: no error, because the folder is not
        enrich_directory(bundle_path, parts, tmp_path / "pout", scheduler="synchronous")
        got = pd.concat([emb_of(p) for p in sorted((tmp_path / "pout").glob("*.parquet"))]).sort_index()
        pd.testing.assert_frame_equal(got, outputs[0])


# ------------------------------------------------------------------------------------------ outputs

def test_outputs_are_checked_before_any_work(tmp_path, bundle_path, monkeypatch):
    from geoembed.enrich import enricher

    src = tmp_path / "in.parquet"
    pd.DataFrame(dict(zip(("lon", "lat"), points(20), strict=True))).to_parquet(src)

    def no_bundle(*a, **k):  # any work would load the bundle first
        raise AssertionError("work started")

    monkeypatch.setattr(enricher, "load_bundle_cached", no_bundle)
    monkeypatch.setattr("geoembed.enrich.driver.load_bundle_cached", no_bundle)
    monkeypatch.setattr("geoembed.enrich.parts.load_bundle_cached", no_bundle)
    monkeypatch.setattr("geoembed.enrich.fit_reduction.load_bundle_cached", no_bundle)
    (tmp_path / "adir.parquet").mkdir()
    (tmp_path / "afile").write_text("x")
    cases = [
        (tmp_path / "adir.parquet", r"output .*adir.parquet is a folder; give a file name"),
        (tmp_path / "missing" / "o.parquet", r"folder .*missing does not exist"),
        (Path("/proc/geoembed_o.parquet"), r"folder /proc is not writable"),
    ]
    for out, pattern in cases:
        with pytest.raises(InputError, match=pattern):
            enrich_file(bundle_path, src, out)
        with pytest.raises(InputError, match=pattern.replace("output", "reduction output")):
            fit_reduction_file(bundle_path, src, out, n_components=2)
    (tmp_path / "o.csv.meta.json").mkdir()  # the sidecar of a CSV output is checked too
    with pytest.raises(InputError, match=r"output sidecar .*o.csv.meta.json is a folder"):
        enrich_file(bundle_path, src, tmp_path / "o.csv")
    parts = tmp_path / "parts"
    parts.mkdir()
    pd.DataFrame(dict(zip(("lon", "lat"), points(20), strict=True))).to_parquet(parts / "p.parquet")
    with pytest.raises(InputError, match=r"output folder .*afile exists and is not a folder"):
        enrich_directory(bundle_path, parts, tmp_path / "afile")
    with pytest.raises(InputError, match=r"folder .*missing does not exist"):
        enrich_directory(bundle_path, parts, tmp_path / "missing" / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir.parquet", "afile", "in.parquet",
                                                          "o.csv.meta.json", "parts"]
    # the command line prints the same error, without a traceback
    monkeypatch.undo()
    rc = cli_main(["enrich", "--bundle", str(bundle_path), "--input", str(src), "--output",
                   str(tmp_path / "adir.parquet")])
    assert rc == 1


def test_stale_temporaries_are_removed_and_live_ones_kept(tmp_path, bundle_path):
    src = tmp_path / "in.parquet"
    pd.DataFrame(dict(zip(("lon", "lat"), points(20), strict=True))).to_parquet(src)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = [tmp_path / f".out.parquet.{dead}.ab12cd34.parquet.tmp", tmp_path / ".out.parquet.xy12ab34.parquet.tmp"]
    for p in stale:
        p.write_bytes(b"half a file")
    (tmp_path / f".out.parquet.{dead}.qq12ww34.tmp").mkdir()  # a temporary folder
    live = tmp_path / f".out.parquet.{os.getppid()}.zz12yy34.parquet.tmp"  # a running process's (pytest's parent)
    live.write_bytes(b"being written")
    other = tmp_path / f".other.parquet.{dead}.ab12cd34.parquet.tmp"  # another target's: not ours to judge
    other.write_bytes(b"x")
    enrich_file(bundle_path, src, tmp_path / "out.parquet")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["in.parquet", "out.parquet", live.name, other.name])
    assert stale_temps(tmp_path) == [other] or stale_temps(tmp_path) == [tmp_path / other.name]


def test_atomic_path_names_its_process_and_cleans_its_target(tmp_path):
    target = tmp_path / "x.json"
    with atomic_path(target) as tmp:
        assert tmp.name.startswith(f".x.json.{os.getpid()}.") and tmp.name.endswith(".tmp")
        tmp.write_text("1")
    assert target.read_text() == "1"


def test_killed_parts_leave_no_temporaries_in_the_finished_folder(tmp_path, bundle_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    for i in range(3):
        pd.DataFrame(dict(zip(("lon", "lat"), points(40, i), strict=True))).to_parquet(parts / f"p{i}.parquet")
    out = tmp_path / "out"
    staging = tmp_path / ".out.partial"
    staging.mkdir()
    # what a run killed mid-part leaves: a temporary part of a process that is gone, and one whose
    # process id now belongs to a live process (pid reuse) -- neither may end up in the output
    (staging / ".p1.parquet.999999999.abcdef12.parquet.tmp").write_bytes(b"half")
    (staging / f".p2.parquet.{os.getppid()}.abcdef12.parquet.tmp").write_bytes(b"half")
    enrich_directory(bundle_path, parts, out, scheduler="synchronous")
    assert sorted(p.name for p in out.iterdir()) == ["_geoembed.json", "p0.parquet", "p1.parquet", "p2.parquet"]
    assert not staging.exists()


def test_view_store_finalize_sweeps_temporaries(tmp_path):
    from geoembed.io.viewstore import ArraySpec, ViewStore

    store = ViewStore.create_or_resume(tmp_path / "v", location_ids=np.arange(10), chunk_rows=5,
                                       arrays={"a": ArraySpec((2,), "float32")}, kind="test", attrs={},
                                       build_fingerprint="x")
    for i in range(2):
        store.write_chunk(i, {"a": np.ones((5, 2), np.float32)}, np.ones(5), np.ones(5, bool))
    (tmp_path / "v" / "_chunks" / ".1.json.999999999.abcdef12.tmp").write_text("{")
    (tmp_path / "v" / ".meta.json.999999999.abcdef12.tmp").write_text("{")
    store.finalize()
    left = [p.name for p in (tmp_path / "v").rglob("*") if p.name.endswith(".tmp")]
    assert left == []


def _kill_and_rerun(tmp_path: Path, bundle_path: Path, n: int, kills: int, seed: int) -> None:
    """Enrich ``n`` rows in a subprocess, SIGKILL it at random moments while it writes, rerun: the rerun's
    output equals an uninterrupted run's byte for byte, and no temporary file remains."""
    lon, lat = points(n, seed)
    src = tmp_path / "big.parquet"
    pq.write_table(pa.table({"id": np.arange(n), "lon": lon, "lat": lat,
                             "txt": pa.array(np.char.add("r", np.arange(n).astype(str)))}), src)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SOURCE_DATE_EPOCH": "1700000000", "GEOEMBED_NO_PROGRESS": "1"}
    ref_dir, out_dir = tmp_path / "ref", tmp_path / "out"
    ref_dir.mkdir()
    out_dir.mkdir()

    def cmd(out: Path) -> list[str]:
        return [sys.executable, "-m", "geoembed.cli", "enrich", "--bundle", str(bundle_path), "--input", str(src),
                "--output", str(out), "--chunk-rows", "16384", "--workers", "1"]

    subprocess.run(cmd(ref_dir / "o.parquet"), env=env, check=True, capture_output=True)
    rng = np.random.default_rng(seed)
    out = out_dir / "o.parquet"
    for _ in range(kills):
        proc = subprocess.Popen(cmd(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.monotonic()
        while not any(p.name.endswith(".tmp") for p in out_dir.iterdir()) and proc.poll() is None \
                and time.monotonic() - t0 < 60:
            time.sleep(0.005)
        time.sleep(float(rng.uniform(0.0, 0.4)))  # a random moment of the write
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if out.exists():  # it finished before the kill: start over
            out.unlink()
    assert any(p.name.endswith(".tmp") for p in out_dir.iterdir())  # a kill did leave something behind
    subprocess.run(cmd(out), env=env, check=True, capture_output=True)
    assert out.read_bytes() == (ref_dir / "o.parquet").read_bytes()
    assert sorted(p.name for p in out_dir.iterdir()) == ["o.parquet"]


def test_kill_at_a_random_moment_then_rerun(tmp_path, bundle_path):
    _kill_and_rerun(tmp_path, bundle_path, n=300_000, kills=2, seed=0)


@pytest.mark.slow
def test_kill_two_million_rows_at_random_moments(tmp_path, bundle_path):
    _kill_and_rerun(tmp_path, bundle_path, n=2_000_000, kills=4, seed=1)


# ------------------------------------------------------------------------------------------ 0 rows

def test_zero_rows_give_zero_rows(tmp_path, bundle_path):
    emb = LocationEmbedder(bundle_path).fit(pd.DataFrame(dict(zip(("lon", "lat"), points(20), strict=True))))
    empty = pd.DataFrame({"lon": np.zeros(0), "lat": np.zeros(0), "x": np.zeros(0)})
    out = emb.transform(empty[["lon", "lat"]])
    assert out.shape == (0, 4) and out.dtype == np.float64
    emb.set_output(transform="pandas")
    framed = emb.transform(empty[["lon", "lat"]])
    assert list(framed.columns) == EMB and len(framed) == 0
    arr = LocationEmbedder(bundle_path, lon_col=0, lat_col=1).fit(np.column_stack(points(10)))
    assert arr.transform(np.zeros((0, 2))).shape == (0, 4)
    with pytest.raises(ValueError, match="0 sample"):  # fitting needs data (scikit-learn's rule)
        LocationEmbedder(bundle_path).fit(empty)
    red = LocationEmbedder(bundle_path, n_components=2).fit(pd.DataFrame(dict(zip(("lon", "lat"), points(30),
                                                                                     strict=True))))
    assert red.transform(empty[["lon", "lat"]]).shape == (0, 2)
    # the command line: a header-only CSV and an empty Parquet give empty enriched tables
    (tmp_path / "h.csv").write_text("lon,lat,code\n")
    pq.write_table(pa.table({"lon": pa.array([], pa.float64()), "lat": pa.array([], pa.float64())}),
                   tmp_path / "e.parquet")
    for src in ("h.csv", "e.parquet"):
        assert cli_main(["enrich", "--bundle", str(bundle_path), "--input", str(tmp_path / src), "--output",
                         str(tmp_path / f"{src}.out.parquet")]) == 0
        res = pq.read_table(tmp_path / f"{src}.out.parquet")
        assert res.num_rows == 0 and EMB[0] in res.schema.names and INVALID_COL in res.schema.names


# ------------------------------------------------------------------------------- a corpus of bad files

def _bad_files(d: Path) -> dict[str, tuple[Path, str]]:
    """Bad inputs and the words each stage's error must hold (besides the file's name)."""
    import json

    import shapely

    def w(name: str, data) -> Path:
        p = d / name
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
        return p

    out = {
        "empty": (w("empty.csv", ""), "Empty CSV file"),
        "header_only_no_newline": (w("h.csv", "lon,lat"), "cannot read CSV file"),
        "binary": (w("junk.csv", bytes(range(256)) * 10), "cannot read CSV file"),
        "ragged": (w("ragged.csv", "lon,lat\n-34.9,-8.0\n-34.8\n"), "Expected 2 columns, got 1"),
        "latin1": (w("latin1.csv", "lon,lat,name\n-34.9,-8.0,S\xe3o\n".encode("latin-1")),
                   "column 'name' holds text that is not UTF-8"),
        "not_a_geopackage": (w("junk.gpkg", b"not a geopackage"), "not recognized"),
        "broken_geojson": (w("bad.geojson", '{"type": "FeatureCollection", "features": [}'), "GeoJSON"),
        "unknown_extension": (w("t.xlsx", b"PK"), "GeoJSON (.geojson) or FlatGeobuf (.fgb)"),
    }
    t = pa.table({"lon": [-34.9], "lat": [-8.0]}).replace_schema_metadata({b"geo": b"{not json"})
    pq.write_table(t, d / "badgeo.parquet")
    out["malformed_geo_metadata"] = (d / "badgeo.parquet", "malformed GeoParquet 'geo' metadata")
    geo = {"primary_column": "geometry", "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Polygon"]}}}
    t = pa.table({"geometry": pa.array([b"\x01\x03\x00\x00\x00\x05"]), "k": [1]})
    pq.write_table(t.replace_schema_metadata({b"geo": json.dumps(geo).encode()}), d / "trunc.parquet")
    out["truncated_wkb"] = (d / "trunc.parquet", "row 0")
    g = gpd.GeoDataFrame({"a": [1]}, geometry=[shapely.box(-34.9, -8.0, -34.89, -7.99)], crs=None)
    g.to_parquet(d / "nocrs.parquet")
    out["geometry_without_crs"] = (d / "nocrs.parquet", "no CRS")
    return out


def test_a_corpus_of_bad_files_gives_errors_never_tracebacks(tmp_path, bundle_path, capsys):
    """Every stage, every bad file: exit code 1 and one line naming the file, or an InputError."""
    (tmp_path / "in").mkdir()
    for case, (path, words) in _bad_files(tmp_path / "in").items():
        rc = cli_main(["enrich", "--bundle", str(bundle_path), "--input", str(path), "--output",
                       str(tmp_path / "o.parquet")])
        err = capsys.readouterr().err
        assert rc == 1 and "Traceback" not in err and path.name in err, (case, err)
        if case not in ("truncated_wkb", "geometry_without_crs"):  # these two only fail when enriched
            assert words in err, (case, err)
            rc = cli_main(["inspect", str(path)])
            err = capsys.readouterr().err
            assert rc == 1 and words in err and path.name in err, (case, err)
        else:
            assert words in err, (case, err)
        if case == "geometry_without_crs":
            continue  # evaluate reads it; lon/lat from a geometry without CRS is validate's error
        with pytest.raises(InputError, match=path.name):
            read_table(path)
    assert not (tmp_path / "o.parquet").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]
