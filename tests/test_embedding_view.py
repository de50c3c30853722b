"""The ``embedding`` view kind: a teacher bundle or an embedding raster per location, and distillation.

Raster path: a synthetic int8 COG whose codes are known per pixel, read at pixel centres in three CRSs;
values de-quantised in closed form, nodata / off-raster rows invalid, window means. Bundle path: the
teacher's own embeddings, its support, a changed teacher invalidating the store. Distillation: a
student trained on a raster view plus the teacher's embedding view carries the teacher's signal at
locations it never saw, far more than a student trained on the raster view alone.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import rasterio.shutil
from pyproj import Transformer

from geoembed.config import parse_config
from geoembed.config.build import DaskConfig
from geoembed.errors import ConfigError, InputError
from geoembed.io.bundle import load_bundle
from geoembed.testing.bundles import OLINDA_BOX, make_tiny_bundle
from geoembed.testing.rasters import from_origin, write_geotiff
from geoembed.views import embedding as emb_mod
from geoembed.views.driver import build_view_store
from geoembed.views.embedding import EmbeddingViewConfig, LinearDequantise, SignedSquareDequantise

UTM = "EPSG:32725"  # Olinda's UTM zone (25 S)
X0, Y0 = 290_000.0, 9_116_000.0  # a corner near Olinda in UTM 25 S
ORIGINS = {UTM: (X0, Y0, 10.0), "EPSG:4326": (-34.9, -7.96, 1e-4), "EPSG:3857": (-3_885_000.0, -890_000.0, 10.0)}


def _view(**kw) -> EmbeddingViewConfig:
    return parse_config({"views": [{"kind": "embedding", "name": "emb", **kw}]}).views[0]


def _build(tmp_path: Path, lon, lat, *, store: str = "store", chunk: int = 7, overwrite: bool = False, **kw):
    locs = pd.DataFrame({"location_id": np.arange(len(lon), dtype=np.int64), "lon": lon, "lat": lat})
    return build_view_store(_view(**kw), locs, tmp_path / store, dask_cfg=DaskConfig(chunk_size=chunk),
                            overwrite=overwrite)


def _codes(bands: int = 6, h: int = 30, w: int = 40, seed: int = 0) -> np.ndarray:
    """int8 codes in the product's range [-127, 127], two pixels masked (-128) in every band."""
    codes = np.random.default_rng(seed).integers(-127, 128, (bands, h, w)).astype(np.int8)
    codes[:, 4, 6] = -128
    codes[:, 12, 20] = -128
    return codes


def _cog(path: Path, data: np.ndarray, crs: str | None = UTM, nodata: float | None = -128, res=None,
         origin=None) -> Path:
    """A Cloud Optimized GeoTIFF (GDAL's COG driver) of ``data`` on a north-up grid."""
    x0, y0, r = ORIGINS.get(crs, ORIGINS[UTM])
    tmp = write_geotiff(path.with_suffix(".src.tif"), data, crs=crs, nodata=nodata, blocksize=16,
                        transform=from_origin(*(origin or (x0, y0)), res or r, res or r))
    rasterio.shutil.copy(tmp, path, driver="COG", BLOCKSIZE=16)
    tmp.unlink()
    return path


def _centres(crs: str, rows, cols) -> tuple[np.ndarray, np.ndarray]:
    """lon/lat of the centres of pixels (rows, cols) of a :func:`_cog` raster in ``crs``."""
    x0, y0, r = ORIGINS[crs]
    x = x0 + (np.asarray(cols) + 0.5) * r
    y = y0 - (np.asarray(rows) + 0.5) * r
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(x, y)
    return np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)


def _signed_square(codes) -> np.ndarray:
    v = np.asarray(codes, dtype=np.float64)
    return np.sign(v) * (v / 127.5) ** 2


# ------------------------------------------------------------------------------------------ settings

def test_settings_validated_and_written_out():
    v = _view(raster="/x.tif", dequantise="signed_square")
    assert v.dequantise == SignedSquareDequantise(rule="signed_square", divisor=127.5)
    dumped = parse_config({"views": [v.model_dump(mode="json")]}).views[0]
    assert dumped == v and dumped.model_dump()["window_px"] is None
    assert _view(raster="/x.tif", dequantise={"scale": 0.5, "offset": -1}).dequantise == LinearDequantise(
        scale=0.5, offset=-1.0)
    assert _view(raster="/x.tif", dequantise={"rule": "signed_square", "divisor": 127}).dequantise.divisor == 127
    assert _view(bundle="/b").outside_support is None and _view(bundle="/b").footprint_sources() == []
    for bad, msg in (({}, "exactly one of bundle, raster"),
                     ({"bundle": "/b", "raster": "/x.tif"}, "exactly one of bundle, raster"),
                     ({"bundle": "/b", "window_px": 3}, "window_px: raster settings, but this view reads a bundle"),
                     ({"raster": "/x.tif", "outside_support": "keep"}, "outside_support: a bundle setting"),
                     ({"raster": "/x.tif", "window_px": 4}, "window_px must be odd"),
                     ({"raster": "/x.tif", "bands": [0, 1]}, "bands are 1-based"),
                     ({"raster": "/x.tif", "dequantise": "signed_cube"}, r"views\.0\.embedding\.dequantise"),
                     ({"raster": "/x.tif", "dequantise": {"scale": 0}}, "finite and non-zero"),
                     ({"raster": "/x.tif", "window_px": "3"}, r"views\.0\.embedding\.window_px"),
                     ({"raster": "/x.tif", "band": [1]}, r"views\.0\.embedding\.band: unknown key")):
        with pytest.raises(ConfigError, match=msg):
            _view(**bad)


def test_default_encoder_is_a_linear_head_on_the_vector():
    from torch import nn

    from geoembed.nn import views as nn_views

    assert nn_views.resolve_encoder("auto", "embedding") == "embedding"
    enc = nn_views.build_view_encoder({"embedding": (12,)}, out_dim=5, kind="embedding", hidden=(64,))
    linears = [m for m in enc.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(12, 5)] and enc.out_dim == 5
    with pytest.raises(ConfigError, match=r"'embedding' takes \(D,\) vectors.*'chips': \(3, 8, 8\)"):
        nn_views.build_view_encoder({"chips": (3, 8, 8)}, out_dim=5, encoder="embedding")


# ------------------------------------------------------------------------------------------ raster

@pytest.mark.parametrize("crs", [UTM, "EPSG:4326", "EPSG:3857"])
def test_int8_cog_dequantised_exactly_in_any_crs(tmp_path, crs):
    codes = _codes()
    path = _cog(tmp_path / "aef.tif", codes, crs=crs)
    with rasterio.open(path) as ds:
        assert ds.profile["tiled"] and ds.nodata == -128 and ds.dtypes[0] == "int8"
    rng = np.random.default_rng(1)
    rows = np.concatenate([rng.integers(0, 30, 40), [4, 12, 0, 29]])
    cols = np.concatenate([rng.integers(0, 40, 40), [6, 20, 0, 39]])
    lon, lat = _centres(crs, rows, cols)
    off_lon, off_lat = _centres(crs, [-3, 15], [20, 45])  # north of the raster; east of it
    store = _build(tmp_path, np.r_[lon, off_lon], np.r_[lat, off_lat], raster=str(path), dequantise="signed_square")
    e, valid = store.read("embedding"), store.read("valid")
    expect = _signed_square(codes[:, rows, cols].T).astype(np.float32)
    masked = (codes[0, rows, cols] == -128)
    assert masked.sum() >= 2 and valid.tolist() == (~masked).tolist() + [False, False]
    np.testing.assert_array_equal(e[:len(rows)][~masked], expect[~masked])
    assert np.isnan(e[~valid]).all() and e.dtype == np.float32 and store.arrays["embedding"].shape == (6,)
    assert store.attrs["nodata"] == [-128.0] * 6 and store.attrs["nodata_source"] == "file"
    assert store.attrs["dequantise"] == {"rule": "signed_square", "divisor": 127.5}
    assert len(store.stats["embedding"]["mean"]) == 6


def test_window_mean_of_dequantised_valid_samples(tmp_path):
    codes = _codes(bands=3)
    path = _cog(tmp_path / "aef.tif", codes)
    rows, cols = np.array([10, 5, 12, 0, 20]), np.array([10, 7, 20, 0, 30])  # plain; beside a mask; masked; corner
    lon, lat = _centres(UTM, rows, cols)
    store = _build(tmp_path, lon, lat, raster=str(path), dequantise="signed_square", window_px=3)
    assert store.attrs["window_spacing_m"] == pytest.approx(10.0, abs=0.01)
    e, valid = store.read("embedding"), store.read("valid")
    values = _signed_square(codes)
    values[:, codes[0] == -128] = np.nan
    padded = np.pad(values, ((0, 0), (1, 1), (1, 1)), constant_values=np.nan)  # off the raster: no sample
    for i, (r, c) in enumerate(zip(rows, cols, strict=True)):
        win = padded[:, r:r + 3, c:c + 3].reshape(3, 9)
        if np.isnan(values[0, r, c]):
            assert not valid[i] and np.isnan(e[i]).all()
            continue
        assert valid[i]
        np.testing.assert_allclose(e[i], np.nanmean(win, axis=1), rtol=1e-6, atol=1e-7)
    vf = store.read("valid_fraction")
    assert vf[0] == 1 and vf[1] == pytest.approx(8 / 9) and vf[3] == pytest.approx(4 / 9) and vf[2] == 0


def test_nodata_rules_and_linear_dequantise(tmp_path):
    codes = _codes(bands=2)
    # an int8 copy without any declared nodata: signed_square reads -128 as masked (the product's rule)
    bare = _cog(tmp_path / "bare.tif", codes, nodata=None)
    rows, cols = np.array([4, 1, 2]), np.array([6, 1, 2])
    lon, lat = _centres(UTM, rows, cols)
    store = _build(tmp_path, lon, lat, store="a", raster=str(bare), dequantise="signed_square")
    assert store.read("valid").tolist() == [False, True, True] and "default" in store.attrs["nodata_source"]
    # a configured nodata replaces it; a linear rule is exact too
    code = float(codes[0, 1, 1])
    store = _build(tmp_path, lon, lat, store="b", raster=str(bare), nodata=code,
                   dequantise={"scale": 0.25, "offset": -3.0})
    v = store.read("valid")
    assert store.attrs["nodata_source"] == "config" and not v[1] and v[0] and v[2]
    expect = (codes[:, rows, cols].T.astype(np.float64) * 0.25 - 3.0).astype(np.float32)
    np.testing.assert_array_equal(store.read("embedding")[[0, 2]], expect[[0, 2]])
    # a float raster holds values: read as they are; NaN and inf are invalid
    floats = codes.astype(np.float32) / 100
    floats[:, 1, 1] = np.nan
    floats[1, 2, 2] = np.inf
    fpath = _cog(tmp_path / "float.tif", floats, nodata=None)
    store = _build(tmp_path, *_centres(UTM, [1, 2, 3], [1, 2, 3]), store="c", raster=str(fpath), bands=[2, 1])
    assert store.read("valid").tolist() == [False, False, True]
    np.testing.assert_array_equal(store.read("embedding")[2], floats[[1, 0], 3, 3])
    # ... and de-quantising it is an error naming the file and the setting
    with pytest.raises(ConfigError, match=rf"dequantise is set but raster {fpath} holds float32 values"):
        _build(tmp_path, lon, lat, store="d", raster=str(fpath), dequantise={"scale": 2.0})
    u8 = _cog(tmp_path / "u8.tif", (codes.astype(np.int16) + 128).astype(np.uint8), nodata=None)
    with pytest.raises(ConfigError, match=rf"signed_square needs signed integer codes .* raster {u8} holds "
                                          "unsigned uint8"):
        _build(tmp_path, lon, lat, store="e", raster=str(u8), dequantise="signed_square")


def test_bad_rasters_and_a_changed_raster(tmp_path):
    codes = _codes(bands=3)
    lon, lat = _centres(UTM, [1, 2], [1, 2])
    nocrs = _cog(tmp_path / "nocrs.tif", codes, crs=None)
    with pytest.raises(InputError, match=rf"raster {nocrs} has no CRS"):
        _build(tmp_path, lon, lat, raster=str(nocrs))
    with pytest.raises(InputError, match="does not exist"):
        _build(tmp_path, lon, lat, raster=str(tmp_path / "missing.tif"))
    path = _cog(tmp_path / "aef.tif", codes)
    with pytest.raises(ConfigError, match=rf"view emb: bands = \[1, 4\] but raster {path} has bands 1\.\.3"):
        _build(tmp_path, lon, lat, raster=str(path), bands=[1, 4])
    first = _build(tmp_path, lon, lat, raster=str(path), dequantise="signed_square").read("embedding")
    _cog(tmp_path / "aef.tif", _codes(bands=3, seed=5))  # the teacher raster changes under the store
    with pytest.raises(InputError, match="--overwrite"):
        _build(tmp_path, lon, lat, raster=str(path), dequantise="signed_square")
    again = _build(tmp_path, lon, lat, raster=str(path), dequantise="signed_square", overwrite=True)
    assert not np.array_equal(again.read("embedding"), first)


# ------------------------------------------------------------------------------------------ bundle

def _olinda_points(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x0, y0, x1, y1 = OLINDA_BOX.bounds
    rng = np.random.default_rng(seed)
    return rng.uniform(x0, x1, n), rng.uniform(y0, y1, n)


def test_bundle_teacher_support_resume_and_a_changed_teacher(tmp_path, monkeypatch):
    bundle_dir = make_tiny_bundle(tmp_path / "teacher", seed=0, out_of_support_km=2.0)
    lon, lat = _olinda_points(60)
    far = 1.0 / 111.32 * 6  # about 6 km east of the box (support: 2 km)
    lon = np.r_[lon, OLINDA_BOX.bounds[2] + far, OLINDA_BOX.bounds[2] + 0.005]
    lat = np.r_[lat, -8.0, -8.0]  # the last one 0.5 km east of the box: within support
    store = _build(tmp_path, lon, lat, chunk=16, bundle=str(bundle_dir))
    teacher = load_bundle(bundle_dir)
    expect = teacher.embed(lon, lat)
    valid = store.read("valid")
    assert valid.tolist() == [True] * 60 + [False, True]
    np.testing.assert_array_equal(store.read("embedding")[valid], expect[valid])
    assert np.isnan(store.read("embedding")[~valid]).all()
    assert store.attrs["bundle_fingerprint"] == teacher.fingerprint and store.attrs["embedding_dim"] == 4
    kept = _build(tmp_path, lon, lat, store="keep", chunk=16, bundle=str(bundle_dir), outside_support="keep")
    assert kept.read("valid").all()
    np.testing.assert_array_equal(kept.read("embedding"), expect)

    # resumable: a lost chunk is computed again, alone; a complete store computes nothing
    calls = []
    real = emb_mod._bundle_chunk
    monkeypatch.setattr(emb_mod, "_bundle_chunk", lambda *a: calls.append(len(a[2])) or real(*a))
    (store.path / "_chunks" / "2.json").unlink()
    meta = json.loads((store.path / "meta.json").read_text())
    (store.path / "meta.json").write_text(json.dumps({**meta, "complete": False}))
    again = _build(tmp_path, lon, lat, chunk=16, bundle=str(bundle_dir))
    assert calls == [16]
    np.testing.assert_array_equal(again.read("embedding")[valid], expect[valid])
    calls.clear()
    _build(tmp_path, lon, lat, chunk=16, bundle=str(bundle_dir))
    assert calls == []

    # a retrained teacher (other weights) makes the store stale
    import shutil

    shutil.rmtree(bundle_dir)
    make_tiny_bundle(bundle_dir, seed=1, out_of_support_km=2.0)
    with pytest.raises(InputError, match="--overwrite"):
        _build(tmp_path, lon, lat, chunk=16, bundle=str(bundle_dir))
    new = _build(tmp_path, lon, lat, chunk=16, bundle=str(bundle_dir), overwrite=True)
    np.testing.assert_array_equal(new.read("embedding")[valid], load_bundle(bundle_dir).embed(lon, lat)[valid])


def test_bundle_path_that_is_no_bundle(tmp_path):
    lon, lat = _olinda_points(3)
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("not a bundle")
    for path, why in ((tmp_path / "empty", "a folder without geoembed.json, not a bundle"),
                      (tmp_path / "file.txt", "is a file, not a bundle folder"),
                      (tmp_path / "nowhere", "does not exist")):
        with pytest.raises(InputError, match=rf"view emb: bundle {path} is not a usable geoembed bundle: .*{why}"):
            _build(tmp_path, lon, lat, bundle=str(path))
    bad = make_tiny_bundle(tmp_path / "bad")
    (bad / "weights.safetensors").write_bytes(b"\x00" * 64)
    sealed = "weights.safetensors is not the weights file this bundle was sealed with"
    with pytest.raises(InputError, match=rf"bundle {bad} is not a usable .*{sealed}"):
        _build(tmp_path, lon, lat, bundle=str(bad))
    import torch
    from safetensors.torch import save_file

    other = make_tiny_bundle(tmp_path / "other")  # tensors of another shape than its spec says
    state = {k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) for k, v in load_bundle(other).encoder.state_dict().items()}
    save_file(state, str(other / "weights.safetensors"))
    with pytest.raises(InputError, match=rf"bundle {other} is not a usable .*{sealed}"):
        _build(tmp_path, lon, lat, bundle=str(other))
    assert not (tmp_path / "store").exists()  # nothing written that looks like a store


# ------------------------------------------------------------------------------------------ distillation

def _linear_r2(x: np.ndarray, y: np.ndarray) -> float:
    """Held-out R^2 of ``y`` from ``x`` by least squares: fitted on the first half, scored on the second."""
    a = np.column_stack([x, np.ones(len(x))])
    h = len(x) // 2
    coef, *_ = np.linalg.lstsq(a[:h], y[:h], rcond=None)
    resid = y[h:] - a[h:] @ coef
    return float(1.0 - (resid**2).sum() / ((y[h:] - y[h:].mean(0)) ** 2).sum())


def _train_section(views: list[dict], hidden: list[int], n_scales: int, epochs: int, objective: str) -> dict:
    return {"views": views,
            "coordinate_encoder": {"encodings": [{"type": "local_multiscale", "min_wavelength_m": 500,
                                                  "n_scales": n_scales}],
                                   "network": {"type": "mlp", "hidden": hidden}},
            "embedding_dim": 8, "fusion_hidden": 32, "objective": objective, "lr": 0.003, "batch_size": 128,
            "epochs": epochs, "patience": None, "val_fraction": 0.2, "jitter_m": 30, "device": "cpu",
            "num_threads": 1, "seed": 0}


def test_distillation_student_carries_the_teachers_signal(tmp_path):
    """Teacher: a bundle trained on a synthetic world (image chips of fields 0-2, a vector of fields
    10-13). Students: a smaller coordinate encoder trained on a raster of other fields (20-22), with and
    without an embedding view of the teacher. At fresh locations, the teacher's embedding is linearly
    predictable from the first student's, far better than from the second's."""
    from geoembed.build import build
    from geoembed.testing.worlds import LAT0, LON0, SyntheticView, make_world, smooth_field
    from geoembed.train import train

    extent = 5000.0
    tw = make_world(tmp_path / "teacher", {"img": SyntheticView(channels=3, chip=8, pixel_m=60.0),
                                           "tab": SyntheticView(kind="osm", channels=4, chip=None, first_field=10,
                                                                array="radius")}, n=1500, extent_m=extent)
    train(parse_config({"workdir": str(tw), "seed": 0, "train": _train_section(
        [{"view": "img", "out_dim": 16, "channels": [8, 16]}, {"view": "tab", "out_dim": 8}], [64, 64], 8, 10,
        "fused")}))
    teacher = load_bundle(tw / "bundle")

    lon1 = LON0 + extent / (111_320.0 * math.cos(math.radians(LAT0)))
    lat1 = LAT0 + extent / 111_320.0
    to_utm = Transformer.from_crs("EPSG:4326", UTM, always_xy=True)
    xs, ys = to_utm.transform([LON0 - 0.01, lon1 + 0.01], [LAT0 - 0.01, lat1 + 0.01])
    x0, y0 = math.floor(min(xs)), math.ceil(max(ys))
    w, h = int((max(xs) - x0) / 30) + 1, int((y0 - min(ys)) / 30) + 1
    gx, gy = np.meshgrid(np.arange(w) * 30.0, -np.arange(h) * 30.0)
    other = np.stack([smooth_field(gx, gy, c) for c in (20, 21, 22)]).astype(np.float32)
    raster = write_geotiff(tmp_path / "other.tif", other, crs=UTM, transform=from_origin(x0, y0, 30, 30))

    students = {}
    for with_teacher in (True, False):
        views = [{"kind": "raster", "name": "img", "sources": [str(raster)], "chip_size": 4, "resolution_m": 60}]
        encoders = [{"view": "img", "out_dim": 16, "channels": [8, 16]}]
        if with_teacher:
            views.append({"kind": "embedding", "name": "teacher", "bundle": str(tw / "bundle")})
            encoders.append({"view": "teacher", "out_dim": 16})  # encoder auto: the kind's linear head
        cfg = parse_config({
            "workdir": str(tmp_path / f"student_{with_teacher}"), "seed": 1, "dask": {"chunk_size": 512},
            "locations": {"region": {"bbox": [LON0, LAT0, lon1, lat1]}, "n": 1500, "block_size_m": 1000},
            "views": views, "train": _train_section(encoders, [32], 6, 20, "pairwise")})
        summary = build(cfg)
        if with_teacher:
            assert summary["views"]["teacher"]["valid"] == summary["locations"]["kept"] == 1500
            assert summary["views"]["teacher"]["arrays"] == {"embedding": [8]}
        train(cfg)
        students[with_teacher] = load_bundle(cfg.workdir_path / "bundle")
        assert students[with_teacher].meta["encoder"]["network"]["hidden"] == [32]

    rng = np.random.default_rng(7)  # fresh locations: none of them trained on
    lon, lat = rng.uniform(LON0, lon1, 2000), rng.uniform(LAT0, lat1, 2000)
    target = teacher.embed(lon, lat)
    r2_with = _linear_r2(students[True].embed(lon, lat), target)
    r2_without = _linear_r2(students[False].embed(lon, lat), target)
    assert r2_with > 0.6 and r2_with > r2_without + 0.3, (r2_with, r2_without)
