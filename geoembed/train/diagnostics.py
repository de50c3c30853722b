"""Did training work? Held-out retrieval against chance, how the embedding varies over the training
footprint and at which scales, and a plain verdict (ok / weak / failed) with what to change.

:func:`diagnose` runs once after training (:mod:`geoembed.train.loop`; its result is stored as
``diagnostics`` in the bundle's ``metrics.json``, which is not sealed: it describes the encoder and does
not change any output) and, for a bundle without it (older, imported), on demand in ``geoembed inspect``
(:func:`bundle_diagnostics`). It only reads the encoder: a few thousand forward passes, well under a
second for the demo's bundle.

**Retrieval** (from the training metrics): the trainer ranks each held-out location's coordinates among
the ``n`` held-out candidates from its views (:func:`geoembed.train.loop.evaluate`); by chance the right
one is first with probability ``1/n`` and in the top 5 with ``5/n``. Reported: top-1 and top-5, their
chance levels, the top-5 lift (top-5 / chance) and its z-score against chance (binomial, ``n`` trials).

**Held-out loss** (from the per-epoch history): its value at the best epoch against its minimum over the
epochs up to then. The best epoch is picked by ``train.monitor`` (the demo: top-5 retrieval); a held-out
loss that rose well above its minimum while the training loss kept falling is the mark of an encoder
memorising location identity (on the Olinda kit, 400 m without jitter: +0.36 nats; the demo's 1,000 m /
150 m: +0.01). For a bundle, ``<workdir>/train/metrics.jsonl`` beside it gives the history when its best
epoch's loss is the bundle's.

**Variation** (computed from the encoder): ``n_points`` points uniform in area inside the footprint.
Embeddings are compared by direction (unit length), as the trainer compares them:

* ``spread``: total variance of the unit embeddings over the footprint, ``1 - |mean direction|^2``:
  0 for a constant embedding, 1 for directions spread evenly (no preferred direction);
* ``raw_variance_share``: the same for the embeddings as enrich writes them, over their mean square
  (0: a constant vector; 1: varies around zero);
* ``effective_dims``: participation ratio of the covariance's eigenvalues (how many directions it varies
  along, of ``embedding_dim``);
* ``scales``: a variogram. For separations ``h`` of 1x, 4x, 16x the encoder's finest wavelength
  (:func:`finest_wavelength_m`; for encoders without one, 1/64, 1/16, 1/4 of the footprint's median
  point distance), pairs of points about ``h`` apart (within a factor sqrt(2), random bearing, both
  inside) give the semivariance ``gamma(h) = mean |u_p - u_q|^2 / 2``; ``share = gamma(h) / spread`` is
  the part of the total variance already reached at that separation (random pairs reach 1). A smooth
  map has a small share at 1x and approaches 1 at the footprint's scale; a share near 1 at the finest
  wavelength means neighbours one wavelength apart are as different as distant points: noise, or
  memorised location identity. Separations longer than the median point distance are left out.

**Verdict** (thresholds below; each is documented and tested):

* ``failed``: held-out retrieval not distinguishable from chance (top-5 lift < :data:`LIFT_FAILED` or
  z < :data:`Z_FAILED`), or a nearly constant embedding (spread < :data:`SPREAD_FAILED`);
* ``weak``: top-5 lift < :data:`LIFT_WEAK` (half the largest possible lift, ``n / 10``, when that is
  lower); spread < :data:`SPREAD_WEAK`; share at the finest wavelength
  > :data:`FINEST_SHARE_NOISE`; a held-out loss that rose more than :data:`VAL_LOSS_RISE` from its minimum
  (at least 2 epochs before the best, the training loss falling, :data:`VAL_LOSS_MIN_ROWS` candidates or
  more); or a footprint not much larger than the finest wavelength (median point
  distance < :data:`FOOTPRINT_MIN_WAVELENGTHS` wavelengths);
* ``ok`` otherwise. Without retrieval (imported or older bundles) the verdict rests on the variation alone.

Advice names the setting to change: ``train.epochs`` (the best epoch was the last: still improving),
``locations.n``, ``min_wavelength_m`` of the local encoding (down when the footprint is small for it,
up when the map is noise at the finest scale or the held-out loss rose) and ``train.jitter_m`` (about :data:`JITTER_PER_WAVELENGTH`
times the finest wavelength).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = [
    "FINEST_SHARE_NOISE",
    "FOOTPRINT_MIN_WAVELENGTHS",
    "JITTER_PER_WAVELENGTH",
    "LIFT_FAILED",
    "LIFT_WEAK",
    "SPREAD_FAILED",
    "SPREAD_WEAK",
    "VAL_LOSS_MIN_ROWS",
    "VAL_LOSS_RISE",
    "Z_FAILED",
    "bundle_diagnostics",
    "diagnose",
    "encoder_embed",
    "finest_wavelength_m",
    "format_diagnostics",
    "held_out_loss",
    "retrieval_summary",
    "variation",
]

#: Top-5 lift over chance below which held-out retrieval counts as at chance (failed).
LIFT_FAILED = 1.5
#: z-score of top-5 against chance below which retrieval counts as at chance (failed).
Z_FAILED = 3.0
#: Top-5 lift below which retrieval is weak (with fewer than 50 candidates: half the largest possible lift).
LIFT_WEAK = 5.0
#: Spread (total variance of unit embeddings, 0..1) below which the embedding is nearly constant (failed).
SPREAD_FAILED = 0.02
#: Spread below which the embedding varies little (weak).
SPREAD_WEAK = 0.1
#: Share of the total variance reached one finest wavelength apart above which the map varies only at the
#: finest scale (weak). Trained demo bundles reach about 35%, untrained networks 60-75%; a smooth field of
#: 1-5 km waves learnt with a 500 m finest wavelength about 60%.
FINEST_SHARE_NOISE = 0.85
#: Footprint median point distance, in finest wavelengths, below which the encoder can hardly vary (weak).
FOOTPRINT_MIN_WAVELENGTHS = 2.0

#: Rise (nats) of the held-out loss from its minimum to the best epoch, with the training loss falling, above
#: which the encoder is memorising (weak). The demo's 1,000 m encoder: 0.01; 400 m without jitter: 0.36.
VAL_LOSS_RISE = 0.1
#: Held-out candidates needed before the held-out loss's rise is judged (fewer: too noisy).
VAL_LOSS_MIN_ROWS = 200
#: Coordinate jitter suggested per metre of finest wavelength (the demo's 150 m for 1,000 m works).
JITTER_PER_WAVELENGTH = 0.15

VERSION = 1
_MULTIPLES = (1, 4, 16)
_MIN_PAIRS = 200
_EARTH_CIRCUMFERENCE_M = 2 * math.pi * 6_371_008.8
Embed = Callable[[np.ndarray, np.ndarray], np.ndarray]


def finest_wavelength_m(spec: dict) -> float | None:
    """The shortest wavelength (metres) the encoder's encodings resolve: ``min_wavelength_m`` of a local
    encoding, about circumference / L for spherical harmonics of L degrees; None when unknown."""
    out = []
    for enc in spec.get("encodings", []):
        if enc.get("type") == "local_multiscale":
            out.append(float(enc["min_wavelength_m"]))
        elif enc.get("type") == "spherical_harmonics":
            out.append(_EARTH_CIRCUMFERENCE_M / float(enc["degrees"]))
    return min(out) if out else None


def encoder_embed(encoder, chunk: int = 4096) -> Embed:
    """``embed(lon, lat) -> (N, d)`` float64 of a coordinate encoder (in inference mode, in chunks)."""
    import torch

    def embed(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for i in range(0, len(lon), chunk):
                e = encoder(lon=torch.from_numpy(np.ascontiguousarray(lon[i:i + chunk], dtype=np.float64)),
                            lat=torch.from_numpy(np.ascontiguousarray(lat[i:i + chunk], dtype=np.float64)))
                out.append(e.double().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0))

    return embed


def _unit(e: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(e, axis=1, keepdims=True)
    return e / np.where(norm > 1e-12, norm, 1.0)  # an all-zero embedding stays zero: no variation


def retrieval_summary(metrics: dict | None) -> dict | None:
    """Held-out retrieval of the best epoch against chance, from training metrics (None without them)."""
    metrics = metrics or {}
    top1, top5, c1 = metrics.get("val_top1"), metrics.get("val_top5"), metrics.get("chance_top1")
    n = metrics.get("retrieval_rows") or (round(1.0 / c1) if c1 else None)
    if top5 is None or not n:
        return None
    n = int(n)
    c5 = min(1.0, 5.0 / n)
    z = (top5 - c5) / math.sqrt(c5 * (1 - c5) / n) if c5 < 1 else 0.0
    return {"top1": float(top1) if top1 is not None else None, "top5": float(top5), "n_candidates": n,
            "chance_top1": 1.0 / n, "chance_top5": c5, "lift_top5": float(top5) / c5, "z_top5": float(z)}


def held_out_loss(history: list[dict] | None, metrics: dict | None) -> dict | None:
    """The held-out loss at the best epoch against its minimum over the epochs up to it, from the per-epoch
    ``history`` (``metrics.jsonl`` rows); None without a history holding the best epoch."""
    best = (metrics or {}).get("best_epoch")
    rows = [h for h in history or [] if isinstance(h, dict) and isinstance(h.get("epoch"), int)
            and isinstance(h.get("val_loss"), int | float) and math.isfinite(h["val_loss"])]
    rows = [h for h in rows if best is not None and h["epoch"] <= best]
    at_best = next((h for h in rows if h["epoch"] == best), None)
    if at_best is None:
        return None
    low = min(rows, key=lambda h: h["val_loss"])
    fell = None
    if isinstance(at_best.get("train_loss"), int | float) and isinstance(low.get("train_loss"), int | float):
        fell = bool(at_best["train_loss"] < low["train_loss"])
    return {"at_best_epoch": float(at_best["val_loss"]), "minimum": float(low["val_loss"]),
            "minimum_epoch": int(low["epoch"]), "rise": float(at_best["val_loss"] - low["val_loss"]),
            "train_loss_fell": fell}


def variation(embed: Embed, footprint, spec: dict, *, n_points: int = 4096, seed: int = 0) -> dict:
    """How the embedding varies over ``footprint`` (a lon/lat polygon) and at which scales (see the
    module docstring); ``embed`` maps lon/lat arrays to raw ``(N, d)`` embeddings."""
    from geoembed.geo import SupportIndex, destination, haversine_km, uniform_in_area

    rng = np.random.default_rng(seed)
    lon, lat = uniform_in_area(footprint, n_points, rng)
    e = np.asarray(embed(lon, lat), dtype=np.float64)
    u = _unit(e)
    centred = u - u.mean(0)
    spread = float((centred ** 2).sum(1).mean())
    mean_sq = float((e ** 2).sum(1).mean())
    raw_share = float(((e - e.mean(0)) ** 2).sum(1).mean() / mean_sq) if mean_sq > 0 else 0.0
    eig = np.clip(np.linalg.eigvalsh(centred.T @ centred / len(u)), 0.0, None)
    dims = float(eig.sum() ** 2 / (eig ** 2).sum()) if (eig ** 2).sum() > 0 else 0.0
    half = n_points // 2
    typical_m = float(np.median(haversine_km(lon[:half], lat[:half], lon[half:2 * half], lat[half:2 * half]))) * 1000
    finest = finest_wavelength_m(spec)
    if finest is not None:
        ladder = [(m * finest, f"{m}x finest wavelength") for m in _MULTIPLES]
    else:
        ladder = [(typical_m / k, f"1/{k} footprint") for k in (64, 16, 4)]
    support = SupportIndex(footprint)
    scales = []
    for h, label in ladder:
        if h > typical_m:
            continue
        dist_km = h / 1000 * np.exp(rng.uniform(-0.5 * math.log(2), 0.5 * math.log(2), half))
        lon2, lat2 = destination(lon[:half], lat[:half], rng.uniform(0.0, 360.0, half), dist_km)
        inside = support.contains(lon2, lat2)
        row = {"separation_m": round(h, 3), "label": label, "pairs": int(inside.sum()),
               "semivariance": None, "share": None}
        if inside.sum() >= _MIN_PAIRS:
            u2 = _unit(np.asarray(embed(lon2[inside], lat2[inside]), dtype=np.float64))
            gamma = float(0.5 * ((u[:half][inside] - u2) ** 2).sum(1).mean())
            row["semivariance"] = gamma
            row["share"] = gamma / spread if spread > 1e-12 else None
        scales.append(row)
    return {"points": int(n_points), "embedding_dim": int(e.shape[1]), "spread": spread,
            "raw_variance_share": raw_share, "effective_dims": dims, "finest_wavelength_m": finest,
            "median_point_distance_m": typical_m, "scales": scales}


def _verdict(ret: dict | None, loss: dict | None, var: dict, metrics: dict,
             jitter_m: float | None) -> tuple[str, list, list]:
    """(verdict, reasons, advice) from the thresholds of the module docstring."""
    rank = {"ok": 0, "weak": 1, "failed": 2}
    level, reasons, advice = "ok", [], []

    def worse(new: str, reason: str) -> None:
        nonlocal level
        level = new if rank[new] > rank[level] else level
        reasons.append(reason)

    def coarser() -> None:  # advice against memorising, once
        if any("raise min_wavelength_m" in a for a in advice):
            return
        if finest is None:
            advice.append("a coarser coordinate encoding (its finest wavelength) or more train.jitter_m")
            return
        advice.append(f"raise min_wavelength_m of the local encoding (now {finest:g} m; try {2 * finest:g} m)")
        jitter = JITTER_PER_WAVELENGTH * 2 * finest  # for the doubled wavelength
        if jitter_m is None or jitter_m < jitter:
            now = f"now {jitter_m:g} m; " if jitter_m is not None else ""
            advice.append(f"raise train.jitter_m ({now}try about {jitter:.0f} m)")

    finest = var["finest_wavelength_m"]
    still_improving = (metrics.get("best_epoch") is not None and metrics.get("epochs_run")
                       and metrics["best_epoch"] == metrics["epochs_run"] - 1
                       and metrics.get("stopped") in ("epochs", "time_budget"))
    undertrained = False
    if ret is not None:
        if ret["lift_top5"] < LIFT_FAILED or ret["z_top5"] < Z_FAILED:
            worse("failed", f"held-out retrieval is at chance (top-5 {ret['top5']:.3f} vs chance "
                            f"{ret['chance_top5']:.3f} among {ret['n_candidates']})")
            undertrained = True
        elif ret["lift_top5"] < (weak := min(LIFT_WEAK, 0.5 / ret["chance_top5"])):
            worse("weak", f"held-out retrieval is weak (top-5 {ret['lift_top5']:.1f}x chance, below {weak:g}x)")
            undertrained = True
    spread = var["spread"]
    small_footprint = finest is not None and var["median_point_distance_m"] < FOOTPRINT_MIN_WAVELENGTHS * finest
    if spread < SPREAD_FAILED:
        worse("failed", f"the embedding is nearly constant over the footprint (spread {spread:.3f}, "
                        f"below {SPREAD_FAILED:g})")
        undertrained = True
    elif spread < SPREAD_WEAK:
        worse("weak", f"the embedding varies little over the footprint (spread {spread:.3f}, below {SPREAD_WEAK:g})")
        undertrained = True
    if small_footprint:
        worse("weak", f"the footprint (median point distance {var['median_point_distance_m'] / 1000:.2f} km) is "
                      f"small for the finest wavelength {finest:g} m: the encoder can hardly vary inside it")
        advice.append(f"lower min_wavelength_m of the local encoding (now {finest:g} m; points are typically "
                      f"{var['median_point_distance_m']:.0f} m apart)")
    fine = var["scales"][0] if var["scales"] and finest is not None else None
    if fine is not None and fine["share"] is not None and fine["share"] > FINEST_SHARE_NOISE:
        worse("weak", f"the embedding varies mostly at the finest scale ({fine['share']:.0%} of its variance is "
                      f"reached {finest:g} m apart, above {FINEST_SHARE_NOISE:.0%}): noise or memorised "
                      f"location identity")
        coarser()
    enough_rows = ret is None or ret["n_candidates"] >= VAL_LOSS_MIN_ROWS
    memorising = bool(loss is not None and enough_rows and loss["rise"] > VAL_LOSS_RISE and loss["train_loss_fell"]
                      and metrics["best_epoch"] - loss["minimum_epoch"] >= 2)
    if memorising:
        worse("weak", f"the held-out loss rose {loss['rise']:.2f} above its minimum (epoch {loss['minimum_epoch']}) "
                      f"by the best epoch {metrics['best_epoch']} while the training loss kept falling: memorising "
                      f"location identity rather than learning what the views share")
        coarser()
    if undertrained:
        n_train = metrics.get("n_train")
        more_locations = "more locations (locations.n" + (f"; {n_train} trained on)" if n_train else ")")
        if still_improving:  # first things first: it had not finished learning
            advice.insert(0, f"train longer: raise train.epochs (ran {metrics['epochs_run']}; the best epoch was "
                             f"the last, so it was still improving) or train.max_minutes")
        elif ret is not None:  # it stopped improving: more data
            advice.insert(0, f"{more_locations}: training stopped improving at epoch {metrics.get('best_epoch')}")
        else:
            advice[:0] = ["train longer (train.epochs, train.patience, train.max_minutes)", more_locations]
        if ret is not None and level == "failed":
            advice.append("check the views' valid fractions (`geoembed inspect WORKDIR`): retrieval needs views "
                          "that differ between places")
    elif still_improving and not memorising:  # more epochs would memorise more
        advice.append(f"the best epoch was the last of {metrics['epochs_run']}: more epochs (train.epochs) may "
                      f"still help")
    if ret is None:
        why = ("fewer than 5 held-out locations valid in every view" if metrics.get("best_epoch") is not None
               else "not recorded with this bundle: trained before the diagnostics, or imported")
        reasons.append(f"held-out retrieval not available ({why}): verdict from the variation alone")
    return level, reasons, advice


def diagnose(embed: Embed, footprint, spec: dict, metrics: dict | None = None, *,
             history: list[dict] | None = None, jitter_m: float | None = None, n_points: int = 4096,
             seed: int = 0) -> dict:
    """The training diagnostics of an encoder (``embed``: raw ``(N, d)`` embeddings of lon/lat arrays) over
    its ``footprint``: retrieval (from ``metrics``, the training metrics; None for an imported encoder), the
    held-out loss's course (from ``history``, the per-epoch rows), variation, verdict, reasons and advice.
    Deterministic for ``seed``."""
    metrics = metrics or {}
    ret = retrieval_summary(metrics)
    loss = held_out_loss(history, metrics)
    var = variation(embed, footprint, spec, n_points=n_points, seed=seed)
    level, reasons, advice = _verdict(ret, loss, var, metrics, jitter_m)
    return _rounded({"version": VERSION, "verdict": level, "reasons": reasons, "advice": advice,
                     "retrieval": ret, "held_out_loss": loss, "variation": var})


def _rounded(value):
    """Floats to 4 significant digits (figures for reading, not for computing), recursively."""
    if isinstance(value, float):
        return float(f"{value:.4g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def bundle_diagnostics(bundle, *, compute: bool = True) -> dict | None:
    """The diagnostics stored with a loaded :class:`~geoembed.io.bundle.Bundle` (``metrics.json``), or, with
    ``compute``, computed now for one without them (``"computed": "on demand"``; retrieval only if its
    training metrics recorded it); None without either."""
    stored = (bundle.metrics or {}).get("diagnostics")
    if isinstance(stored, dict) and "verdict" in stored:
        return {"computed": "after training", **stored}
    if not compute:
        return None
    train_cfg = (bundle.config or {}).get("train") if isinstance(bundle.config, dict) else None
    jitter = train_cfg.get("jitter_m") if isinstance(train_cfg, dict) else None
    out = diagnose(lambda lon, lat: bundle.embed(lon, lat, raw=True), bundle.footprint, bundle.meta["encoder"],
                   bundle.metrics, history=_run_history(bundle),
                   jitter_m=jitter if isinstance(jitter, int | float) else None)
    return {"computed": "on demand", **out}


def _run_history(bundle) -> list[dict] | None:
    """The per-epoch rows of the run that wrote ``bundle`` (``<workdir>/train/metrics.jsonl`` next to
    ``<workdir>/bundle``), if that file is there and its best epoch's held-out loss is the bundle's."""
    import json

    path = bundle.path.parent / "train" / "metrics.jsonl"
    metrics = bundle.metrics or {}
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return None
    best = next((r for r in rows if isinstance(r, dict) and r.get("epoch") == metrics.get("best_epoch")), None)
    want = metrics.get("best_val_loss")
    return rows if best is not None and want is not None and best.get("val_loss") == want else None


def format_diagnostics(diag: dict) -> str:
    """The diagnostics as a few lines of text (the end of ``geoembed train``)."""
    lines = [f"training verdict: {diag['verdict'].upper()}"]
    ret, var = diag.get("retrieval"), diag["variation"]
    if ret is not None:
        top1 = f"top-1 {ret['top1']:.3f} (chance {ret['chance_top1']:.4f}), " if ret.get("top1") is not None else ""
        lines.append(f"  held-out retrieval among {ret['n_candidates']}: {top1}top-5 {ret['top5']:.3f} "
                     f"(chance {ret['chance_top5']:.4f}; {ret['lift_top5']:.1f}x chance)")
    else:
        lines.append("  held-out retrieval: not available")
    loss = diag.get("held_out_loss")
    if loss is not None:
        lines.append(f"  held-out loss at the best epoch {loss['at_best_epoch']:.3f}, its minimum {loss['minimum']:.3f} "
                     f"(epoch {loss['minimum_epoch']})")
    lines.append(f"  variation over the footprint: spread {var['spread']:.3f} of 1 (unit embeddings), "
                 f"{var['effective_dims']:.1f} effective of {var['embedding_dim']} dimensions")
    parts = [f"{s['separation_m'] / 1000:g} km {s['share']:.0%}" for s in var["scales"] if s["share"] is not None]
    if parts:
        lines.append("  by scale (variance between points this far apart, share of the total): " + ", ".join(parts))
    lines += [f"  - {r}" for r in diag["reasons"]]
    lines += [f"  try: {a}" for a in diag["advice"]]
    return "\n".join(lines)
