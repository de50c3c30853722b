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
    assert json.loads(path.read_text()) == rec
    assert abs(rec["summary"]["glm"]["mean"] - 0.515) < 1e-12 and rec["summary"]["glm"]["worst"] == 0.53
    (line,) = seed_spread_lines(cfg, path)
    assert "Over 4 seeds" in line and "glm 0.515 +- 0.013 (worst 0.530)" in line
    (other,) = seed_spread_lines(_variant(epochs=13), path)
    assert "one seed's" in other and "no multi-seed record" in other
    assert "no multi-seed record" in seed_spread_lines(cfg, tmp_path / "missing.json")[0]
