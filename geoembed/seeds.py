"""How many seeds support a run's figures: the multi-seed record of ``benchmarks/bench_quality.py``.

``bench_quality.py --record`` writes ``benchmarks/quality_seeds.json``: the settings it ran (:func:`settings_key`), the per-seed held-out deviance ratios and their mean, sd and worst seed.
:func:`seed_spread_lines` reads it for a config: when the settings match, the demo prints how its one-seed
table compares with the spread over seeds; otherwise it says that no multi-seed figures back these settings.
"""

from __future__ import annotations

import copy
import json
import statistics
from pathlib import Path

from geoembed.config import Config
from geoembed.io.fingerprint import text_fingerprint

__all__ = ["RECORD", "record_seeds", "seed_spread_lines", "settings_key"]

REPO = Path(__file__).resolve().parents[1]
RECORD = REPO / "benchmarks" / "quality_seeds.json"
_RUN_PATHS = {"enrich": ("input", "output"), "evaluate": ("table", "output", "figures")}
_SECTIONS = ("locations", "views", "train", "enrich", "evaluate")


def _relative(obj, root: str):
    if isinstance(obj, dict):
        return {k: _relative(v, root) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_relative(v, root) for v in obj]
    if isinstance(obj, str) and obj.startswith(root):
        return obj[len(root):]
    return obj


def settings_key(cfg: Config) -> str:
    """A fingerprint of a parsed config over what changes results (locations, views, train, enrich,
    evaluate), less the seed, the workdir, per-run paths and the time cap; paths inside the repository are
    taken relative to it, so a clone elsewhere has the same key. Settings at their defaults are left out,
    so that a setting added to geoembed later (at a default that keeps the old behaviour) keeps the key."""
    dump = cfg.model_dump(mode="json", exclude_defaults=True)
    d = copy.deepcopy({k: dump.get(k) for k in _SECTIONS})
    for section, keys in _RUN_PATHS.items():
        for key in keys:
            (d.get(section) or {}).pop(key, None)
    if isinstance(d.get("train"), dict):
        d["train"].pop("seed", None)
        d["train"].pop("max_minutes", None)  # a cap, not a setting: the bench raises it on busy machines
    return text_fingerprint(_relative(d, str(REPO) + "/"))


def _records(path: Path) -> list[dict]:
    """The records in ``path`` (a list under ``records``; an older file holds one record), or []."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return []
    if isinstance(data, dict) and isinstance(data.get("records"), list):
        return [r for r in data["records"] if isinstance(r, dict)]
    return [data] if isinstance(data, dict) and "settings_key" in data else []


def record_seeds(path: Path, key: str, description: str, rows: list[dict], command: str) -> dict:
    """Record ``rows`` (``{"seed", "ratios": {"glm": x, ...}}`` for the embeddings) for the settings ``key``
    in ``path``, replacing an earlier record of the same settings and keeping the others; returns it."""
    models = list(dict.fromkeys(m for r in rows for m in r["ratios"]))
    summary = {}
    for m in models:
        vals = [r["ratios"][m] for r in rows if m in r["ratios"]]
        summary[m] = {"mean": statistics.mean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                      "worst": max(vals), "best": min(vals)}
    record = {"settings_key": key, "settings": description, "command": command,
              "seeds": [{"seed": r["seed"], "ratios": r["ratios"]} for r in rows], "summary": summary}
    from geoembed.io.atomic import atomic_write_text

    others = [r for r in _records(path) if r.get("settings_key") != key]
    atomic_write_text(path, json.dumps({"records": [*others, record]}, indent=1) + "\n")
    return record


def _ratios(record: dict) -> str:
    return ", ".join(f"{m} {v['mean']:.3f} +- {v['sd']:.3f} (worst {v['worst']:.3f})"
                     for m, v in record["summary"].items())


def seed_spread_lines(cfg: Config, path: Path = RECORD) -> list[str]:
    """Lines saying how many seeds back the figures of ``cfg``, from the record; and the recorded figures of
    the same settings with another number of ensemble members (1 to 8; ``--set train.ensemble=K``)."""
    by_key = {r.get("settings_key"): r for r in _records(path)}
    own = by_key.get(settings_key(cfg))
    if own is None:
        lines = ["These figures are one seed's; no multi-seed record matches these settings "
                 "(python benchmarks/bench_quality.py --record)."]
    else:
        seeds = [x["seed"] for x in own["seeds"]]
        lines = [f"Over {len(seeds)} seeds of these settings ({', '.join(map(str, seeds))}; "
                 f"{own.get('command', 'benchmarks/bench_quality.py')}), embeddings: {_ratios(own)}."]
    if cfg.train is not None:
        for k in range(1, 9):
            if k == cfg.train.ensemble:
                continue
            other = cfg.model_copy(update={"train": cfg.train.model_copy(update={"ensemble": k})})
            rec = by_key.get(settings_key(other))
            if rec is not None:
                lines.append(f"With {k} ensemble member{'s' if k > 1 else ''} (--set train.ensemble={k}), over "
                             f"{len(rec['seeds'])} seeds: {_ratios(rec)}.")
    return lines
