"""geoembed import geoclip: equal to GeoCLIP's own LocationEncoder on the same weights; bad weight files."""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from geoembed.cli import main
from geoembed.errors import InputError
from geoembed.importers.geoclip import SIGMAS, expected_shapes, find_wheel_weights, import_geoclip
from geoembed.io.bundle import CARD_FIELDS, load_bundle
from geoembed.testing.geoclip import geoclip_location_encoder, geoclip_root

# GeoCLIP's own rff module decorates functions with torch.jit.script, deprecated in this torch.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
needs_wheel = pytest.mark.skipif(geoclip_root() is None, reason="the geoclip wheel is not installed "
                                 "(make install installs it: pip install --no-deps geoclip==1.3.0)")


def _coords(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    lon = rng.uniform(-180, 180, n)
    # Poles, the antimeridian from both sides, the origin, near-pole and near-seam rows.
    lat = np.r_[lat, 90, -90, 0, 0, 0, 89.9999, -89.9999, 45, -45, 51.5]
    lon = np.r_[lon, 0, 0, 180, -180, 0, 179.9999, -179.9999, 180, -180, -0.1]
    return lon, lat


@pytest.fixture(scope="module")
def geoclip_bundle(tmp_path_factory):
    return import_geoclip(tmp_path_factory.mktemp("gc") / "bundle")


@needs_wheel
def test_equals_geoclip_own_encoder(geoclip_bundle):
    ref_model = geoclip_location_encoder()
    assert "transformers" not in sys.modules  # GeoCLIP's package __init__ never ran
    lon, lat = _coords()
    with torch.inference_mode():
        ref = ref_model(torch.tensor(np.stack([lat, lon], axis=1), dtype=torch.float32)).numpy()
    bundle = load_bundle(geoclip_bundle)
    got = bundle.embed(lon, lat)
    assert got.shape == (len(lon), 512) and np.isfinite(got).all()
    assert np.abs(got - ref).max() <= 1e-4
    # Same operations in the same order: in practice equal to the last bit, whatever the chunking.
    assert np.abs(bundle.embed(lon, lat, batch_size=100) - ref).max() <= 1e-6
    # Coordinates are taken by name: swapping them changes the embedding.
    assert np.abs(bundle.embed(lat[:100], lon[:100]) - got[:100]).max() > 1e-3


@needs_wheel
def test_card_footprint_and_enrich(geoclip_bundle, tmp_path):
    from geoembed.enrich import LocationEmbedder

    bundle = load_bundle(geoclip_bundle)
    card = bundle.card
    for key in CARD_FIELDS:
        assert card[key]
    assert card["output_dim"] == 512 and card["licence"] == "MIT" and "1.3.0" in card["version"]
    assert 10 < card["effective_resolution_km"] < 60
    wheel_file, _, _ = find_wheel_weights()
    assert card["weights_sha256"] == bundle.meta["data_fingerprint"]
    from geoembed.io.seal import seal_fingerprint

    assert bundle.fingerprint == seal_fingerprint(bundle.meta["seal"])  # imported bundles are sealed
    assert wheel_file.name in card["source"]
    lon, lat = _coords(200, seed=1)
    assert (bundle.distance_to_footprint_km(lon, lat) == 0).all()  # global: nothing out of support
    lon, lat = lon[:200], lat[:200]  # the random rows (enrich refuses (0, 0) as a failed geocode)
    df = pd.DataFrame({"lat": lat, "lon": lon, "x": np.arange(len(lon))})
    emb = LocationEmbedder(str(geoclip_bundle)).fit(df).transform(df)
    np.testing.assert_array_equal(emb, bundle.embed(lon, lat).astype(np.float64))
    shown = json.loads(_inspect_json(geoclip_bundle))
    assert shown["model_card"]["output_dim"] == 512


def _inspect_json(path) -> str:
    from geoembed.inspect import describe

    return json.dumps(describe(path), default=str)


# ------------------------------------------------------------------------------------------ weight files
def _fake_weights(path, *, shapes=None, drop=None, extra=None, b_std=SIGMAS, seed=0):
    """A GeoCLIP-layout state dict that costs nothing to write: projections drawn with ``b_std``, every
    other tensor a broadcast constant (one stored element)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in (shapes or expected_shapes()).items():
        if key.endswith("capsule.0.b"):
            i = int(key[len("LocEnc")])
            state[key] = torch.randn(shape, generator=gen) * b_std[i]
        else:
            state[key] = torch.full((1,), 0.01).expand(shape)
    for key in drop or []:
        state.pop(key)
    state.update(extra or {})
    torch.save(state, path)
    return path


def test_weights_file_imports_and_matches_spec(tmp_path):
    w = _fake_weights(tmp_path / "w.pth")
    path = import_geoclip(tmp_path / "b", weights=w)
    b = load_bundle(path)
    assert b.embedding_dim == 512 and b.card["weights_sha256"].startswith("sha256:")
    assert "not recorded" in b.card["version"]
    out = b.embed(np.array([0.0, 10.0]), np.array([0.0, 20.0]))
    assert out.shape == (2, 512) and np.isfinite(out).all()


def _no_bundle(path: pathlib.Path) -> None:
    assert not path.exists() or not any(path.iterdir())
    leftovers = [p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}")]
    assert not leftovers


def test_wrong_shape_names_file_and_key(tmp_path):
    shapes = dict(expected_shapes())
    shapes["LocEnc1.capsule.3.weight"] = (1024, 1000)
    w = _fake_weights(tmp_path / "w.pth", shapes=shapes)
    with pytest.raises(InputError, match=r"w\.pth.*LocEnc1\.capsule\.3\.weight.*\(1024, 1000\)"):
        import_geoclip(tmp_path / "b", weights=w)
    _no_bundle(tmp_path / "b")


def test_missing_and_unexpected_keys(tmp_path):
    w = _fake_weights(tmp_path / "w.pth", drop=["LocEnc2.head.0.bias"])
    with pytest.raises(InputError, match=r"lacks .*LocEnc2\.head\.0\.bias"):
        import_geoclip(tmp_path / "b", weights=w)
    w = _fake_weights(tmp_path / "w2.pth", extra={"LocEnc3.capsule.0.b": torch.zeros(256, 2)})
    with pytest.raises(InputError, match=r"unexpected .*LocEnc3"):
        import_geoclip(tmp_path / "b", weights=w)
    _no_bundle(tmp_path / "b")


def test_wrong_sigma_is_refused(tmp_path):
    w = _fake_weights(tmp_path / "w.pth", b_std=(1.0, 16.0, 40.0))
    with pytest.raises(InputError, match=r"LocEnc2\.capsule\.0\.b has standard deviation .* sigma 256"):
        import_geoclip(tmp_path / "b", weights=w)


class Payload:
    """A pickled object where tensors are expected; unpickling it would create a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


class Plain:
    """An ordinary class instance pickled into a weight file."""

    def __init__(self):
        self.values = [1.0]


def test_pickled_object_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    w = tmp_path / "w.pth"
    torch.save({"LocEnc0.capsule.0.b": Payload(str(marker))}, w)
    assert not marker.exists()
    with pytest.raises(InputError, match=r"w\.pth holds a pickled object \(getattr\)"):
        import_geoclip(tmp_path / "b", weights=w)
    assert not marker.exists()
    torch.save({"LocEnc0.capsule.0.b": Plain()}, w)
    with pytest.raises(InputError, match=r"w\.pth holds a pickled object \([\w.]*Plain\)"):
        import_geoclip(tmp_path / "b", weights=w)
    _no_bundle(tmp_path / "b")


def test_non_tensor_value_and_not_a_file(tmp_path):
    w = tmp_path / "w.pth"
    torch.save({"LocEnc0.capsule.0.b": [1.0, 2.0]}, w)
    with pytest.raises(InputError, match=r"'LocEnc0\.capsule\.0\.b' holds a list, not a tensor"):
        import_geoclip(tmp_path / "b", weights=w)
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(InputError, match=r"junk\.pth is not a readable PyTorch file"):
        import_geoclip(tmp_path / "b", weights=tmp_path / "junk.pth")
    with pytest.raises(InputError, match=r"absent\.pth does not exist"):
        import_geoclip(tmp_path / "b", weights=tmp_path / "absent.pth")


def test_missing_wheel_without_weights(tmp_path, monkeypatch):
    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(InputError, match=r"not installed .*--no-deps geoclip==1\.3\.0.*--weights"):
        import_geoclip(tmp_path / "b")


def test_cli_errors_and_existing_output(tmp_path, capsys):
    w = _fake_weights(tmp_path / "w.pth")
    out = tmp_path / "b"
    assert main(["import", "geoclip", "--output", str(out), "--weights", str(w)]) == 0
    assert "512-d encoder" in capsys.readouterr().out
    assert main(["import", "geoclip", "--output", str(out), "--weights", str(w)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["import", "geoclip", "--output", str(out), "--weights", str(w), "--overwrite"]) == 0
    bad = _fake_weights(tmp_path / "bad.pth", drop=["LocEnc0.head.0.weight"])
    assert main(["import", "geoclip", "--output", str(tmp_path / "c"), "--weights", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "bad.pth" in err and "LocEnc0.head.0.weight" in err and "Traceback" not in err
    assert main(["import", "geoclip", "--output", str(tmp_path / "c"), "--weights", str(w), "--whiten"]) == 1
    assert "--components" in capsys.readouterr().err
