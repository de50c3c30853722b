"""A fixed reduction shipped inside a bundle: PCA (optionally whitened) to ``k`` components, fitted on
the encoder's embeddings of reference locations.

A 512-d imported encoder gives a GLM 512 collinear columns; ``k`` principal components of its
embeddings over the region a model is about are a compact, stable input. The reference locations are
one of: a bounding box or a polygon file or a raster's footprint (``n`` points drawn uniformly in area,
deterministic for ``seed``, through :func:`geoembed.locations.sample_points`), or a table's own
coordinates. The maths is :class:`geoembed.io.reduction.Reduction`'s (the one behind
``geoembed enrich fit-reduction``); the result is stored in the bundle (:mod:`geoembed.io.bundle`),
covered by its fingerprint, and applied by :meth:`Bundle.embed`, hence by ``enrich`` and
``LocationEmbedder`` alike.

:func:`reduce_bundle` does the same for an existing (e.g. trained) bundle.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geoembed.errors import InputError

log = logging.getLogger(__name__)

DEFAULT_REFERENCE_N = 20_000


@dataclass
class ReductionRequest:
    """What to fit: ``n_components`` (whitened or not) on exactly one kind of reference locations."""

    n_components: int
    whiten: bool = False
    bbox: tuple[float, float, float, float] | None = None
    polygon: str | None = None
    raster: str | None = None
    table: str | None = None
    lon_col: str = "lon"
    lat_col: str = "lat"
    n: int = DEFAULT_REFERENCE_N
    seed: int = 0

    def __post_init__(self) -> None:
        given = [k for k in ("bbox", "polygon", "raster", "table") if getattr(self, k) is not None]
        if len(given) != 1:
            raise InputError(f"a reduction needs exactly one reference (a bbox, a polygon, a raster footprint "
                             f"or a table of coordinates); got {given or 'none'}")
        if isinstance(self.n_components, bool) or int(self.n_components) < 1:
            raise InputError(f"--components must be a positive integer, got {self.n_components!r}")
        if int(self.n) < 2:
            raise InputError(f"the reference needs at least 2 locations, got n={self.n}")

    @property
    def method(self) -> str:
        return "whiten" if self.whiten else "pca"


def reference_locations(req: ReductionRequest) -> tuple[np.ndarray, np.ndarray, dict]:
    """The reference lon/lat (float64) and a JSON description of where they came from."""
    from pydantic import ValidationError

    from geoembed.config.build import LocationsConfig, RegionConfig
    from geoembed.io.fingerprint import file_fingerprint
    from geoembed.locations import read_points_table, sample_points

    try:
        if req.table is not None:
            cfg = LocationsConfig(points=str(req.table), lon_col=req.lon_col, lat_col=req.lat_col)
            _, lon, lat = read_points_table(cfg)
            info = {"kind": "table", "path": str(Path(req.table).resolve()), "rows": len(lon),
                    "lon_col": req.lon_col, "lat_col": req.lat_col, "fingerprint": file_fingerprint(req.table)}
            return lon, lat, info
        if req.bbox is not None:
            region = RegionConfig(bbox=tuple(float(v) for v in req.bbox))
            info = {"kind": "bbox", "bbox": [float(v) for v in req.bbox]}
        elif req.polygon is not None:
            region = RegionConfig(polygon=str(req.polygon))
            info = {"kind": "polygon", "path": str(Path(req.polygon).resolve()),
                    "fingerprint": file_fingerprint(req.polygon)}
        else:
            region = RegionConfig(raster=str(req.raster))
            info = {"kind": "raster_footprint", "path": str(Path(req.raster).resolve()),
                    "fingerprint": file_fingerprint(req.raster)}
        cfg = LocationsConfig(region=region, n=int(req.n))
    except ValidationError as err:
        msg = "; ".join(e["msg"] for e in err.errors())
        raise InputError(f"bad reduction reference: {msg}") from None
    lon, lat, _report = sample_points(cfg, footprints=[], seed=int(req.seed))
    info |= {"sampling": "uniform in area", "n": len(lon), "seed": int(req.seed)}
    return lon, lat, info


def fit_reduction(embed, raw_dim: int, req: ReductionRequest, info: dict | None = None):
    """Fit ``req`` on ``embed(lon, lat) -> (n, raw_dim)`` at the reference locations (a Reduction)."""
    from geoembed.io.reduction import Reduction

    k = int(req.n_components)
    if k > raw_dim:
        raise InputError(f"--components {k} is more than the encoder's {raw_dim} dimensions")
    lon, lat, where = reference_locations(req)
    if len(lon) <= k:
        raise InputError(f"the reference has {len(lon)} location(s); a {k}-component reduction needs more "
                         f"than {k}")
    log.info("fitting a %d-component %s reduction on %d reference locations", k, req.method, len(lon))
    emb = embed(lon, lat)
    red = Reduction.fit(emb, k, method=req.method, info={**(info or {}), "reference": where})
    total = float(red.info.get("total_variance", 0.0))
    if total > 0:
        log.info("the %d components keep %.1f%% of the variance", k, 100 * red.explained_variance.sum() / total)
    return red


def fit_encoder_reduction(encoder, req: ReductionRequest):
    """Fit ``req`` on a (not yet saved) coordinate encoder's embeddings."""
    from geoembed.io.bundle import Bundle

    dim = int(encoder.embedding_dim)
    probe = Bundle(path=Path("<unsaved>"), meta={"embedding_dim": dim}, encoder=encoder, fingerprint="")
    return fit_reduction(probe.embed, dim, req)


def check_card(card: dict, dim: int) -> dict:
    """A complete model card whose ``output_dim`` is the encoder's ``dim`` (InputError otherwise)."""
    from geoembed.io.bundle import validate_card

    card = validate_card(card)
    if card["output_dim"] != dim:
        raise InputError(f"model card output_dim {card['output_dim']} is not the encoder's dimension {dim}")
    return card


def reduce_bundle(source: str | os.PathLike, output: str | os.PathLike, req: ReductionRequest | None, *,
                  card: dict | None = None, overwrite: bool = False) -> Path:
    """Copy the bundle at ``source`` to ``output`` with a reduction fitted now (on the encoder's own
    embeddings, replacing any reduction it had) and/or a model card; written atomically."""
    from geoembed.io.bundle import load_bundle, save_bundle

    src, out = Path(source), Path(output)
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} already exists; choose another --output or pass --overwrite")
    if req is None and card is None:
        raise InputError("nothing to change: give --components (and a reference) and/or --card")
    bundle = load_bundle(src)
    if card is not None:
        card = check_card({"output_dim": bundle.raw_embedding_dim, **card}, bundle.raw_embedding_dim)
    reduction = bundle.reduction
    if req is not None:
        reduction = fit_reduction(lambda lo, la: bundle.embed(lo, la, raw=True), bundle.raw_embedding_dim, req,
                                  info={"source_bundle": bundle.fingerprint})
    return save_bundle(out, bundle.encoder, bundle.meta["encoder"], footprint=bundle.footprint,
                       out_of_support_km=bundle.out_of_support_km, config=bundle.config, metrics=bundle.metrics,
                       data_fingerprint=str(bundle.meta.get("data_fingerprint", "")),
                       card=card if card is not None else bundle.card, reduction=reduction)
