"""Folders of Parquet parts on Dask, the `geoembed enrich` command line, and stored reductions."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from geoembed.cli import main as cli_main
from geoembed.enrich.parts import SUMMARY_FILE, enrich_directory, read_directory_summary
from geoembed.errors import InputError
from geoembed.io.reduction import Reduction
from geoembed.testing.bundles import TINY_EMB as EMB

ROOT = Path(__file__).resolve().parents[1]


def part_table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({"id": np.arange(n) + 1000 * seed, "lon": rng.uniform(-34.91, -34.83, n),
                     "lat": rng.uniform(-8.035, -7.955, n), "txt": [f"r{i}" for i in range(n)]})


def make_parts(folder: Path, sizes=(120, 75, 200)) -> list[pa.Table]:
    folder.mkdir(parents=True, exist_ok=True)
    tables = [part_table(n, i) for i, n in enumerate(sizes)]
    for i, t in enumerate(tables):
        pq.write_table(t, folder / f"part-{i:03d}.parquet", row_group_size=50)
    return tables


def check_part(path: Path, t: pa.Table, bundle) -> None:
    res = pq.read_table(path)
    assert res.select(t.schema.names).equals(t)
    got = np.column_stack([res[c].to_numpy() for c in EMB])
    np.testing.assert_array_equal(got, bundle.embed(t["lon"].to_numpy().copy(), t["lat"].to_numpy().copy()))


def test_directory_of_parts_local_dask(tmp_path, bundle_path, bundle):
    tables = make_parts(tmp_path / "in")
    out = tmp_path / "out"
    s = enrich_directory(bundle_path, tmp_path / "in", out, chunk_rows=64)
    assert sorted(p.name for p in out.iterdir()) == [SUMMARY_FILE, "part-000.parquet", "part-001.parquet",
                                                     "part-002.parquet"]
    for i, t in enumerate(tables):
        check_part(out / f"part-{i:03d}.parquet", t, bundle)
    summ = read_directory_summary(out)
    assert summ["rows"] == s.rows == 395 and summ["complete"] and summ["bundle"]["fingerprint"] == bundle.fingerprint
    assert not (tmp_path / ".out.partial").exists()


def test_failed_part_leaves_no_complete_output_and_rerun_resumes(tmp_path, bundle_path, bundle):
    tables = make_parts(tmp_path / "in")
    out = tmp_path / "out"
    enrich_directory(bundle_path, tmp_path / "in", out)  # a previous complete output
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # part 1 now holds a bad row: the run fails, the old output stays exactly as it was
    bad = tables[1].to_pandas()
    bad.loc[7, "lat"] = 95.0
    pq.write_table(pa.Table.from_pandas(bad, preserve_index=False), tmp_path / "in" / "part-001.parquet")
    with pytest.raises(InputError, match=r"(?s)part-001.parquet: 1 of 75 rows.*row 7: out_of_range"):
        enrich_directory(bundle_path, tmp_path / "in", out, scheduler="synchronous")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    staging = tmp_path / ".out.partial"
    assert staging.is_dir() and not (staging / SUMMARY_FILE).exists()
    done = {p.name: p.stat().st_mtime_ns for p in staging.glob("*.parquet")}
    # the synchronous scheduler stops at the failure; whatever finished before it is kept for resuming
    assert "part-001.parquet" not in done and len(done) >= 1
    # fixed input: the rerun only redoes the failed part and then replaces the old output
    pq.write_table(tables[1], tmp_path / "in" / "part-001.parquet")
    s = enrich_directory(bundle_path, tmp_path / "in", out, scheduler="synchronous")
    assert s.rows == 395
    for name, mtime in done.items():
        assert (out / name).stat().st_mtime_ns == mtime  # reused, not recomputed
    for i, t in enumerate(tables):
        check_part(out / f"part-{i:03d}.parquet", t, bundle)
    assert not staging.exists()


def test_directory_refuses_foreign_output_and_empty_input(tmp_path, bundle_path):
    make_parts(tmp_path / "in")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    with pytest.raises(InputError, match="not written by `geoembed enrich`"):
        enrich_directory(bundle_path, tmp_path / "in", foreign)
    assert (foreign / "keep.txt").read_text() == "user data"
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no .parquet parts"):
        enrich_directory(bundle_path, tmp_path / "empty", tmp_path / "o")


def test_distributed_scheduler_address(tmp_path, bundle_path, bundle):
    from distributed import LocalCluster

    tables = make_parts(tmp_path / "in", sizes=(60, 40))
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        enrich_directory(bundle_path, tmp_path / "in", tmp_path / "out", scheduler=cluster.scheduler_address)
    for i, t in enumerate(tables):
        check_part(tmp_path / "out" / f"part-{i:03d}.parquet", t, bundle)


def test_cli_file_folder_env_scheduler_and_errors(tmp_path, bundle_path, bundle, capsys, monkeypatch):
    tables = make_parts(tmp_path / "in", sizes=(50, 30))
    src = tmp_path / "in" / "part-000.parquet"
    rc = cli_main(["enrich", "--bundle", str(bundle_path), "--input", str(src), "--output",
                   str(tmp_path / "one.csv"), "--chunk-rows", "16"])
    out = capsys.readouterr().out
    assert rc == 0 and "enriched 50 rows (0 invalid, 0 out of support > 2 km)" in out and "rows/s" in out
    assert json.loads((tmp_path / "one.csv.meta.json").read_text())["bundle"]["fingerprint"] == bundle.fingerprint
    monkeypatch.setenv("GEOEMBED_SCHEDULER", "synchronous")
    rc = cli_main(["enrich", "--bundle", str(bundle_path), "--input", str(tmp_path / "in"), "--output",
                   str(tmp_path / "folder")])
    assert rc == 0 and "enriched 80 rows" in capsys.readouterr().out
    check_part(tmp_path / "folder" / "part-001.parquet", tables[1], bundle)
    rc = cli_main(["enrich", "--bundle", str(tmp_path / "nobundle"), "--input", str(src), "--output",
                   str(tmp_path / "x.parquet")])
    err = capsys.readouterr().err
    assert rc == 1 and "geoembed enrich: error: bundle" in err and "nobundle does not exist" in err
    rc = cli_main(["enrich", "--bundle", str(bundle_path), "--input", str(src), "--output",
                   str(tmp_path / "x.parquet"), "--lon-col", "txt"])
    assert rc == 1 and "50 of 50 rows have invalid coordinates (non_numeric: 50)" in capsys.readouterr().err


def test_cli_fit_reduction_then_enrich_with_it(tmp_path, bundle_path, bundle, capsys):
    make_parts(tmp_path / "ref", sizes=(300, 200))
    red_path = tmp_path / "pca.json"
    rc = cli_main(["enrich", "fit-reduction", "--bundle", str(bundle_path), "--input", str(tmp_path / "ref"),
                   "--output", str(red_path), "--n-components", "2", "--whiten"])
    assert rc == 0 and "2-component whiten reduction on 500 rows" in capsys.readouterr().out
    red = Reduction.load(red_path)
    assert red.bundle_fingerprint == bundle.fingerprint and red.n_samples == 500
    t = part_table(100, 9)
    src = tmp_path / "pol.parquet"
    pq.write_table(t, src)
    rc = cli_main(["enrich", "--bundle", str(bundle_path), "--input", str(src), "--output",
                   str(tmp_path / "pol_out.parquet"), "--reduction", str(red_path)])
    assert rc == 0
    res = pq.read_table(tmp_path / "pol_out.parquet")
    assert "emb_0" not in res.schema.names
    got = np.column_stack([res[f"emb_pc_{i}"].to_numpy() for i in range(2)])
    e = bundle.embed(t["lon"].to_numpy().copy(), t["lat"].to_numpy().copy()).astype(np.float64)
    want = (e - red.mean) @ red.components.T / np.sqrt(red.explained_variance)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # whitened on the reference table: unit variance there
    ref = np.vstack([pq.read_table(p).select(["lon", "lat"]).to_pandas().to_numpy()
                     for p in sorted((tmp_path / "ref").glob("*.parquet"))])
    zr = red.transform(bundle.embed(ref[:, 0].copy(), ref[:, 1].copy()), dtype=np.float64)
    np.testing.assert_allclose(zr.std(axis=0, ddof=1), 1.0, rtol=1e-4)
    # a reduction from another bundle is refused
    bad = json.loads(red_path.read_text())
    bad["bundle_fingerprint"] = "sha256:other"
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    rc = cli_main(["enrich", "--bundle", str(bundle_path), "--input", str(src), "--output",
                   str(tmp_path / "pol2.parquet"), "--reduction", str(tmp_path / "bad.json")])
    assert rc == 1 and "refit it" in capsys.readouterr().err


def test_pipeline_script(tmp_path, bundle_path, bundle):
    spec = importlib.util.spec_from_file_location("enrich_parts", ROOT / "pipelines" / "enrich_parts.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    tables = make_parts(tmp_path / "in", sizes=(40, 20))
    assert mod.main(["--bundle", str(bundle_path), "--input", str(tmp_path / "in"), "--output",
                     str(tmp_path / "out"), "--scheduler", "synchronous"]) == 0
    check_part(tmp_path / "out" / "part-000.parquet", tables[0], bundle)


def test_fit_reduction_names_the_part_and_its_row_for_bad_coordinates(tmp_path, bundle_path):
    from geoembed.enrich import fit_reduction_file

    ref = tmp_path / "ref"
    make_parts(ref, sizes=(120, 75))
    t = part_table(60, 7).to_pandas()
    t.loc[17, "lon"] = np.nan
    t.loc[42, "lat"] = 95.0
    pq.write_table(pa.Table.from_pandas(t, preserve_index=False), ref / "part-002.parquet")
    with pytest.raises(InputError) as err:
        fit_reduction_file(bundle_path, ref, tmp_path / "r.json", n_components=2)
    msg = str(err.value)
    assert "2 of 255 rows" in msg and "row number within its file" in msg
    assert "part-002.parquet row 17: missing" in msg and "part-002.parquet row 42: out_of_range" in msg
    assert not (tmp_path / "r.json").exists()
