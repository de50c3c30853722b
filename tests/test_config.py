"""Config validation: unknown keys and wrong types are errors naming the key; paths resolve."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from geoembed.config import load_config, parse_config, save_resolved
from geoembed.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_demo_config_loads_and_resolves_paths():
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    assert [v.name for v in cfg.views] == ["landsat", "dem"]
    for v in cfg.views:
        assert all(Path(s).is_absolute() and Path(s).exists() for s in v.sources)
    assert Path(cfg.workdir).is_absolute()


def test_unknown_key_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"locations": {"region": {"bbox": [0, 0, 1, 1]}, "n": 5, "nn": 3}}))
    with pytest.raises(ConfigError, match=r"locations\.nn: unknown key"):
        load_config(p)


def test_unknown_key_in_view_is_named():
    with pytest.raises(ConfigError, match=r"views\.0\.raster\.chip_sise: unknown key"):
        parse_config({"views": [{"name": "a", "kind": "raster", "sources": ["x.tif"], "chip_sise": 3}]})


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"locations\.n"):
        parse_config({"locations": {"region": {"bbox": [0, 0, 1, 1]}, "n": "many"}})


def test_bad_region_and_duplicate_views():
    with pytest.raises(ConfigError, match="exactly one of bbox, polygon, raster"):
        parse_config({"locations": {"region": {"bbox": [0, 0, 1, 1], "raster": "a.tif"}, "n": 1}})
    with pytest.raises(ConfigError, match="bbox"):
        parse_config({"locations": {"region": {"bbox": [1, 0, 0, 1]}, "n": 1}})
    v = {"name": "a", "kind": "raster", "sources": ["x.tif"]}
    with pytest.raises(ConfigError, match="repeated"):
        parse_config({"views": [v, v]})


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    out = save_resolved(cfg, tmp_path / "resolved.yaml")
    again = load_config(out)
    assert again.model_dump() == cfg.model_dump()


def test_require_names_missing_sections():
    cfg = parse_config({})
    with pytest.raises(ConfigError, match="locations"):
        cfg.require("locations", "views")


@pytest.mark.parametrize("section,key,value", [
    ("locations", "n", "400"),             # a quoted number is text, not an integer
    ("locations", "n", True),              # YAML true is no count
    ("locations", "n", 400.5),             # a float is no integer
    ("locations", "block_size_m", True),   # nor a length
    ("locations", "block_size_m", "2000"),
])
def test_types_are_strict_and_name_the_key(tmp_path, section, key, value):
    data = {"locations": {"region": {"bbox": [0, 0, 1, 1]}, "n": 5}}
    data[section][key] = value
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=rf"{section}\.{key}: Input should be a valid"):
        load_config(p)


def test_yaml_types_that_are_legitimate_are_accepted(tmp_path):
    p = tmp_path / "c.yaml"
    # an integer where a float is expected, a sequence for a tuple (bbox), 1e-3 as a float (YAML 1.2)
    p.write_text("locations:\n  region: {bbox: [0, 0, 1, 1]}\n  n: 5\n  block_size_m: 1000\n"
                 "train:\n  lr: 1e-3\n")
    cfg = load_config(p)
    assert cfg.locations.block_size_m == 1000.0 and cfg.locations.region.bbox == (0.0, 0.0, 1.0, 1.0)
    assert cfg.train.lr == pytest.approx(1e-3)


def test_set_overrides_dotted_keys_with_yaml_values():
    demo = ROOT / "configs" / "demo.yaml"
    cfg = load_config(demo, settings=["train.ensemble=6", "train.views.0.out_dim=24", "seed=3",
                                      "evaluate.gbm.grid={num_leaves: [4, 7]}", "train.coordinate_encoder.network"
                                      ".hidden=[64, 64]"])
    assert cfg.train.ensemble == 6 and cfg.train.views[0].out_dim == 24 and cfg.seed == 3
    assert cfg.evaluate.gbm.grid == {"num_leaves": [4, 7]}
    assert cfg.train.coordinate_encoder.network.hidden == [64, 64]
    base = load_config(demo)
    assert cfg.workdir == base.workdir  # paths still resolve against the file
    assert base.train.ensemble == 2  # the file is not changed


@pytest.mark.parametrize("setting,message", [
    ("train.ensemble", r"--set 'train\.ensemble': give KEY=VALUE"),
    ("train..ensemble=3", "give KEY=VALUE"),
    ("train.views.7.out_dim=3", r"--set train\.views\.7\.out_dim: train\.views is a list of 2"),
    ("train.epochs.x=3", r"--set train\.epochs\.x: train\.epochs is a value \(12\), not a section"),
    ("train.epochz=3", r"train\.epochz: unknown key"),
    ("train.ensemble=[1", "not valid YAML"),
])
def test_set_errors_name_the_setting(setting, message):
    with pytest.raises(ConfigError, match=message):
        load_config(ROOT / "configs" / "demo.yaml", settings=[setting])


def test_set_on_the_command_line(tmp_path, capsys):
    from geoembed.cli import main

    assert main(["train", "-c", str(ROOT / "configs" / "demo.yaml"), "--set", "train.epochz=3"]) != 0
    err = capsys.readouterr().err
    assert "train.epochz: unknown key" in err and "--set train.epochz=3" in err and "Traceback" not in err


def test_set_paths_are_relative_to_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    demo = ROOT / "configs" / "demo.yaml"
    cfg = load_config(demo, settings=["enrich.input=mine/policies.csv", "workdir=runs/x"])
    assert cfg.enrich.input == str(tmp_path / "mine" / "policies.csv")
    assert Path(cfg.workdir) == tmp_path / "runs" / "x"
    base = load_config(demo)
    assert cfg.enrich.output == base.enrich.output  # the file's own paths: relative to the file, as before
    assert cfg.views[0].sources == base.views[0].sources
