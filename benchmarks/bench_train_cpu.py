"""CPU training throughput of the demo-shaped model on synthetic data (samples/s).

Demo shape (configs/demo.yaml): views "landsat" (6 x 16 x 16 chips, CNN 16/32 -> 32) and "dem"
(1 x 8 x 8 chips, CNN 8/16 -> 16), fused MLP (128) -> d = 16; coordinates -> local multi-scale encoding
(12 scales x 3 directions) -> MLP 2 x 128 -> 16; symmetric InfoNCE; AdamW; batch 512. Uses the trainer's
model and step (geoembed.train.MultiViewModel / train_step).

    python benchmarks/bench_train_cpu.py [--threads 1,2] [--steps 30] [--batch-size 512]
    python benchmarks/bench_train_cpu.py --embed [--threads 1,2]   # Bundle.embed rows/s instead

``--embed`` times ``Bundle.embed`` (what enrichment calls) on 500,000 random points (best of 2) for two freshly
initialised bundles: the demo encoder (local multi-scale + MLP 2 x 128, d = 8) and the paper encoder
(harmonics L = 40 + SIREN 2 x 128, d = 16).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from geoembed.config.train import TrainConfig  # noqa: E402
from geoembed.train import MultiViewModel, coordinate_spec, make_optimizer, train_step  # noqa: E402


def demo_config(batch_size: int) -> TrainConfig:
    return TrainConfig.model_validate({
        "views": [{"view": "landsat", "out_dim": 32, "channels": [16, 32]},
                  {"view": "dem", "out_dim": 16, "channels": [8, 16]}],
        "coordinate_encoder": {"encodings": [{"type": "local_multiscale", "min_wavelength_m": 1000,
                                              "n_scales": 12, "n_directions": 3}],
                               "network": {"type": "mlp", "hidden": [128, 128]}},
        "embedding_dim": 16, "fusion_hidden": 128, "batch_size": batch_size, "lr": 2e-3,
    })


def bench(threads: int, steps: int, batch_size: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    n = batch_size * 4
    lon = -34.92 + 0.09 * torch.rand(n, dtype=torch.float64)
    lat = -8.04 + 0.09 * torch.rand(n, dtype=torch.float64)
    landsat, dem = torch.randn(n, 6, 16, 16), torch.randn(n, 1, 8, 8)
    valid = torch.ones(n, dtype=torch.bool)
    tc = demo_config(batch_size)
    spec = coordinate_spec(tc, lon.numpy(), lat.numpy())
    model = MultiViewModel(tc, {"landsat": {"chips": (6, 16, 16)}, "dem": {"chips": (1, 8, 8)}}, spec)
    opt = make_optimizer(model, tc, torch.device("cpu"))

    def step(i: int) -> None:
        idx = torch.randint(0, n, (batch_size,))
        v = valid[idx]
        train_step(model, opt, lon=lon[idx], lat=lat[idx],
                   inputs={"landsat": {"chips": landsat[idx]}, "dem": {"chips": dem[idx]}},
                   valid={"landsat": v, "dem": v}, grad_clip=1.0)

    for i in range(3):
        step(i)
    t = time.perf_counter()
    for i in range(steps):
        step(i)
    dt = time.perf_counter() - t
    sps = steps * batch_size / dt
    return {"threads": threads, "batch_size": batch_size, "steps": steps, "samples_per_s": round(sps),
            "demo_epoch_s_18k_rows": round(18_000 / sps, 2)}


def bench_embed(threads: int, n: int = 500_000) -> list[dict]:
    import tempfile

    import numpy as np
    import shapely

    from geoembed.io.bundle import load_bundle, save_untrained_bundle

    torch.set_num_threads(threads)
    fp = shapely.box(-34.92, -8.04, -34.83, -7.95)
    specs = {
        "demo_local_mlp": {"encodings": [{"type": "local_multiscale", "center_lon": -34.875,
                                          "center_lat": -7.995, "min_wavelength_m": 1000.0,
                                          "max_wavelength_m": 28000.0, "n_scales": 12, "n_directions": 3,
                                          "include_xy": True}],
                           "network": {"type": "mlp", "hidden": [128, 128], "activation": "relu"},
                           "embedding_dim": 8},
        "harmonics_L40_siren": {"encodings": [{"type": "spherical_harmonics", "degrees": 40}],
                                "network": {"type": "siren", "hidden": [128, 128], "w0": 30.0, "w0_hidden": 1.0},
                                "embedding_dim": 16},
    }
    rng = np.random.default_rng(0)
    lon, lat = rng.uniform(-34.92, -34.83, n), rng.uniform(-8.04, -7.95, n)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in specs.items():
            b = load_bundle(save_untrained_bundle(Path(tmp) / name, spec, footprint=fp))
            b.embed(lon[:10_000], lat[:10_000])
            best = 0.0
            for _ in range(2):
                t = time.perf_counter()
                b.embed(lon, lat)
                best = max(best, n / (time.perf_counter() - t))
            out.append({"encoder": name, "threads": threads, "rows": n, "rows_per_s": round(best)})
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", default="1,2")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--embed", action="store_true", help="time Bundle.embed instead of training")
    args = p.parse_args()
    if args.embed:
        for t in (int(x) for x in args.threads.split(",")):
            for res in bench_embed(t):
                print(json.dumps(res))
        return 0
    for t in (int(x) for x in args.threads.split(",")):
        res = bench(t, args.steps, args.batch_size)
        print(json.dumps(res))
        print(f"{t} thread(s): {res['samples_per_s']:,} samples/s (batch {args.batch_size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
