"""Bundles validated and sealed (issue 13, item 6): every geoembed.json field checked for type and range,
an edited field or swapped weights refused by the seal, non-finite weights refused, non-finite embeddings
flagged and counted as invalid rows, and a --bundle that is no bundle folder said so: each an error that
names the file and the key, printed by the CLI as one line without a traceback."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely
import torch

import geoembed
from geoembed.cli import main
from geoembed.errors import InputError
from geoembed.io.bundle import build_coordinate_encoder, load_bundle, save_bundle
from geoembed.io.seal import legacy_fingerprint, make_seal
from geoembed.testing.bundles import OLINDA_BOX, TINY_SPEC, make_tiny_bundle

CARD = {"source": "a test", "version": "1", "licence": "CC0", "training_data": "none", "output_dim": 4,
        "effective_resolution": "about 300 m"}


def _edit(path: Path, change: Callable[[dict], object]) -> None:
    """Apply ``change`` to the parsed geoembed.json (in place, or return a replacement) and write it."""
    meta = json.loads((path / "geoembed.json").read_text())
    out = change(meta)
    (path / "geoembed.json").write_text(json.dumps(meta if out is None else out, indent=1))


def _cli_error(capsys, *argv: str) -> str:
    """Run the CLI in-process; it must fail with exactly one ``error:`` line and no traceback."""
    assert main(list(argv)) == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and ": error: " in lines[0] and "Traceback" not in err, err
    return lines[0]


def _drop(key: str):
    def change(meta):
        del meta[key]
    return change


def _set(*keys, value):
    def change(meta):
        d = meta
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return change


# (key path in the error, the edit, what the error says after the key)
BAD_FIELDS = [
    ("embedding_dim", _set("embedding_dim", value="4"), r'expected a positive integer, got "4"'),
    ("embedding_dim", _set("embedding_dim", value=0), r"expected a positive integer, got 0"),
    ("embedding_dim", _set("embedding_dim", value=8), r"8 is not the encoder's output dimension 4"),
    ("embedding_dim", _set("embedding_dim", value=4.0), r"expected a positive integer, got 4\.0"),
    ("out_of_support_km", _set("out_of_support_km", value="2"), r'expected a finite number >= 0, got "2"'),
    ("out_of_support_km", _set("out_of_support_km", value=-1.0), r"expected a finite number >= 0, got -1\.0"),
    ("out_of_support_km", _set("out_of_support_km", value=float("inf")), r"got Infinity"),
    ("out_of_support_km", _set("out_of_support_km", value=True), r"got true"),
    ("schema_version", _set("schema_version", value="2"), r'expected an integer, got "2"'),
    ("schema_version", _set("schema_version", value=7), r"bundle schema 7 is not one this geoembed reads"),
    ("footprint", _set("footprint", value=[[-34.9, -8.0], [-34.8, -7.9]]), r"expected a JSON object, got \["),
    ("footprint.type", _set("footprint", "type", value="Point"), r'expected "Polygon" or "MultiPolygon"'),
    ("footprint.coordinates[0]", _set("footprint", "coordinates", value=[[[-34.9, -8.0], [-34.8, -7.9]]]),
     r"expected a ring of at least 4 \[lon, lat\] positions"),
    ("footprint.coordinates[0][1]", lambda m: m["footprint"]["coordinates"][0].__setitem__(1, [200.0, -8.0]),
     r"is not \[lon, lat\] in degrees"),
    ("footprint.coordinates[0][2]", lambda m: m["footprint"]["coordinates"][0].__setitem__(2, ["-34.8", -8.0]),
     r"expected a \[lon, lat\] pair of finite numbers"),
    ("footprint.coordinates[0]", lambda m: m["footprint"]["coordinates"][0].__setitem__(-1, [-34.85, -8.0]),
     r"the ring is not closed"),
    ("footprint", _set("footprint", value={"type": "Polygon", "coordinates": [  # a bow tie
        [[-34.9, -8.0], [-34.8, -7.9], [-34.8, -8.0], [-34.9, -7.9], [-34.9, -8.0]]]}), r"not a valid polygon"),
    ("encoder", _set("encoder", value=[TINY_SPEC]), r"expected an object \(a coordinate encoder spec\)"),
    ("encoder.encodings[0].n_scales", _set("encoder", "encodings", 0, "n_scales", value="4"),
     r'expected an integer, got "4"'),
    ("encoder.encodings[0].center_lat", _set("encoder", "encodings", 0, "center_lat", value=None),
     r"expected a finite number, got null"),
    ("encoder.encodings[0].type", _set("encoder", "encodings", 0, "type", value="fourier"),
     r'unknown encoding type "fourier"'),
    ("encoder.encodings[0].wavelength", _set("encoder", "encodings", 0, "wavelength", value=3.0),
     r"unknown setting of the local_multiscale encoding"),
    ("encoder.network", _set("encoder", "network", value="mlp"), r'expected an object \(a network spec\), got "mlp"'),
    ("encoder.network.hidden", _set("encoder", "network", "hidden", value="16"), r'expected a list, got "16"'),
    ("encoder.network.hidden[0]", _set("encoder", "network", "hidden", value=[True]), r"expected an integer, got true"),
    ("encoder.embedding_dim", _set("encoder", "embedding_dim", value="4"), r'expected a positive integer, got "4"'),
    ("encoder.dtype", _set("encoder", "dtype", value="float16"), r'expected "float32" or "float64"'),
    ("coordinate_order", _set("coordinate_order", value=["lat", "lon"]), r'expected \["lon", "lat"\]'),
    ("crs", _set("crs", value="EPSG:3857"), r'expected "EPSG:4326"'),
    ("normalisation", lambda m: m["normalisation"]["encoding_0"].__setitem__("center_lon", 0.0),
     r"does not match the encoder spec's constants"),
    ("normalisation", _set("normalisation", value=[]), r"expected a JSON object, got \[\]"),
    ("data_fingerprint", _set("data_fingerprint", value=5), r"expected a string, got 5"),
    ("model_card", _set("model_card", value=[CARD]), r"must be a mapping of fields, got list"),
    ("model_card", _set("model_card", value={k: v for k, v in CARD.items() if k != "licence"}),
     r"lacks the field 'licence'"),
    ("model_card.output_dim", _set("model_card", value={**CARD, "output_dim": 8}),
     r"8 is not the encoder's output dimension 4"),
    ("reduction", _set("reduction", value="pca"), r'expected a JSON object, got "pca"'),
    ("raw_embedding_dim", _set("raw_embedding_dim", value=4), r"set, but the bundle has no reduction"),
    ("colour", _set("colour", value="blue"), r"unknown key \(a bundle has schema_version"),
    ("footprint", _drop("footprint"), r"missing"),
    ("seal", _drop("seal"), r"missing \(schema 2 bundles are sealed\)"),
    ("seal", _set("seal", value="sealed"), r"expected a JSON object; the seal is written by geoembed"),
    ("seal", _set("seal", "algorithm", value="md5"), r"unknown algorithm 'md5'"),
    ("(top level)", lambda m: [m], r"expected a JSON object, got \["),
]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("pristine") / "bundle")


@pytest.fixture
def tiny(pristine, tmp_path) -> Path:
    """A fresh copy of a valid sealed bundle, to corrupt."""
    import shutil

    return Path(shutil.copytree(pristine, tmp_path / "bundle"))


@pytest.mark.parametrize(("key", "change", "problem"), BAD_FIELDS, ids=[f"{k}:{p[:24]}" for k, _, p in BAD_FIELDS])
def test_each_bad_field_names_the_file_and_the_key(tiny, capsys, key, change, problem):
    _edit(tiny, change)
    head = f"bundle {tiny / 'geoembed.json'}: {key}: "
    with pytest.raises(InputError) as err:
        load_bundle(tiny)
    assert str(err.value).startswith(head), str(err.value)
    assert re.search(problem, str(err.value)[len(head):]), str(err.value)
    line = _cli_error(capsys, "inspect", str(tiny))
    assert line.startswith(f"geoembed inspect: error: {head}")


def test_the_seal_refuses_edited_fields_and_swapped_weights(tiny, tmp_path, capsys):
    good = (tiny / "geoembed.json").read_text()
    fingerprint = load_bundle(tiny).fingerprint
    # Re-indenting changes nothing (the seal hashes canonical JSON): same fingerprint.
    (tiny / "geoembed.json").write_text(json.dumps(json.loads(good), indent=4, sort_keys=True))
    assert load_bundle(tiny).fingerprint == fingerprint
    # Edits of the right type and range that would change outputs silently: each refused by name.
    edits = [
        (_set("encoder", "network", "activation", value="tanh"), "edited: encoder"),  # same weights' shapes
        (_set("out_of_support_km", value=50.0), "edited: out_of_support_km"),
        (_set("footprint", value=shapely.geometry.mapping(shapely.box(-35, -8.1, -34.8, -7.9))),
         "edited: footprint"),
        (_set("data_fingerprint", value="other"), "edited: data_fingerprint"),
        (_set("model_card", value=CARD), "added: model_card"),
    ]
    for change, what in edits:
        (tiny / "geoembed.json").write_text(good)
        _edit(tiny, change)
        with pytest.raises(InputError, match=rf"^bundle {tiny / 'geoembed.json'} was changed after the bundle "
                                             rf"was sealed \({what}\).*rebuild the bundle"):
            load_bundle(tiny)
        assert "was changed after the bundle was sealed" in _cli_error(capsys, "inspect", str(tiny))
    # Weights of another bundle of the same spec (they would load and embed, differently).
    (tiny / "geoembed.json").write_text(good)
    other = make_tiny_bundle(tmp_path / "other", seed=1)
    (tiny / "weights.safetensors").write_bytes((other / "weights.safetensors").read_bytes())
    with pytest.raises(InputError, match=rf"^bundle {tiny}: weights.safetensors is not the weights file this "
                                         rf"bundle was sealed with .*swapped or edited weights"):
        load_bundle(tiny)
    assert "weights.safetensors is not the weights file" in _cli_error(capsys, "inspect", str(tiny))


def test_an_edited_model_card_is_refused(tmp_path):
    torch.manual_seed(0)
    enc = build_coordinate_encoder(TINY_SPEC)
    path = save_bundle(tmp_path / "carded", enc, enc.spec, footprint=OLINDA_BOX, out_of_support_km=2.0, config={},
                       metrics={}, data_fingerprint="x", card=CARD)
    assert load_bundle(path).card == CARD
    _edit(path, _set("model_card", "licence", value="MIT"))
    with pytest.raises(InputError, match=r"sealed \(edited: model_card\)"):
        load_bundle(path)
    _edit(path, _drop("model_card"))
    with pytest.raises(InputError, match=r"sealed \(removed: model_card\)"):
        load_bundle(path)


def test_bundles_from_before_the_seal_load_with_one_warning(tiny, caplog):
    """Schema 1 (no seal): accepted, with a warning once per folder, and its earlier fingerprint."""
    _edit(tiny, lambda m: {**{k: v for k, v in m.items() if k != "seal"}, "schema_version": 1})
    with caplog.at_level(logging.WARNING, logger="geoembed.io.seal"):
        b = load_bundle(tiny)
        load_bundle(tiny)
    warned = [r for r in caplog.records if "written before bundles were sealed" in r.getMessage()]
    assert len(warned) == 1 and str(tiny) in warned[0].getMessage()
    assert b.fingerprint == legacy_fingerprint((tiny / "weights.safetensors").read_bytes(),
                                               (tiny / "geoembed.json").read_bytes())
    # Type and range checks apply to them too (ranges of the spec: by the constructors, naming the key).
    _edit(tiny, _set("encoder", "encodings", 0, "n_directions", value=0))
    with pytest.raises(InputError, match=r"geoembed\.json: encoder\.encodings\[0\]: local encoding needs n_scales "
                                         r">= 1 and n_directions >= 1"):
        load_bundle(tiny)
    _edit(tiny, _set("embedding_dim", value="4"))
    with pytest.raises(InputError, match=r"geoembed\.json: embedding_dim: expected a positive integer"):
        load_bundle(tiny)


def test_non_finite_weights_are_refused_naming_the_tensor(tiny, tmp_path):
    from safetensors.torch import load, save

    enc = build_coordinate_encoder(TINY_SPEC)
    with torch.no_grad():
        enc.network.net[0].weight[0, 0] = float("nan")
    with pytest.raises(InputError, match=r"the tensor 'network\.net\.0\.weight' holds NaN or infinite values"):
        save_bundle(tmp_path / "nan", enc, enc.spec, footprint=OLINDA_BOX, out_of_support_km=2.0, config={},
                    metrics={}, data_fingerprint="x")
    assert not (tmp_path / "nan").exists()
    # A bundle written elsewhere whose seal matches NaN weights: refused at load all the same.
    state = load((tiny / "weights.safetensors").read_bytes())
    state["network.net.2.bias"][1] = float("inf")
    weights = save(state, metadata={"format": "pt"})
    (tiny / "weights.safetensors").write_bytes(weights)
    _edit(tiny, lambda m: m.__setitem__("seal", make_seal(m, weights)))
    with pytest.raises(InputError, match=rf"^bundle {tiny / 'weights.safetensors'}: the tensor 'network\.net\.2\.bias' "
                                         rf"holds NaN or infinite values"):
        load_bundle(tiny)
    # Likewise tensors of another dtype than the spec's (loading would cast them silently).
    state["network.net.2.bias"][1] = 0.0
    state["network.net.2.bias"] = state["network.net.2.bias"].double()
    weights = save(state, metadata={"format": "pt"})
    (tiny / "weights.safetensors").write_bytes(weights)
    _edit(tiny, lambda m: m.__setitem__("seal", make_seal(m, weights)))
    with pytest.raises(InputError, match=r"the tensor 'network\.net\.2\.bias' is float64, the encoder spec's "
                                         r"dtype is float32"):
        load_bundle(tiny)


def test_save_checks_what_it_writes(tmp_path):
    enc = build_coordinate_encoder(TINY_SPEC)
    for kw, msg in (({"out_of_support_km": float("nan")}, r"Out of range float values|out_of_support_km"),
                    ({"out_of_support_km": -3.0}, r"out_of_support_km: expected a finite number >= 0"),
                    ({"footprint": shapely.box(-200, -8, -34, -7)}, r"footprint\.coordinates\[0\]\[\d\]: .* is not "
                                                                    r"\[lon, lat\]")):
        args = {"footprint": OLINDA_BOX, "out_of_support_km": 2.0, **kw}
        with pytest.raises(InputError, match=msg):
            save_bundle(tmp_path / "b", enc, enc.spec, config={}, metrics={}, data_fingerprint="x", **args)
        assert not (tmp_path / "b").exists()


# ------------------------------------------------------------------------------------------ not a bundle

def test_a_bundle_path_that_is_no_bundle_folder_says_so(tiny, tmp_path, capsys):
    from geoembed.enrich import LocationEmbedder

    run = tmp_path / "run"
    (run / "bundle").mkdir(parents=True)
    for name in ("geoembed.json", "weights.safetensors"):
        (run / "bundle" / name).write_bytes((tiny / name).read_bytes())
    (tmp_path / "empty").mkdir()
    df = pd.DataFrame({"lon": [-34.88, -34.87], "lat": [-8.0, -7.99]})
    df.to_csv(tmp_path / "in.csv", index=False)
    cases = [
        (tiny / "geoembed.json", rf"bundle {tiny / 'geoembed.json'} is a file, not a bundle folder .*: pass its "
                                 rf"folder {tiny}$"),
        (tmp_path / "in.csv", r"is a file, not a bundle folder \(a folder holding weights.safetensors \+ geoembed.json\)$"),
        (tmp_path / "nowhere", r"nowhere does not exist"),
        (tmp_path / "empty", r"empty is a folder without geoembed.json, not a bundle"),
        (run, rf"is a folder without geoembed.json, not a bundle .*the bundle of a run folder is {run / 'bundle'}"),
    ]
    for path, msg in cases:
        with pytest.raises(InputError, match=msg):
            load_bundle(path)
        with pytest.raises(InputError, match=msg):
            LocationEmbedder(bundle=str(path)).fit(df).transform(df)
        line = _cli_error(capsys, "enrich", "--bundle", str(path), "--input", str(tmp_path / "in.csv"),
                          "--output", str(tmp_path / "out.parquet"))
        assert re.search(msg, line), line
    assert "is a file, not a bundle folder" in _cli_error(capsys, "inspect", str(tiny / "weights.safetensors"))
    assert not (tmp_path / "out.parquet").exists()


def test_evaluate_with_a_bundle_that_is_a_file(tiny, tmp_path, capsys):
    import yaml

    from geoembed.evaluate.synthetic import make_risk_table

    make_risk_table(n=60, rate=3.0, seed=1).drop(columns=["true_mu"]).to_parquet(tmp_path / "t.parquet")
    cfg = {"workdir": "run", "evaluate": {"table": "t.parquet", "target": "y", "exposure": "exposure",
                                          "bundle": str(tiny / "geoembed.json"), "features": ["embeddings"],
                                          "models": ["glm"], "split": {"kind": "random", "n_folds": 2}}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    line = _cli_error(capsys, "evaluate", "-c", str(tmp_path / "cfg.yaml"), "--no-progress")
    assert f"bundle {tiny / 'geoembed.json'} is a file, not a bundle folder" in line


def test_the_cli_prints_one_error_line_in_a_subprocess(tiny, tmp_path):
    """The real command line: no traceback escapes, one ``error:`` line, exit status 1."""
    _edit(tiny, _set("embedding_dim", value="4"))
    pd.DataFrame({"lon": [-34.88], "lat": [-8.0]}).to_csv(tmp_path / "in.csv", index=False)
    root = Path(geoembed.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    for argv, expected in ((["inspect", str(tiny)], "embedding_dim: expected a positive integer, got \"4\""),
                           (["enrich", "--bundle", str(tiny / "geoembed.json"), "--input", str(tmp_path / "in.csv"),
                             "--output", str(tmp_path / "o.csv")], "is a file, not a bundle folder")):
        proc = subprocess.run([sys.executable, "-m", "geoembed.cli", *argv], capture_output=True, text=True,
                              env=env, timeout=300)
        errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert len(errors) == 1 and errors[0].startswith(f"geoembed {argv[0]}: error: ") and expected in errors[0]


# ------------------------------------------------------------------------------------------ non-finite outputs

def _overflowing_bundle(path: Path) -> Path:
    """A valid, sealed bundle (written by save_bundle) whose emb_0 overflows to inf east of the centre:
    one hidden unit is the projected x (m) / 20, the output weight on it 3e38."""
    torch.manual_seed(0)
    enc = build_coordinate_encoder(TINY_SPEC)
    n_in = enc.encoding.out_dim  # sin/cos features, then x / max_wavelength, y / max_wavelength
    with torch.no_grad():
        enc.network.net[0].weight[0] = 0.0
        enc.network.net[0].weight[0, n_in - 2] = 1000.0  # x / 20 km * 1000 = x / 20 m
        enc.network.net[0].bias[0] = 0.0
        enc.network.net[2].weight[0] = 0.0
        enc.network.net[2].weight[0, 0] = 3e38
    return save_bundle(path, enc, enc.spec, footprint=OLINDA_BOX, out_of_support_km=2.0, config={}, metrics={},
                       data_fingerprint="overflow")


def _table(tmp_path: Path) -> tuple[Path, np.ndarray]:
    lon = np.array([-34.90, -34.86, -34.88, -34.84, -34.89, -34.85, np.nan])
    lat = np.array([-8.00, -7.99, -7.98, -8.01, -7.97, -7.96, -8.0])
    pd.DataFrame({"id": range(len(lon)), "lon": lon, "lat": lat}).to_csv(tmp_path / "in.csv", index=False)
    east = lon > -34.87  # overflow there (the encoder's centre is -34.87)
    return tmp_path / "in.csv", east


def test_non_finite_embeddings_are_invalid_rows_never_0_invalid(tmp_path, capsys):
    from geoembed.enrich import LocationEmbedder, enrich_file, read_enrich_metadata

    path = _overflowing_bundle(tmp_path / "overflow")
    b = load_bundle(path)
    src, east = _table(tmp_path)
    raw = b.embed(pd.read_csv(src)["lon"], pd.read_csv(src)["lat"])
    assert (~np.isfinite(raw[east])).any(axis=1).all() and np.isfinite(raw[~east & np.isfinite(raw[:, 1])]).all()
    s = enrich_file(path, src, tmp_path / "out.parquet", on_invalid="null")
    assert s.invalid == 4 and s.by_reason == {"non_finite_embedding": 3, "missing": 1}
    assert "(4 invalid," in s.line()
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert out.loc[east, "geoembed_invalid"].eq("non_finite_embedding").all()
    assert out.loc[east, ["emb_0", "emb_1"]].isna().all().all()
    ok = ~east & out["lon"].notna().to_numpy()
    assert out.loc[ok, "geoembed_invalid"].isna().all() and np.isfinite(out.loc[ok, "emb_0"]).all()
    assert read_enrich_metadata(tmp_path / "out.parquet")["summary"]["by_reason"]["non_finite_embedding"] == 3
    # The default (on_invalid="error") refuses, listing the rows and why.
    pd.read_csv(src).dropna().to_csv(tmp_path / "finite.csv", index=False)
    with pytest.raises(InputError, match=r"(?s)3 of 6 rows are invalid \(non_finite_embedding: 3\).*\n  row 1: "
                                         r"non_finite_embedding \(lon='-34\.86'.*NaN or infinite embeddings"):
        enrich_file(path, tmp_path / "finite.csv", tmp_path / "err.parquet")
    assert not (tmp_path / "err.parquet").exists()
    # The CLI's summary says so, a CSV output too.
    assert main(["enrich", "--bundle", str(path), "--input", str(src), "--output", str(tmp_path / "o.csv"),
                 "--on-invalid", "null"]) == 0
    printed = capsys.readouterr().out
    assert "enriched 7 rows (4 invalid," in printed and "non_finite_embedding: 3" in printed
    # LocationEmbedder: NaN rows (null) or an error naming them.
    df = pd.read_csv(src).dropna()
    emb = LocationEmbedder(bundle=str(path), on_invalid="null").fit(df).transform(df)
    assert np.isnan(emb[east[:-1]]).all() and np.isfinite(emb[~east[:-1]]).all()
    with pytest.raises(InputError, match=r"3 of 6 rows are invalid \(non_finite_embedding: 3\)"):
        LocationEmbedder(bundle=str(path)).fit(df).transform(df)


def test_a_reduction_is_never_fitted_on_non_finite_embeddings(tmp_path):
    from geoembed.enrich.fit_reduction import fit_reduction_file

    path = _overflowing_bundle(tmp_path / "overflow")
    src, east = _table(tmp_path)
    pd.read_csv(src).dropna().to_csv(tmp_path / "finite.csv", index=False)
    red = fit_reduction_file(path, tmp_path / "finite.csv", tmp_path / "r.json", n_components=1, on_invalid="null")
    assert red.n_samples == 3 and red.info["invalid_skipped"] == 3 and np.isfinite(red.components).all()
    with pytest.raises(InputError, match=r"3 of 6 rows are invalid \(non_finite_embedding: 3\)"):
        fit_reduction_file(path, tmp_path / "finite.csv", tmp_path / "r2.json", n_components=1)
    assert not (tmp_path / "r2.json").exists()
