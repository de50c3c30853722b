"""The ``embedding`` view kind: a precomputed or model-made embedding per location, as a view to train on.

Store array ``embedding`` ``(D,)`` float32 (NaN where there is none) and the per-row ``valid``. The
embedding comes from exactly one of

* ``bundle``: a geoembed bundle folder (trained by ``geoembed train`` or imported), evaluated at each
  location through :func:`geoembed.io.bundle.load_bundle` and :meth:`Bundle.embed` (a *teacher*). A row
  is valid where its embedding is finite; with ``outside_support: invalid`` (the default) also only
  within the bundle's ``out_of_support_km`` of its training footprint
  (:meth:`Bundle.distance_to_footprint_km`); ``keep`` keeps rows farther out.
* ``raster``: a multi-band raster (GeoTIFF, COG, VRT; any CRS) of precomputed embeddings, one band per
  dimension (``bands``, 1-based; default all but an alpha band). Each location reads the pixel under it
  (``window_px: 1``, the default) or the mean of a ``window_px`` x ``window_px`` window of samples about
  one source pixel apart, centred on it, on the north-up local grid of the raster view
  (:func:`geoembed.views.raster.extract_chips`, nearest sampling, any CRS). A row is valid when the
  pixel under the location has a finite value in every band after de-quantisation; NaN, infinite,
  nodata (``nodata`` overrides the file's) and locations off the raster are invalid. The window mean
  averages the de-quantised values of the window's valid samples.

De-quantisation (``dequantise``), applied to the raw band values (integer codes) before any mean:

* ``{scale: s, offset: o}``: value = code * s + o.
* ``signed_square`` (or ``{rule: signed_square, divisor: d}``, default d = 127.5): value =
  sign(code) * (code / d)^2. This is the rule of Google's AlphaEarth Foundations annual Satellite
  Embedding dataset as published in int8 COGs (Earth Engine guide "AlphaEarth Foundations GCS data",
  developers.google.com/earth-engine/guides/aef_on_gcs_readme): 64 signed 8-bit bands A00..A63 per
  10 m pixel, mapped back to the native range [-1, 1] by dividing by 127.5, squaring and restoring the
  sign; the value -128 marks a masked pixel (in all bands at once) and is the files' declared NoData; a
  de-quantised pixel has unit Euclidean length. An int8 raster that declares neither nodata nor a mask
  is read with nodata -128 under this rule (recorded in the store's ``nodata_source``).
  (The Source Cooperative copy of the dataset stores its COGs bottom-up; read them through the VRTs
  published with them.)

De-quantisation on a float raster is an error (its values are not codes), as is ``signed_square`` on an
unsigned integer raster (the rule needs signed codes).

Fingerprint: the settings plus the bundle's fingerprint (sha256 of ``weights.safetensors`` and
``geoembed.json``) or the raster's (with every file GDAL reads for it), so a changed teacher makes the
store stale (an error unless ``build --overwrite``). Chunks are built and resumed by the one driver.
Training on this view next to imagery and OSM views distils the teacher into a small coordinate
encoder (its default encoder is ``embedding``, a linear head on the standardised vector).
"""

from __future__ import annotations

import contextlib
import math
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from geoembed.config.base import Section
from geoembed.config.build import ViewConfig
from geoembed.errors import ConfigError, InputError
from geoembed.io.viewstore import ArraySpec
from geoembed.views.base import Chunk, Resolved, View

__all__ = [
    "AEF_DIVISOR",
    "AEF_NODATA",
    "EmbeddingView",
    "EmbeddingViewConfig",
    "LinearDequantise",
    "SignedSquareDequantise",
    "dequantise_values",
]

VIEW_VERSION = 1
#: The AlphaEarth Foundations int8 product: value = sign(code) * (code / 127.5)^2; code -128 = masked.
AEF_DIVISOR = 127.5
AEF_NODATA = -128.0


class LinearDequantise(Section):
    """value = code * ``scale`` + ``offset``."""

    scale: float = 1.0
    offset: float = 0.0

    @model_validator(mode="after")
    def _finite(self) -> LinearDequantise:
        if not (math.isfinite(self.scale) and math.isfinite(self.offset)) or self.scale == 0:
            raise ValueError(f"scale ({self.scale}) must be finite and non-zero, offset ({self.offset}) finite")
        return self


class SignedSquareDequantise(Section):
    """value = sign(code) * (code / ``divisor``)^2 (the AlphaEarth rule with divisor 127.5)."""

    rule: Literal["signed_square"]
    divisor: float = Field(default=AEF_DIVISOR, gt=0)


class EmbeddingViewConfig(ViewConfig):
    """A per-location embedding from a teacher ``bundle`` or an embedding ``raster`` (exactly one);
    see :mod:`geoembed.views.embedding`."""

    kind: Literal["embedding"] = "embedding"
    name: str
    bundle: str | None = Field(default=None, description="a geoembed bundle folder (trained or imported)")
    outside_support: Literal["invalid", "keep"] | None = Field(
        default=None, description="bundle: rows beyond its out_of_support_km from its training footprint "
        "(default invalid)")
    raster: str | None = Field(default=None, description="a multi-band raster of embeddings (GeoTIFF/COG/VRT)")
    bands: list[int] | None = Field(default=None, min_length=1, description="raster: 1-based bands (default all "
                                    "but an alpha band)")
    dequantise: SignedSquareDequantise | LinearDequantise | None = Field(
        default=None, description="raster: {scale, offset}, or signed_square ({rule: signed_square, divisor})")
    nodata: float | None = Field(default=None, description="raster: nodata override (default the file's)")
    window_px: int | None = Field(default=None, ge=1, le=15, description="raster: odd window side in source "
                                  "pixels, mean over it (default 1: the pixel under the location)")

    @field_validator("dequantise", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"rule": "signed_square"} if value == "signed_square" else value

    @model_validator(mode="after")
    def _one_source(self) -> EmbeddingViewConfig:
        if (self.bundle is None) == (self.raster is None):
            raise ValueError("give exactly one of bundle, raster")
        if self.bundle is not None:
            given = [k for k in ("bands", "dequantise", "nodata", "window_px") if getattr(self, k) is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: raster settings, but this view reads a bundle")
        elif self.outside_support is not None:
            raise ValueError("outside_support: a bundle setting, but this view reads a raster")
        if self.window_px is not None and self.window_px % 2 == 0:
            raise ValueError(f"window_px must be odd (a window centred on the pixel under the location), "
                             f"got {self.window_px}")
        if self.bands is not None and min(self.bands) < 1:
            raise ValueError(f"bands are 1-based, got {self.bands}")
        return self


def dequantise_values(codes: np.ndarray, rule: SignedSquareDequantise | LinearDequantise | None) -> np.ndarray:
    """Values (float64) of raw band values ``codes`` under ``rule`` (None: the values as they are)."""
    v = np.asarray(codes, dtype=np.float64)
    if rule is None:
        return v
    if isinstance(rule, SignedSquareDequantise):
        return np.sign(v) * (v / rule.divisor) ** 2
    return v * rule.scale + rule.offset


# ------------------------------------------------------------------------------------------ bundle teacher

@dataclass(frozen=True)
class _BundleTeacher:
    """What a chunk of a bundle view needs (picklable: the bundle is loaded once per process)."""

    path: str
    fingerprint: str
    outside_support: str


_BUNDLES: dict[tuple[str, str], Any] = {}
_BUNDLES_LOCK = threading.Lock()


def _teacher(path: str, fingerprint: str, view: str):
    """The loaded bundle at ``path`` (one per process and fingerprint); an error if it has changed."""
    from geoembed.io.bundle import load_bundle

    key = (path, fingerprint)
    with _BUNDLES_LOCK:
        bundle = _BUNDLES.get(key)
        if bundle is None:
            bundle = load_bundle(path)
            if bundle.fingerprint != fingerprint:
                raise InputError(f"view {view}: bundle {path} changed during the build (fingerprint "
                                 f"{bundle.fingerprint[:19]}..., expected {fingerprint[:19]}...): build again")
            _BUNDLES.clear()  # one teacher per process at a time
            _BUNDLES[key] = bundle
        return bundle


def _bundle_chunk(t: _BundleTeacher, view: str, lon: np.ndarray, lat: np.ndarray) -> Chunk:
    bundle = _teacher(t.path, t.fingerprint, view)
    # writable copies: the driver's chunks are read-only views, which torch.from_numpy warns about
    lon, lat = np.array(lon, dtype=np.float64), np.array(lat, dtype=np.float64)
    emb = bundle.embed(lon, lat)
    valid = np.isfinite(emb).all(axis=1)
    if t.outside_support == "invalid":
        with np.errstate(invalid="ignore"):
            valid &= bundle.distance_to_footprint_km(lon, lat) <= bundle.out_of_support_km
    emb[~valid] = np.nan
    return Chunk({"embedding": emb.astype(np.float32, copy=False)}, valid=valid)


# ------------------------------------------------------------------------------------------ embedding raster

@dataclass(frozen=True)
class _RasterEmbedding:
    """What a chunk of a raster view needs (picklable; the chunk opens the raster itself)."""

    sources: tuple  # one geoembed.views.raster.RasterSource
    window_px: int
    spacing_m: float
    dequantise: SignedSquareDequantise | LinearDequantise | None


def _raster_chunk(r: _RasterEmbedding, lon: np.ndarray, lat: np.ndarray) -> Chunk:
    from geoembed.views.raster import extract_chips

    k = r.window_px
    # one sample: a tiny resolution keeps the read at native resolution (never decimated)
    res = r.spacing_m if k > 1 else 1e-3
    chips, _ = extract_chips(list(r.sources), lon, lat, chip_size=k, resolution_m=res, resampling="nearest")
    n, d = chips.shape[:2]
    values = dequantise_values(chips, r.dequantise).reshape(n, d, k * k)
    finite = np.isfinite(values)
    centre = finite[:, :, (k * k) // 2].all(axis=1)
    if k == 1:
        emb = values[:, :, 0]
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # rows without a valid sample: NaN, invalid below
            emb = np.nanmean(np.where(finite, values, np.nan), axis=2)
    emb = emb.astype(np.float32)
    valid = centre & np.isfinite(emb).all(axis=1)
    emb[~valid] = np.nan
    fraction = np.where(valid, finite.mean(axis=(1, 2)), 0.0).astype(np.float32)
    return Chunk({"embedding": emb}, valid=valid, valid_fraction=fraction)


def _window_spacing_m(path: str, crs_wkt: str, transform, width: int) -> float:
    """Ground size (m) of one source pixel at the raster's centre: the spacing of a window's samples."""
    from geoembed.io.rasters import raster_footprint
    from geoembed.views.raster import source_pixel_frame

    fp = raster_footprint(path)
    centre = fp.centroid if fp.contains(fp.centroid) else fp.representative_point()
    lon, lat = np.array([centre.x]), np.array([centre.y])
    _, _, coef, ok = source_pixel_frame(crs_wkt, transform, lon, lat, 100.0, width=width)
    det = abs(coef[0, 0, 0] * coef[0, 1, 1] - coef[0, 0, 1] * coef[0, 1, 0])  # source pixels per m^2
    if not ok[0] or not det > 0:
        raise InputError(f"raster {path}: cannot find the ground size of its pixels at its centre "
                         f"({centre.x:.5f}, {centre.y:.5f})")
    return float(1.0 / math.sqrt(det))


class EmbeddingView(View):
    """A per-location embedding from a teacher bundle or an embedding raster (see the module docstring)."""

    kind = "embedding"
    config_model = EmbeddingViewConfig
    cfg: EmbeddingViewConfig

    def resolve(self, lon: np.ndarray, lat: np.ndarray) -> Resolved:
        return self._resolve_bundle() if self.cfg.bundle is not None else self._resolve_raster()

    def _resolve_bundle(self) -> Resolved:
        from geoembed.io.bundle import load_bundle

        cfg = self.cfg
        try:
            bundle = load_bundle(cfg.bundle)
        except InputError as err:
            raise InputError(f"view {cfg.name}: bundle {cfg.bundle} is not a usable geoembed bundle: {err}") \
                from None
        d = bundle.embedding_dim
        outside = cfg.outside_support or "invalid"
        attrs = {
            "view": cfg.name,
            "source": "bundle",
            "bundle": str(bundle.path),
            "bundle_fingerprint": bundle.fingerprint,
            "embedding_dim": d,
            "dims": [f"emb_{i}" for i in range(d)],
            "out_of_support_km": bundle.out_of_support_km,
            "outside_support": outside,
            "validity": "finite embedding" + (" within out_of_support_km of the bundle's training footprint"
                                              if outside == "invalid" else ""),
            "view_version": VIEW_VERSION,
        }
        return Resolved(arrays={"embedding": ArraySpec((d,), "float32")}, attrs=attrs,
                        inputs={"bundle": bundle.fingerprint, "version": VIEW_VERSION},
                        context=_BundleTeacher(str(bundle.path), bundle.fingerprint, outside))

    def _resolve_raster(self) -> Resolved:
        from geoembed.config.build import RasterViewConfig
        from geoembed.io.rasters import open_raster
        from geoembed.views.raster import default_bands, resolve_sources
        from geoembed.views.raster.sources import band_nodata, check_dtypes

        cfg = self.cfg
        path = cfg.raster
        rule = cfg.dequantise
        with open_raster(path) as ds:  # InputError naming the file: missing, unreadable, no CRS
            bands = list(cfg.bands) if cfg.bands is not None else list(default_bands(ds))
            bad = [b for b in bands if not 1 <= b <= ds.count]
            if bad:
                raise ConfigError(f"view {cfg.name}: bands = {cfg.bands} but raster {path} has bands 1..{ds.count}")
            check_dtypes(ds, path, bands)  # real, and one type for all bands
            dtype = ds.dtypes[bands[0] - 1]
            if rule is not None and np.dtype(dtype).kind == "f":
                raise ConfigError(f"view {cfg.name}: dequantise is set but raster {path} holds {dtype} values, "
                                  "not integer codes: de-quantisation applies to quantised (integer) rasters "
                                  "only; remove dequantise")
            if isinstance(rule, SignedSquareDequantise) and np.dtype(dtype).kind == "u":
                raise ConfigError(f"view {cfg.name}: dequantise signed_square needs signed integer codes "
                                  f"(e.g. int8) but raster {path} holds unsigned {dtype} values")
            nodata, nodata_source = cfg.nodata, "config"
            if nodata is None:
                nodata_source = "file"
                declared, masked = band_nodata(ds, bands, None)
                if (isinstance(rule, SignedSquareDequantise) and dtype == "int8"
                        and all(v is None for v in declared) and not any(masked)):
                    nodata, nodata_source = AEF_NODATA, "signed_square int8 default (-128 = masked)"
            crs_wkt, transform, width = ds.crs.to_wkt(), ds.transform, ds.width
        rcfg = RasterViewConfig(name=cfg.name, sources=[path], bands=[bands], nodata=[nodata],
                                chip_size=1, resampling="nearest", min_valid_fraction=0.0)
        sources, infos = resolve_sources(rcfg)  # dtype checks, the raster's description and fingerprint
        info = infos[0]
        k = cfg.window_px or 1
        spacing = _window_spacing_m(info["path"], crs_wkt, transform, width) if k > 1 else None
        d = len(bands)
        attrs = {
            "view": cfg.name,
            "source": "raster",
            "raster": info["path"],
            "fingerprint": info["fingerprint"],
            "crs": {"epsg": info["crs_epsg"], "wkt": info["crs_wkt"]},
            "bands": bands,
            "dims": info["band_names"],
            "source_dtype": info["dtype"],
            "nodata": info["nodata"],
            "nodata_source": nodata_source,
            "source_res": info["res"],
            "dequantise": None if rule is None else rule.model_dump(mode="json"),
            "window_px": k,
            "window_spacing_m": spacing,
            "embedding_dim": d,
            "validity": "the pixel under the location finite in every band after de-quantisation "
                        "(not nodata, not off the raster)",
            "view_version": VIEW_VERSION,
        }
        inputs = {"raster": info["fingerprint"], "nodata": info["nodata"], "window_spacing_m": spacing,
                  "version": VIEW_VERSION}
        return Resolved(arrays={"embedding": ArraySpec((d,), "float32")}, attrs=attrs, inputs=inputs,
                        context=_RasterEmbedding(tuple(sources), k, spacing or 0.0, rule))

    def compute_chunk(self, prepared: _BundleTeacher | _RasterEmbedding, lon: np.ndarray, lat: np.ndarray) -> Chunk:
        if isinstance(prepared, _BundleTeacher):
            return _bundle_chunk(prepared, self.cfg.name, lon, lat)
        return _raster_chunk(prepared, lon, lat)

    @contextlib.contextmanager
    def running(self, resolved: Resolved) -> Iterator[None]:
        """A raster is read as the raster view reads it (GDAL cache kept small for tiled sources); its
        handles and decoded blocks are released when the build ends."""
        if not isinstance(resolved.context, _RasterEmbedding):
            yield
            return
        from geoembed.io.tilecache import tile_cache
        from geoembed.views.raster import block_read_env, close_cached_datasets

        try:
            with block_read_env(resolved.context.sources):
                yield
        finally:
            close_cached_datasets()
            tile_cache().clear()
