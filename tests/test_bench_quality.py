"""benchmarks/bench_quality.py's table: polygon columns only when measured, worst seeds per feature set."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_quality", ROOT / "benchmarks" / "bench_quality.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _result(seed, emb, poly=None):
    ratios = {(m, "embeddings"): v for m, v in zip(("glm", "gam", "gbm"), emb, strict=True)}
    ratios.update({(m, "coords"): 1.0 for m in ("glm", "gam", "gbm")})
    if poly:
        ratios.update({(m, "polygons"): v for m, v in zip(("glm", "gam", "gbm"), poly, strict=True)})
    return {"seed": seed, "seconds": 1.0, "ratios": ratios, "diagnostics": {"val_top5": 0.08}}


def test_report_adds_polygons_only_when_measured(bench):
    plain = bench.report([_result(0, (0.5, 0.4, 0.6)), _result(1, (0.7, 0.45, 0.5))])
    assert "poly" not in plain and "worst seed on embeddings: glm 0.700, gam 0.450, gbm 0.600" in plain
    text = bench.report([_result(0, (0.5, 0.4, 0.6), (0.55, 0.41, 0.62)),
                         _result(1, (0.7, 0.45, 0.5), (0.72, 0.47, 0.52))])
    header = text.splitlines()[0]
    assert "glm poly | gam poly | gbm poly" in header
    mean_row = next(line for line in text.splitlines() if line.startswith("| mean"))
    cells = [c.strip() for c in mean_row.strip("|").split("|")]
    assert cells[7] == "0.635 +- 0.120"  # glm on polygons: mean and sd of 0.55, 0.72
    assert "worst seed on polygons: glm 0.720, gam 0.470, gbm 0.620" in text


def test_polygons_needs_a_positive_number_of_points(bench, capsys):
    for bad in ("0", "-3", "many"):
        with pytest.raises(SystemExit):
            bench.main(["--polygons", bad, "--seeds", "0"])
        assert "not a positive number of points" in capsys.readouterr().err
