"""View kinds added from outside the core: registered by the test itself (or, for the README's example,
through an entry point), validated by the config, built by `geoembed build` (resumed after an
interruption), and trained on by `geoembed train` with the kind's own encoder."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import yaml
from pydantic import Field
from torch import nn

from geoembed.cli import main
from geoembed.config import parse_config
from geoembed.config.build import ViewConfig
from geoembed.errors import ConfigError
from geoembed.io.bundle import load_bundle
from geoembed.io.viewstore import ArraySpec, ViewStore
from geoembed.nn import views as nn_views
from geoembed.views import registry
from geoembed.views.base import Chunk, Resolved, View

ROOT = Path(__file__).resolve().parents[1]
BBOX = [-34.95, -8.05, -34.85, -7.95]  # Olinda; no raster needed: the kind has no footprint


class WavesConfig(ViewConfig):
    """sin/cos of the coordinates at a few wavelengths; no data north of ``max_lat``."""

    kind: Literal["waves"] = "waves"
    wavelengths_km: list[float] = Field(default_factory=lambda: [2.0, 5.0], min_length=1)
    max_lat: float = 90.0


class WavesView(View):
    kind = "waves"
    config_model = WavesConfig

    def resolve(self, lon: np.ndarray, lat: np.ndarray) -> Resolved:
        n = 4 * len(self.cfg.wavelengths_km)
        return Resolved(arrays={"waves": ArraySpec((n,), "float32")},
                        attrs={"wavelengths_km": self.cfg.wavelengths_km}, inputs={"version": 1})

    def prepare(self, resolved: Resolved, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        return 2 * np.pi * 111.32 / np.asarray(self.cfg.wavelengths_km)  # radians per degree

    def compute_chunk(self, prepared: np.ndarray, lon: np.ndarray, lat: np.ndarray) -> Chunk:
        a, b = lon[:, None] * prepared, lat[:, None] * prepared
        out = np.concatenate([np.sin(a), np.cos(a), np.sin(b), np.cos(b)], axis=1).astype(np.float32)
        valid = lat <= self.cfg.max_lat
        out[~valid] = np.nan
        return Chunk({"waves": out}, valid=valid)


class WavesEncoder(nn.Module):
    def __init__(self, n: int, out_dim: int):
        super().__init__()
        self.out_dim = out_dim
        self.net = nn.Sequential(nn.Linear(n, out_dim), nn.LayerNorm(out_dim))

    def forward(self, inputs):
        return self.net(inputs["waves"])


@pytest.fixture
def registries(monkeypatch):
    """Registrations made by a test are undone afterwards."""
    monkeypatch.setattr(registry, "_KINDS", dict(registry._KINDS))
    monkeypatch.setattr(nn_views, "_ENCODERS", dict(nn_views._ENCODERS))


def _train_section() -> dict:
    return {"coordinate_encoder": {"encodings": [{"type": "local_multiscale", "min_wavelength_m": 500,
                                                  "n_scales": 6}],
                                   "network": {"type": "mlp", "hidden": [32]}},
            "embedding_dim": 4, "fusion_hidden": 16, "batch_size": 64, "epochs": 2, "val_fraction": 0.2,
            "device": "cpu", "num_threads": 1, "seed": 0}


def _markers(store: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (store / "_chunks").glob("*.json")}


def test_registered_kind_builds_resumes_and_trains(tmp_path, registries, monkeypatch, capsys):
    built = []
    nn_views.register_encoder("waves_linear", lambda shapes, *, out_dim, channels, hidden:
                              built.append(shapes) or WavesEncoder(shapes["waves"][0], out_dim))
    registry.register_view_kind("waves", config=WavesConfig, view=WavesView, encoder="waves_linear")
    cfg = {"workdir": str(tmp_path / "run"), "seed": 0, "dask": {"chunk_size": 64},
           "locations": {"region": {"bbox": BBOX}, "n": 300, "block_size_m": 1000},
           "views": [{"kind": "waves", "name": "coords", "wavelengths_km": [2, 5, 9], "max_lat": -7.96}],
           "train": _train_section()}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["build", "-c", str(path)]) == 0
    assert "view coords (waves)" in capsys.readouterr().out
    out = tmp_path / "run" / "views" / "coords"
    store = ViewStore.open(out)
    assert store.meta["kind"] == "waves" and store.n_chunks == 5 and store.arrays["waves"].shape == (12,)
    locs = store.read_index()
    from geoembed.io.locations import read_locations

    ll = read_locations(tmp_path / "run" / "locations.parquet")
    ref = WavesView(parse_config(cfg).views[0])
    expect = ref.compute_chunk(ref.prepare(ref.resolve(ll["lon"], ll["lat"]), None, None),
                               ll["lon"].to_numpy(), ll["lat"].to_numpy())
    full = store.read("waves")
    np.testing.assert_array_equal(full, expect.arrays["waves"])
    np.testing.assert_array_equal(locs["valid"].to_numpy(), expect.valid)
    assert 0 < (~expect.valid).sum() < 300 and np.isnan(full[~expect.valid]).all()
    assert len(store.stats["waves"]["mean"]) == 12

    # an interrupted build (two chunks without markers, their rows garbage) resumes those chunks only
    calls = []
    real = WavesView.compute_chunk
    monkeypatch.setattr(WavesView, "compute_chunk", lambda self, p, lon, lat: calls.append(len(lon))
                        or real(self, p, lon, lat))
    for i in (1, 3):
        (out / "_chunks" / f"{i}.json").unlink()
    store._group("r+")["waves"][64:128] = 0.0
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "complete": False}))
    before = _markers(out)
    assert main(["build", "-c", str(path)]) == 0
    assert calls == [64, 64]
    assert all(_markers(out)[k] == v for k, v in before.items())
    again = ViewStore.open(out)
    np.testing.assert_array_equal(again.read("waves"), full)
    assert again.stats == store.stats
    calls.clear()
    assert main(["build", "-c", str(path)]) == 0 and calls == []
    # other settings on the same store: an error naming --overwrite
    cfg["views"][0]["max_lat"] = -7.97
    path.write_text(yaml.safe_dump(cfg))
    assert main(["build", "-c", str(path)]) == 1 and "--overwrite" in capsys.readouterr().err
    cfg["views"][0]["max_lat"] = -7.96
    path.write_text(yaml.safe_dump(cfg))

    # train: `encoder: auto` (no train.views) is the kind's encoder; a bundle comes out
    assert main(["train", "-c", str(path)]) == 0
    assert built == [{"waves": (12,)}]
    bundle = load_bundle(tmp_path / "run" / "bundle")
    emb = bundle.embed(ll["lon"].to_numpy()[:5], ll["lat"].to_numpy()[:5])
    assert emb.shape == (5, 4) and np.isfinite(emb).all()


def test_config_validation_through_the_registry(registries):
    registry.register_view_kind("waves", config=WavesConfig, view=WavesView, encoder="mlp")
    cfg = parse_config({"views": [{"kind": "waves", "name": "w", "wavelengths_km": [3]},
                                  {"kind": "raster", "name": "r", "sources": ["/x.tif"]}]})
    assert isinstance(cfg.views[0], WavesConfig) and cfg.views[0].wavelengths_km == [3.0]
    dumped = cfg.model_dump(mode="json")["views"]
    assert dumped[0]["max_lat"] == 90.0 and dumped[1]["chip_size"] == 16  # every field written out
    assert parse_config(cfg.model_dump(mode="json")).model_dump() == cfg.model_dump()
    with pytest.raises(ConfigError, match=r"views\.0\.waves\.wavelength: unknown key"):
        parse_config({"views": [{"kind": "waves", "name": "w", "wavelength": [3]}]})
    with pytest.raises(ConfigError, match=r"views\.0\.waves\.wavelengths_km"):
        parse_config({"views": [{"kind": "waves", "name": "w", "wavelengths_km": []}]})
    with pytest.raises(ConfigError, match=r"views\.0: unknown view kind 'wave' \(registered kinds: embedding, osm, "
                                          r"raster, waves\)"):
        parse_config({"views": [{"kind": "wave", "name": "w"}]})
    with pytest.raises(ConfigError, match=r"views\.0: a view needs a kind \(one of: embedding, osm, raster, "
                                          r"waves\)"):
        parse_config({"views": [{"name": "w"}]})
    with pytest.raises(ValueError, match="already registered"):
        registry.register_view_kind("waves", config=WavesConfig, view=WavesView, encoder="mlp")


def test_builtin_kinds_resolve_lazily_to_their_classes(registries):
    from geoembed.config.build import OsmViewConfig, RasterViewConfig
    from geoembed.views.driver import make_view
    from geoembed.views.embedding import EmbeddingView, EmbeddingViewConfig
    from geoembed.views.osm import OsmView
    from geoembed.views.raster import RasterView

    for kind, model, view, encoder in (("raster", RasterViewConfig, RasterView, "cnn"),
                                       ("osm", OsmViewConfig, OsmView, "hex"),
                                       ("embedding", EmbeddingViewConfig, EmbeddingView, "embedding")):
        entry = registry.view_kind(kind)
        assert (entry.config_model, entry.view_class, entry.encoder) == (model, view, encoder)
        assert view.kind == kind and view.config_model is model and entry.encoder in nn_views.encoder_names()
    registry.register_view_kind("waves", config=WavesConfig, view=RasterView, encoder="mlp")
    with pytest.raises(ConfigError, match="registered with RasterView, whose kind is 'raster'"):
        make_view(WavesConfig(name="w"))


def test_encoder_names_are_checked():
    with pytest.raises(ConfigError, match=r"train\.views\[v\]\.encoder: unknown view encoder 'nope' "
                                          r"\(registered: auto, by_shape, cnn, embedding, hex, mlp"):
        nn_views.build_view_encoder({"x": (3,)}, out_dim=4, encoder="nope", view="v")
    # auto: the store's kind's default (raster: CNN, osm: hex CNN), else by name and shape
    raster = nn_views.build_view_encoder({"chips": (2, 8, 8)}, out_dim=4, kind="raster")
    osm = nn_views.build_view_encoder({"hex": (3, 7, 7), "radius": (5,)}, out_dim=4, kind="osm")
    other = nn_views.build_view_encoder({"hex": (3, 7, 7)}, out_dim=4, kind=None)
    assert isinstance(raster.parts["chips"], nn_views.RasterCNN)
    assert isinstance(osm.parts["hex"], nn_views.HexEncoder) and isinstance(osm.parts["radius"], nn_views.TabularMLP)
    assert isinstance(other.parts["hex"], nn_views.HexEncoder)
    with pytest.raises(ValueError, match="reserved"):
        nn_views.register_encoder("auto", lambda *a, **k: None)


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Adding a view kind"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_through_the_cli_and_an_entry_point(tmp_path):
    """The README's example, installed as a plugin (entry point group geoembed.views), used by the
    `geoembed` command in a fresh process: build, then train with its encoder."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "my_views.py").write_text(_readme_example())
    dist = plugins / "my_views-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-views\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\nlandmarks = my_views\n")
    cfg = {"workdir": str(tmp_path / "run"), "seed": 0, "dask": {"chunk_size": 100},
           "locations": {"region": {"bbox": BBOX}, "n": 200, "block_size_m": 1000},
           "views": [{"kind": "landmarks", "name": "sites", "max_km": 7.0,
                      "landmarks": {"recife": [-34.88, -8.05], "olinda": [-34.855, -8.01]}}],
           "train": _train_section()}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {**os.environ, "GEOEMBED_NO_PROGRESS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(plugins)])}
    for command in ("build", "train"):
        r = subprocess.run([sys.executable, "-m", "geoembed.cli", command, "-c", str(path)], capture_output=True,
                           text=True, env=env, cwd=tmp_path, timeout=600)
        assert r.returncode == 0, r.stderr
    store = ViewStore.open(tmp_path / "run" / "views" / "sites")
    assert store.meta["kind"] == "landmarks" and store.attrs["landmarks"] == ["recife", "olinda"]
    d = store.read("distance_km")
    valid = store.read("valid")
    assert 0 < valid.sum() < 200 and np.isnan(d[~valid]).all() and (np.nanmin(d[valid], axis=1) <= 7.0).all()
    assert (tmp_path / "run" / "bundle" / "weights.safetensors").is_file()
    from safetensors import safe_open  # the trained model held the example's own encoder for the view

    keys = set()
    for state in (tmp_path / "run" / "train").rglob("*.safetensors"):
        with safe_open(str(state), "pt") as f:
            keys |= set(f.keys())
    assert any(k.endswith("views.sites.net.0.weight") for k in keys), sorted(keys)[:20]
