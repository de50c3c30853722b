"""A PCA reduction shipped inside a bundle: fitted on reference locations with enrich's Reduction maths,
covered by the fingerprint, applied by Bundle.embed, enrich and LocationEmbedder; model cards."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import shapely

from geoembed.cli import main
from geoembed.errors import InputError
from geoembed.importers.reduce import ReductionRequest, reduce_bundle, reference_locations
from geoembed.io.bundle import load_bundle
from geoembed.io.reduction import Reduction
from geoembed.testing.bundles import OLINDA_BOX, make_tiny_bundle

BOX = tuple(float(v) for v in OLINDA_BOX.bounds)
CARD = {"source": "a test", "version": "1", "licence": "CC0", "training_data": "none",
        "effective_resolution": "about 300 m"}


@pytest.fixture
def tiny(tmp_path):
    return make_tiny_bundle(tmp_path / "tiny")


def test_same_maths_as_enrich_reduction(tiny, tmp_path):
    req = ReductionRequest(n_components=2, bbox=BOX, n=3000, seed=1)
    out = reduce_bundle(tiny, tmp_path / "reduced", req)
    src, red = load_bundle(tiny), load_bundle(out)
    assert red.embedding_dim == 2 and red.raw_embedding_dim == 4 and src.reduction is None
    lon, lat, info = reference_locations(req)
    assert len(lon) == 3000 and info["kind"] == "bbox" and OLINDA_BOX.buffer(1e-9).contains(
        shapely.MultiPoint(np.c_[lon, lat]))
    expected = Reduction.fit(src.embed(lon, lat), 2)
    np.testing.assert_allclose(red.reduction.components, expected.components, atol=1e-9)
    np.testing.assert_allclose(red.reduction.mean, expected.mean, atol=1e-9)
    rng = np.random.default_rng(0)
    q_lon, q_lat = rng.uniform(BOX[0], BOX[2], 500), rng.uniform(BOX[1], BOX[3], 500)
    got = red.embed(q_lon, q_lat)
    np.testing.assert_allclose(got, expected.transform(src.embed(q_lon, q_lat)), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(red.embed(q_lon, q_lat, raw=True), src.embed(q_lon, q_lat))
    np.testing.assert_allclose(red.embed(q_lon, q_lat, batch_size=7), got, rtol=1e-6, atol=1e-7)
    meta = red.meta["reduction"]
    assert meta["n_samples"] == 3000 and meta["info"]["reference"]["seed"] == 1
    assert meta["info"]["source_bundle"] == src.fingerprint
    assert 0 < sum(meta["explained_variance_ratio"]) <= 1 + 1e-9
    assert red.fingerprint != src.fingerprint


def test_whitened_components_have_unit_variance_on_the_reference(tiny, tmp_path):
    req = ReductionRequest(n_components=3, whiten=True, bbox=BOX, n=4000)
    red = load_bundle(reduce_bundle(tiny, tmp_path / "w", req))
    lon, lat, _ = reference_locations(req)
    z = red.embed(lon, lat).astype(np.float64)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=0, ddof=1), 1, rtol=1e-3)


def test_enrich_and_location_embedder_apply_it(tiny, tmp_path):
    from geoembed.enrich import LocationEmbedder, enrich_file

    red = load_bundle(reduce_bundle(tiny, tmp_path / "r", ReductionRequest(n_components=2, bbox=BOX, n=1000)))
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"lon": rng.uniform(BOX[0], BOX[2], 300), "lat": rng.uniform(BOX[1], BOX[3], 300),
                       "claims": rng.poisson(1, 300)})
    df.to_csv(tmp_path / "in.csv", index=False)
    enrich_file(red.path, tmp_path / "in.csv", tmp_path / "out.parquet")
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert [c for c in out.columns if c.startswith("emb_")] == ["emb_0", "emb_1"]
    np.testing.assert_allclose(out[["emb_0", "emb_1"]].to_numpy(), red.embed(df["lon"], df["lat"]), rtol=1e-6)
    emb = LocationEmbedder(str(red.path)).fit(df).transform(df)
    assert emb.shape == (300, 2)
    np.testing.assert_allclose(emb, red.embed(df["lon"], df["lat"]), rtol=1e-6)


def test_table_and_raster_references(tiny, tmp_path):
    from affine import Affine

    from geoembed.testing.rasters import write_geotiff

    rng = np.random.default_rng(4)
    pd.DataFrame({"x": rng.uniform(BOX[0], BOX[2], 400), "y": rng.uniform(BOX[1], BOX[3], 400)}).to_csv(
        tmp_path / "ref.csv", index=False)
    req = ReductionRequest(n_components=2, table=str(tmp_path / "ref.csv"), lon_col="x", lat_col="y")
    ref = load_bundle(reduce_bundle(tiny, tmp_path / "t", req)).meta["reduction"]
    assert ref["n_samples"] == 400 and ref["info"]["reference"]["kind"] == "table"
    assert ref["info"]["reference"]["fingerprint"].startswith("sha256:")
    tif = write_geotiff(tmp_path / "r.tif", np.ones((1, 20, 20), dtype="float32"), crs="EPSG:4326",
                        transform=Affine(0.002, 0, -34.9, 0, -0.002, -7.96))
    req = ReductionRequest(n_components=2, raster=str(tif), n=500)
    lon, lat, info = reference_locations(req)
    assert info["kind"] == "raster_footprint" and len(lon) == 500
    assert (lon >= -34.9).all() and (lon <= -34.86).all() and (lat <= -7.96).all() and (lat >= -8.0).all()


def test_seal_covers_the_reduction(tiny, tmp_path):
    """The reduction's arrays (in the weights file) and its description (in geoembed.json) are sealed.
    (Before the seal an edited array only changed the fingerprint; now it is refused.)"""
    from safetensors.torch import load_file, save_file

    path = reduce_bundle(tiny, tmp_path / "r", ReductionRequest(n_components=2, bbox=BOX, n=500))
    assert load_bundle(path).fingerprint != load_bundle(tiny).fingerprint
    good = (path / "weights.safetensors").read_bytes()
    state = load_file(path / "weights.safetensors")
    state["reduction.mean"] = state["reduction.mean"] + 1.0
    save_file(state, path / "weights.safetensors", metadata={"format": "pt"})
    with pytest.raises(InputError, match=r"weights\.safetensors is not the weights file this bundle was sealed"):
        load_bundle(path)
    (path / "weights.safetensors").write_bytes(good)
    meta = json.loads((path / "geoembed.json").read_text())
    edited = {**meta, "reduction": {**meta["reduction"], "method": "whiten"}}
    (path / "geoembed.json").write_text(json.dumps(edited))
    with pytest.raises(InputError, match=r"changed after the bundle was sealed \(edited: reduction\)"):
        load_bundle(path)
    (path / "geoembed.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "reduction"}))
    with pytest.raises(InputError, match=r"geoembed\.json: raw_embedding_dim: set, but the bundle has no reduction"):
        load_bundle(path)
    (path / "geoembed.json").write_text(json.dumps({**meta, "reduction": {"method": "pca", "n_components": 3}}))
    with pytest.raises(InputError, match=r"geoembed\.json: reduction\.raw_embedding_dim: missing"):
        load_bundle(path)
    # Before the seal (schema 1), the weights file's reduction tensors without a description still tell.
    legacy = {k: v for k, v in meta.items() if k not in ("seal", "reduction", "raw_embedding_dim")}
    (path / "geoembed.json").write_text(json.dumps({**legacy, "schema_version": 1, "embedding_dim": 4}))
    with pytest.raises(InputError, match=r"reduction is incomplete"):
        load_bundle(path)


def test_bad_requests(tiny, tmp_path):
    with pytest.raises(InputError, match=r"exactly one reference"):
        ReductionRequest(n_components=2, bbox=BOX, table="x.csv")
    with pytest.raises(InputError, match=r"exactly one reference"):
        ReductionRequest(n_components=2)
    with pytest.raises(InputError, match=r"--components 9 is more than the encoder's 4"):
        reduce_bundle(tiny, tmp_path / "a", ReductionRequest(n_components=9, bbox=BOX))
    pd.DataFrame({"lon": [-34.9, -34.85], "lat": [-8.0, -7.99]}).to_csv(tmp_path / "two.csv", index=False)
    with pytest.raises(InputError, match=r"reference has 2 location\(s\); a 2-component reduction needs more"):
        reduce_bundle(tiny, tmp_path / "a", ReductionRequest(n_components=2, table=str(tmp_path / "two.csv")))
    with pytest.raises(InputError, match=r"bad reduction reference: .*bbox"):
        reduce_bundle(tiny, tmp_path / "a", ReductionRequest(n_components=2, bbox=(10, 50, 5, 40)))
    assert not (tmp_path / "a").exists()
    with pytest.raises(InputError, match=r"already exists"):
        reduce_bundle(tiny, tiny, ReductionRequest(n_components=2, bbox=BOX, n=100))


def test_card_for_a_trained_bundle(tiny, tmp_path, capsys):
    import yaml

    (tmp_path / "card.yaml").write_text(yaml.safe_dump(CARD))
    out = tmp_path / "carded"
    assert main(["import", "bundle", str(tiny), "--output", str(out), "--card", str(tmp_path / "card.yaml"),
                 "--components", "2", "--reference-bbox", *map(str, BOX), "--reference-n", "500"]) == 0
    assert "reduced to 2 pca components" in capsys.readouterr().out
    b = load_bundle(out)
    assert b.card == {**CARD, "output_dim": 4} and b.embedding_dim == 2
    from geoembed.inspect import describe

    shown = describe(out)
    assert shown["model_card"]["licence"] == "CC0" and shown["reduction"]["n_components"] == 2
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({k: v for k, v in CARD.items() if k != "licence"}))
    assert main(["import", "bundle", str(tiny), "--output", str(tmp_path / "x"), "--card",
                 str(tmp_path / "bad.yaml")]) == 1
    assert "lacks the field 'licence'" in capsys.readouterr().err
    assert main(["import", "bundle", str(tiny), "--output", str(tmp_path / "x")]) == 1
    assert "nothing to change" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
