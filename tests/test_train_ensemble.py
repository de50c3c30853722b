"""``train.ensemble``: members trained on the same locations, aligned by Procrustes and averaged in one encoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import special_ortho_group

from geoembed.config import load_config, parse_config
from geoembed.errors import ConfigError
from geoembed.io.bundle import load_bundle
from geoembed.nn.ensemble import procrustes_rotations
from geoembed.nn.networks import build_coordinate_encoder, check_network_spec
from geoembed.testing.worlds import SyntheticView, make_world
from geoembed.train import train
from geoembed.train.ensemble import ENCODER_FILE, member_dir

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"


def test_procrustes_recovers_rotations_exactly():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(500, 6))
    qs = [special_ortho_group.rvs(6, random_state=s) for s in range(3)]
    rots, r2 = procrustes_rotations([base @ q for q in qs])
    aligned = [base @ q @ r for q, r in zip(qs, rots, strict=True)]
    for a in aligned[1:]:
        np.testing.assert_allclose(a, aligned[0], atol=1e-10)
    np.testing.assert_allclose(r2, 1.0, atol=1e-12)
    for r in rots:  # orthogonal
        np.testing.assert_allclose(r @ r.T, np.eye(6), atol=1e-12)


def test_procrustes_r2_low_for_unrelated_members():
    rng = np.random.default_rng(1)
    _, r2 = procrustes_rotations([rng.normal(size=(2000, 4)) for _ in range(3)])
    assert (r2 < 0.5).all()
    with pytest.raises(ValueError, match="same shape"):
        procrustes_rotations([np.zeros((5, 2)), np.zeros((5, 3))])


def test_ensemble_spec_errors_name_the_key():
    ok = {"type": "ensemble", "members": 2, "member": {"type": "mlp", "hidden": [8]}}
    check_network_spec(ok)
    with pytest.raises(ConfigError, match=r"member\.hiden"):
        check_network_spec({**ok, "member": {"type": "mlp", "hiden": [8]}})
    with pytest.raises(ConfigError, match="members"):
        build_coordinate_encoder({"encodings": [{"type": "spherical_harmonics", "degrees": 3}],
                                  "network": {**ok, "members": 1}, "embedding_dim": 4})
    with pytest.raises(ConfigError, match="cannot itself be an ensemble"):
        check_network_spec({**ok, "member": ok})


def test_ensemble_forward_is_the_mean_of_rotated_members():
    spec = {"encodings": [{"type": "spherical_harmonics", "degrees": 3}],
            "network": {"type": "ensemble", "members": 3, "member": {"type": "mlp", "hidden": [16]}},
            "embedding_dim": 4}
    torch.manual_seed(0)
    enc = build_coordinate_encoder(spec)
    rots = torch.as_tensor(np.stack([special_ortho_group.rvs(4, random_state=s) for s in range(3)]),
                           dtype=torch.float32)
    enc.network.rotations.copy_(rots)
    lon, lat = torch.tensor([10.0, -70.0, 150.0]), torch.tensor([45.0, -10.0, 0.0])
    with torch.no_grad():
        out = enc(lon=lon, lat=lat)
        members = []
        for k, net in enumerate(enc.network.nets):
            single = build_coordinate_encoder({**spec, "network": {"type": "mlp", "hidden": [16]}})
            single.network.load_state_dict(net.state_dict())
            members.append(single(lon=lon, lat=lat) @ rots[k])
    torch.testing.assert_close(out, torch.stack(members).mean(0), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    views = {"landsat": SyntheticView(channels=6, chip=16, pixel_m=30.0, invalid_frac=0.05),
             "dem": SyntheticView(channels=1, chip=8, pixel_m=90.0, first_field=6)}
    return make_world(tmp_path_factory.mktemp("ens_world") / "w", views, n=300, seed=5)


def _config(world: Path, workdir: Path, members: int):
    workdir.mkdir(parents=True, exist_ok=True)
    for name in ("locations.parquet", "views"):
        if not (workdir / name).exists():
            (workdir / name).symlink_to(world / name)
    data = load_config(DEMO).model_dump(mode="json")
    data["workdir"] = str(workdir)
    data["train"].update(epochs=2, batch_size=64, ensemble=members)
    return parse_config(data)


def test_ensemble_training_bundle_and_resume(world, tmp_path):
    wd = tmp_path / "run"
    cfg = _config(world, wd, 3)
    # A killed run (each invocation stops after one epoch of a member): member 0 is interrupted, then
    # finishes, then member 1 is interrupted.
    assert train(cfg, stop_after_epochs=1)["stopped"] == "interrupted"
    assert not (member_dir(wd / "train", 0) / ENCODER_FILE).exists()
    assert train(cfg, stop_after_epochs=1)["stopped"] == "interrupted"
    assert (member_dir(wd / "train", 0) / ENCODER_FILE).is_file()
    assert not (member_dir(wd / "train", 1) / ENCODER_FILE).exists()
    kept = (member_dir(wd / "train", 0) / ENCODER_FILE).stat().st_mtime_ns
    summary = train(cfg)
    assert (member_dir(wd / "train", 0) / ENCODER_FILE).stat().st_mtime_ns == kept  # reused, not retrained
    bundle = load_bundle(summary["bundle"])
    metrics = json.loads((Path(summary["bundle"]) / "metrics.json").read_text())
    ens = metrics["ensemble"]
    assert ens["members"] == 3 and [m["seed"] for m in ens["member_metrics"]] == [0, 1, 2]
    assert all(0 < r <= 1 for r in ens["alignment_r2"])
    assert metrics["val_top5"] == pytest.approx(np.mean([m["val_top5"] for m in ens["member_metrics"]]))
    assert bundle.meta["encoder"]["network"]["type"] == "ensemble"
    # the bundle embeds like the mean of its members' aligned encoders
    from geoembed.train.checkpoint import member_fingerprint
    from geoembed.train.data import load_training_data
    from geoembed.train.ensemble import _load_finished

    lon = np.linspace(-34.9, -34.83, 64)
    lat = np.linspace(-8.04, -7.96, 64)
    data_fp = load_training_data(cfg, device="cpu").fingerprint
    members = [_load_finished(member_dir(wd / "train", k), member_fingerprint(cfg, data_fp, 0, k))[0]
               for k in range(3)]
    rots = bundle.encoder.network.rotations.numpy()
    outs = [m(lon=torch.from_numpy(lon), lat=torch.from_numpy(lat)).detach().numpy() @ rots[k]
            for k, m in enumerate(members)]
    np.testing.assert_allclose(bundle.embed(lon, lat), np.mean(outs, axis=0), rtol=1e-4, atol=1e-5)
    # member 0 is the single run with the same seed, bit for bit
    single = train(_config(world, tmp_path / "single", 1))
    one = load_bundle(single["bundle"])
    ref = one.embed(lon, lat)
    with torch.inference_mode():  # the same call as Bundle.embed (64 rows or more: no padding)
        m0 = members[0](lon=torch.from_numpy(lon), lat=torch.from_numpy(lat)).numpy()
    np.testing.assert_array_equal(m0, ref)
    # up to date on a rerun; other settings refuse the members' checkpoints without --overwrite
    assert train(cfg)["stopped"] == "up_to_date"
    other = _config(world, wd, 3)
    other.train.lr = 0.002
    with pytest.raises(ConfigError, match="other settings"):
        train(other)


def test_members_in_processes_equal_members_one_at_a_time(world, tmp_path):
    from safetensors.torch import load_file

    seq = train(_config(world, tmp_path / "seq", 2))
    cfg = _config(world, tmp_path / "par", 2)
    cfg.train.ensemble_jobs = 2
    par = train(cfg)
    a = load_file(str(Path(seq["bundle"]) / "weights.safetensors"))
    b = load_file(str(Path(par["bundle"]) / "weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # ensemble_jobs is not a setting of the run: the sequential bundle is up to date for it
    cfg_seq = _config(world, tmp_path / "seq", 2)
    cfg_seq.train.ensemble_jobs = 2
    assert train(cfg_seq)["stopped"] == "up_to_date"


def test_more_members_reuse_the_finished_ones(world, tmp_path):
    """A member's fingerprint leaves out K: raising ensemble from 2 to 3 trains only the third member."""
    wd = tmp_path / "grow"
    two = train(_config(world, wd, 2))
    at = (np.array([-34.88, -34.86]), np.array([-8.02, -8.0]))
    emb_two = load_bundle(two["bundle"]).embed(*at)
    kept = [(member_dir(wd / "train", k) / ENCODER_FILE).stat().st_mtime_ns for k in range(2)]
    three = train(_config(world, wd, 3))
    assert three["stopped"] != "up_to_date" and three["bundle"] == two["bundle"]
    assert [(member_dir(wd / "train", k) / ENCODER_FILE).stat().st_mtime_ns for k in range(2)] == kept
    metrics = json.loads((Path(three["bundle"]) / "metrics.json").read_text())
    assert [m["seed"] for m in metrics["ensemble"]["member_metrics"]] == [0, 1, 2]
    assert not np.array_equal(load_bundle(three["bundle"]).embed(*at), emb_two)
    # and back to 2: the first two members again, aligned as before
    again = train(_config(world, wd, 2))
    np.testing.assert_array_equal(load_bundle(again["bundle"]).embed(*at), emb_two)


def test_members_written_before_the_fingerprint_left_out_k_are_reused(world, tmp_path):
    """Members (and their checkpoints) stamped with the older ``<run fingerprint>-member<k>`` are still
    reused by a run with the same K."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from geoembed.train.checkpoint import legacy_member_fingerprint

    wd = tmp_path / "old"
    first = train(_config(world, wd, 2))
    run_fp = json.loads((Path(first["bundle"]) / "metrics.json").read_text())["run_fingerprint"]
    for k in range(2):  # stamp them as the older version did
        folder = member_dir(wd / "train", k)
        path = folder / ENCODER_FILE
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata())
        meta["fingerprint"] = legacy_member_fingerprint(run_fp, k)
        save_file(load_file(str(path)), str(path), metadata=meta)
        state = folder / "checkpoint" / "state.json"
        state.write_text(json.dumps({**json.loads(state.read_text()), "fingerprint": meta["fingerprint"]}))
    kept = [(member_dir(wd / "train", k) / ENCODER_FILE).stat().st_mtime_ns for k in range(2)]
    shutil.rmtree(Path(first["bundle"]))
    again = train(_config(world, wd, 2))
    assert again["stopped"] != "up_to_date"
    assert [(member_dir(wd / "train", k) / ENCODER_FILE).stat().st_mtime_ns for k in range(2)] == kept
    assert [m["seed"] for m in json.loads((Path(again["bundle"]) / "metrics.json").read_text())
            ["ensemble"]["member_metrics"]] == [0, 1]
