"""The multi-seed record the demo quotes (geoembed.seeds): keyed on the settings, not on paths or the seed."""

from __future__ import annotations

import json
from pathlib import Path

from geoembed.config import load_config, parse_config
from geoembed.seeds import record_seeds, seed_spread_lines, settings_key

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"


def _variant(**train):
    data = load_config(DEMO).model_dump(mode="json")
    data["train"].update(train)
    return parse_config(data)


def test_key_ignores_seed_workdir_and_cap_but_not_settings(tmp_path):
    base = load_config(DEMO)
    moved = load_config(DEMO).model_dump(mode="json")
    moved.update(seed=7, workdir=str(tmp_path / "elsewhere"))
    moved["evaluate"]["output"] = str(tmp_path / "r")
    assert settings_key(parse_config(moved)) == settings_key(base)
    assert settings_key(_variant(max_minutes=30)) == settings_key(base)
    assert settings_key(_variant(epochs=13)) != settings_key(base)
    assert settings_key(_variant(ensemble=3)) != settings_key(base)


def test_record_and_lines(tmp_path):
    cfg = load_config(DEMO)
    rows = [{"seed": s, "ratios": {"glm": 0.5 + 0.01 * s, "gam": 0.45, "gbm": 0.6 - 0.02 * s}} for s in range(4)]
    path = tmp_path / "q.json"
    rec = record_seeds(path, settings_key(cfg), "demo.yaml", rows, "python benchmarks/bench_quality.py")
    assert json.loads(path.read_text()) == {"records": [rec]}
    assert abs(rec["summary"]["glm"]["mean"] - 0.515) < 1e-12 and rec["summary"]["glm"]["worst"] == 0.53
    (line,) = seed_spread_lines(cfg, path)
    assert "Over 4 seeds" in line and "glm 0.515 +- 0.013 (worst 0.530)" in line
    (other,) = seed_spread_lines(_variant(epochs=13), path)
    assert "one seed's" in other and "no multi-seed record" in other
    assert "no multi-seed record" in seed_spread_lines(cfg, tmp_path / "missing.json")[0]


def test_records_of_other_settings_are_kept_and_ensemble_options_quoted(tmp_path):
    cfg = load_config(DEMO)
    path = tmp_path / "q.json"
    one = [{"seed": s, "ratios": {"glm": 0.5, "gam": 0.45}} for s in range(3)]
    six = [{"seed": s, "ratios": {"glm": 0.47, "gam": 0.46}} for s in range(5)]
    record_seeds(path, settings_key(cfg), "demo.yaml", one, "bench")
    record_seeds(path, settings_key(_variant(ensemble=6)), "demo.yaml", six, "bench --set train.ensemble=6")
    record_seeds(path, settings_key(cfg), "demo.yaml", one[:2], "bench again")  # replaces its own record
    assert [len(r["seeds"]) for r in json.loads(path.read_text())["records"]] == [5, 2]
    own, option = seed_spread_lines(cfg, path)
    assert "Over 2 seeds" in own and "bench again" in own
    assert option == ("With 6 ensemble members (--set train.ensemble=6), over 5 seeds: glm 0.470 +- 0.000 "
                      "(worst 0.470), gam 0.460 +- 0.000 (worst 0.460).")
    # from the 6-member settings, the 2-member record is the option
    own6, option2 = seed_spread_lines(_variant(ensemble=6), path)
    assert "Over 5 seeds" in own6 and "--set train.ensemble=2" in option2


def test_an_older_single_record_file_is_read(tmp_path):
    cfg = load_config(DEMO)
    path = tmp_path / "q.json"
    rec = record_seeds(path, settings_key(cfg), "demo.yaml", [{"seed": 0, "ratios": {"glm": 0.5}}], "bench")
    path.write_text(json.dumps(rec))  # the layout before records were a list
    assert "Over 1 seeds" in seed_spread_lines(cfg, path)[0]


def test_the_shipped_record_matches_the_demo_config():
    """configs/demo.yaml's settings have a 5-seed record (re-record with bench_quality.py --record after a
    change to them)."""
    from geoembed.seeds import RECORD

    (line, *options) = seed_spread_lines(load_config(DEMO), RECORD)
    assert line.startswith("Over 5 seeds of these settings"), line
    assert any("--set train.ensemble=6" in o for o in options)
