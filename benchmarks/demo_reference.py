"""The reference values of tests/test_demo.py::test_run_demo_on_a_reduced_config (tests/reference/demo_reduced.json):
the test's configuration (``geoembed.testing.demo.reduced_demo_config``: configs/demo.yaml with 10,000
locations, 8 epochs, one member, all three models, 5-fold H3 resolution-8 blocks) run through ``geoembed.demo.run_demo`` in a temporary folder, printing the pooled ratios.

    .venv/bin/python benchmarks/demo_reference.py [--h3 8] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import yaml

from geoembed.config import load_config
from geoembed.demo import run_demo
from geoembed.testing.demo import reduced_demo_config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--h3", type=int, default=8, help="H3 resolution of the evaluation blocks")
    ap.add_argument("--seed", type=int, default=0, help="the config's seed (locations and training)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="geoembed_demo_ref_"))
    d = reduced_demo_config(tmp, seed=args.seed, h3_resolution=args.h3)
    (tmp / "demo.yaml").write_text(yaml.safe_dump(d))
    out = run_demo(load_config(tmp / "demo.yaml"))
    print(json.dumps({f"{p['model']}:{p['features']}": round(p["deviance_ratio"], 4) for p in out["pooled"]}))


if __name__ == "__main__":
    main()
