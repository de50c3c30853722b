"""Training throughput of the paper-shaped model on random data already on the device.

Model (PAPER.md): frozen 512-d image features -> linear head (32), a 6 x 7 x 7 OSM hex tensor -> masked
hex CNN (16), fusion MLP (128) -> d = 16; coordinates -> spherical harmonics L = 40 (1,600 features, one
matmul + gather, no loop over degrees) -> SIREN 2 x 128 (w0 = 30) -> 16; one symmetric InfoNCE with a
learnable temperature; AdamW (fused on CUDA); bf16 autocast on CUDA. It uses the trainer's own model and
step function (geoembed.train.MultiViewModel / train_step), so the figure is the trainer's.

Prints samples/s per batch size and the projected time of the paper's budget (95,857 locations x 500
epochs). Target: <= 5 minutes on one H100/H200.

    python benchmarks/gpu_train.py                     # GPU: batch sizes 256, 4096, 16384
    python benchmarks/gpu_train.py --batch-sizes 8192 --compile
    python benchmarks/gpu_train.py --small             # CPU smoke run (tests)
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
from geoembed.train import MultiViewModel, make_optimizer, train_step  # noqa: E402

PAPER_N = 95_857
PAPER_EPOCHS = 500


def paper_config(degrees: int, batch_size: int) -> TrainConfig:
    return TrainConfig.model_validate({
        "views": [
            {"view": "image", "encoder": "auto", "out_dim": 32},
            {"view": "osm", "encoder": "hex", "out_dim": 16, "channels": [16, 8]},
        ],
        "coordinate_encoder": {
            "encodings": [{"type": "spherical_harmonics", "degrees": degrees}],
            "network": {"type": "siren", "hidden": [128, 128], "w0": 30.0},
            "dtype": "float32",
        },
        "embedding_dim": 16, "fusion_hidden": 128, "objective": "fused", "lr": 1e-5,
        "weight_decay": 0.01, "batch_size": batch_size, "grad_clip": None,
    })


def run(n: int, degrees: int, batch_size: int, epochs: int, device: torch.device, amp: bool,
        compile_model: bool, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    g = torch.Generator(device="cpu").manual_seed(seed)
    # Random data, on the device once (as the trainer keeps it).
    lon = (torch.rand(n, generator=g, dtype=torch.float64) * 50 - 10).to(device)
    lat = (torch.rand(n, generator=g, dtype=torch.float64) * 35 + 35).to(device)
    feats = torch.randn(n, 512, generator=g).to(device)
    hexes = torch.randn(n, 6, 7, 7, generator=g).to(device)
    valid = torch.ones(n, dtype=torch.bool, device=device)
    tc = paper_config(degrees, batch_size)
    shapes = {"image": {"features": (512,)}, "osm": {"hex": (6, 7, 7)}}
    spec = {"encodings": [{"type": "spherical_harmonics", "degrees": degrees}],
            "network": tc.coordinate_encoder.network.spec(), "embedding_dim": 16, "dtype": "float32"}
    model = MultiViewModel(tc, shapes, spec).to(device)
    opt = make_optimizer(model, tc, device)
    step_model = torch.compile(model) if compile_model else model
    steps = max(1, n // batch_size)

    def epoch(ep: int) -> torch.Tensor:
        perm = torch.randperm(n, device=device)
        total = torch.zeros((), device=device)
        for s in range(steps):
            idx = perm[s * batch_size : (s + 1) * batch_size]
            inputs = {"image": {"features": feats.index_select(0, idx)},
                      "osm": {"hex": hexes.index_select(0, idx)}}
            v = valid.index_select(0, idx)
            total += train_step(step_model, opt, lon=lon.index_select(0, idx), lat=lat.index_select(0, idx),
                                inputs=inputs, valid={"image": v, "osm": v}, amp=amp)
        return total / steps

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    t = time.perf_counter()
    first_loss = float(epoch(0))  # warm-up (allocator, cuDNN autotune, compile)
    sync()
    warm = time.perf_counter() - t
    t = time.perf_counter()
    for e in range(epochs):
        loss = epoch(1 + e)
    sync()
    dt = time.perf_counter() - t
    sps = epochs * steps * batch_size / dt
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "n": n, "degrees": degrees, "batch_size": batch_size, "amp": amp, "compile": compile_model,
        "timed_epochs": epochs, "warmup_s": round(warm, 2), "samples_per_s": round(sps),
        "epoch_s": round(dt / epochs, 3),
        "projected_500_epochs_min": round(PAPER_EPOCHS * PAPER_N / sps / 60, 2),
        "first_loss": round(first_loss, 4), "last_loss": round(float(loss), 4),
        "peak_mem_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="tiny CPU smoke run (2,048 locations, L = 8)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--n", type=int, default=PAPER_N)
    p.add_argument("--degrees", type=int, default=40)
    p.add_argument("--batch-sizes", default="256,4096,16384")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per batch size (after 1 warm-up)")
    p.add_argument("--no-amp", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.small:
        args.n, args.degrees, args.batch_sizes, args.epochs = 2048, 8, "256", 1
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        res = run(args.n, args.degrees, bs, args.epochs, device, amp=device.type == "cuda" and not args.no_amp,
                  compile_model=args.compile)
        print(json.dumps(res), flush=True)
        print(f"batch {bs}: {res['samples_per_s']:,} samples/s -> 500 epochs x {PAPER_N:,} locations in "
              f"{res['projected_500_epochs_min']} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
