"""Bundle: atomic save, spec-only reload, identical embeddings, fingerprint, errors, no pickle."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
import torch

from geoembed.errors import InputError
from geoembed.io.bundle import build_coordinate_encoder, load_bundle, save_bundle, save_untrained_bundle

FOOTPRINT = shapely.box(-34.92, -8.04, -34.83, -7.95)
LOCAL = {
    "encodings": [{"type": "local_multiscale", "center_lon": -34.875, "center_lat": -7.995,
                   "min_wavelength_m": 200.0, "max_wavelength_m": 20000.0, "n_scales": 8,
                   "n_directions": 3, "include_xy": True}],
    "network": {"type": "mlp", "hidden": [32, 32], "activation": "relu"},
    "embedding_dim": 8,
}
GLOBAL = {
    "encodings": [{"type": "spherical_harmonics", "degrees": 10}],
    "network": {"type": "siren", "hidden": [32, 32], "w0": 30.0, "w0_hidden": 1.0},
    "embedding_dim": 4,
    "dtype": "float64",
}


@pytest.mark.parametrize("spec", [LOCAL, GLOBAL])
def test_save_load_identical_embeddings(tmp_path, spec):
    torch.manual_seed(0)
    enc = build_coordinate_encoder(spec)
    path = save_bundle(tmp_path / "b", enc, enc.spec, footprint=FOOTPRINT, out_of_support_km=3.0,
                       config={"seed": 0}, metrics={"val_top1": 0.5}, data_fingerprint="sha256:abc")
    assert sorted(p.name for p in path.iterdir()) == ["config.yaml", "geoembed.json", "metrics.json",
                                                      "weights.safetensors"]
    b = load_bundle(path)
    rng = np.random.default_rng(0)
    lon, lat = rng.uniform(-34.92, -34.83, 1000), rng.uniform(-8.04, -7.95, 1000)
    with torch.no_grad():
        ref = enc.eval()(lon=torch.from_numpy(lon), lat=torch.from_numpy(lat)).float().numpy()
    got = b.embed(lon, lat)
    assert got.shape == (1000, spec["embedding_dim"]) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)  # BLAS blocking may differ in the last bit
    np.testing.assert_array_equal(load_bundle(path).embed(lon, lat), got)  # reload: bit-identical
    np.testing.assert_allclose(b.embed(lon, lat, batch_size=7), got, rtol=1e-5, atol=1e-6)
    assert b.embedding_dim == spec["embedding_dim"] and b.coordinate_order == ("lon", "lat")
    assert b.out_of_support_km == 3.0 and b.footprint.equals(FOOTPRINT)
    assert b.metrics == {"val_top1": 0.5} and b.config == {"seed": 0}
    meta = json.loads((path / "geoembed.json").read_text())
    for key in ("schema_version", "encoder", "coordinate_order", "embedding_dim", "footprint",
                "normalisation", "data_fingerprint", "package_version", "out_of_support_km"):
        assert key in meta
    assert meta["coordinate_order"] == ["lon", "lat"]
    assert b.fingerprint.startswith("sha256:") and b.fingerprint == load_bundle(path).fingerprint
    assert not b.encoder.training
    # No pickle: the weights file is safetensors (JSON header), nothing else is binary.
    head = (path / "weights.safetensors").read_bytes()[8:9]
    assert head == b"{"


def test_untrained_bundle_and_nan_rows(tmp_path):
    b = load_bundle(save_untrained_bundle(tmp_path / "u", LOCAL, footprint=FOOTPRINT, seed=1))
    out = b.embed(np.array([-34.87, np.nan, -34.88]), np.array([-7.99, -7.99, np.inf]))
    assert np.isfinite(out[0]).all() and np.isnan(out[1:]).all()
    other = load_bundle(save_untrained_bundle(tmp_path / "v", LOCAL, footprint=FOOTPRINT, seed=2))
    assert other.fingerprint != b.fingerprint
    d = b.distance_to_footprint_km(np.array([-34.87, -34.83 + 0.09]), np.array([-7.99, -7.99]))
    assert d[0] == 0 and 9.0 < d[1] < 11.0  # 0.09 deg of longitude at 8 S is ~9.9 km


def test_swapped_coordinates_differ(tmp_path):
    b = load_bundle(save_untrained_bundle(tmp_path / "u", GLOBAL, footprint=FOOTPRINT))
    lon, lat = np.array([-34.87, 10.0]), np.array([-7.99, 50.0])
    assert np.abs(b.embed(lon, lat) - b.embed(lat, lon)).max() > 1e-4


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_bundle(tmp_path / "nope")
    path = save_untrained_bundle(tmp_path / "u", LOCAL, footprint=FOOTPRINT)
    (path / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(InputError, match="weights.safetensors"):
        load_bundle(path)
    path = save_untrained_bundle(tmp_path / "v", LOCAL, footprint=FOOTPRINT)
    meta = json.loads((path / "geoembed.json").read_text())
    meta["encoder"]["network"]["hidden"] = [16, 16]
    (path / "geoembed.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"changed after the bundle was sealed \(edited: encoder\)"):
        load_bundle(path)
    del meta["seal"]  # a bundle from before the seal: the weights' shapes still tell
    (path / "geoembed.json").write_text(json.dumps({**meta, "schema_version": 1}))
    with pytest.raises(InputError, match="do not match"):
        load_bundle(path)
    (path / "geoembed.json").unlink()
    with pytest.raises(InputError, match="geoembed.json"):
        load_bundle(path)
    with pytest.raises(InputError, match="lengths"):
        load_bundle(save_untrained_bundle(tmp_path / "w", LOCAL, footprint=FOOTPRINT)).embed(
            np.zeros(3), np.zeros(2))


def test_failed_save_leaves_no_bundle(tmp_path):
    enc = build_coordinate_encoder(LOCAL)
    with pytest.raises(ValueError):
        save_bundle(tmp_path / "b", enc, GLOBAL, footprint=FOOTPRINT, out_of_support_km=1.0, config={},
                    metrics={}, data_fingerprint="x")
    assert not (tmp_path / "b").exists()
    assert not list(tmp_path.iterdir())


def test_embedding_does_not_depend_on_batching(tmp_path):
    """Every encoder call is padded to a minimum size: a row's embedding is the same however it is split."""
    from geoembed.testing.bundles import make_tiny_bundle

    b = load_bundle(make_tiny_bundle(tmp_path / "b"))
    rng = np.random.default_rng(0)
    lon, lat = rng.uniform(-34.91, -34.83, 8195), rng.uniform(-8.03, -7.96, 8195)
    whole = b.embed(lon, lat)
    np.testing.assert_array_equal(whole, b.embed(lon, lat, batch_size=512))
    np.testing.assert_array_equal(whole[-3:], b.embed(lon[-3:], lat[-3:]))


def test_corrupt_side_files_are_named(tmp_path):
    from geoembed.testing.bundles import make_tiny_bundle

    path = make_tiny_bundle(tmp_path / "b")
    (path / "metrics.json").write_text("{not json")
    with pytest.raises(InputError, match=r"metrics\.json is not valid JSON"):
        load_bundle(path)
