"""The raster view kind: :class:`RasterView`, C x H x W chips per location from any number of rasters,
or from the items of a STAC search.

Store array ``chips`` ``(C, S, S)`` (``float32`` or ``float16``): the sources' bands stacked in order (with
``stac:``, the ``stac.assets`` in order, composited over the items), NaN where there is no data; a row is
valid when its ``valid_fraction`` (non-NaN share over all bands and pixels) is at least
``min_valid_fraction`` and above 0. Chunks are ``dask.chunk_size`` rows, fewer for large chips (at most
64 MB of float32 chips per chunk, :func:`raster_chunk_rows`).

With ``stac:``, :meth:`RasterView.resolve` searches the catalogue for the items under the locations'
chips (:func:`geoembed.sources.prepare_stac`); their ids and unsigned asset hrefs are the view's input
fingerprint, so a rerun with the same search resumes and a changed catalogue makes the store stale.
Each chunk reads and composites the items' COGs (:func:`geoembed.sources.read_stac_chunk`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from geoembed.config.build import DaskConfig, RasterViewConfig
from geoembed.errors import InputError
from geoembed.io.tilecache import tile_cache
from geoembed.io.viewstore import ArraySpec
from geoembed.views.base import Chunk, Resolved, View
from geoembed.views.raster.reading import block_read_env
from geoembed.views.raster.sampling import extract_chips
from geoembed.views.raster.sources import RasterSource, close_cached_datasets, resolve_sources

if TYPE_CHECKING:
    from geoembed.sources import StacAssets

__all__ = ["LOCAL_PROJECTION", "RasterView", "raster_chunk_rows"]

LOCAL_PROJECTION = (
    "per-location azimuthal equidistant (WGS84), north-up, centred on the location; "
    "chip pixel positions in each source from a local second-order model of the transform"
)
_MAX_CHUNK_BYTES = 64 << 20
#: ``stac:`` settings that change no chip, left out of the store's fingerprint
_STAC_RUNTIME_KEYS = ("timeout_s", "retries", "max_items", "sign")


def raster_chunk_rows(chunk_size: int, channels: int, chip_size: int) -> int:
    """Rows per chunk (and task) of a raster view: ``chunk_size``, or fewer so that a chunk's float32
    chips stay within 64 MB (large chips: 256 x 256 x 3 gives 85 rows), at least 16."""
    row_bytes = 4 * channels * chip_size * chip_size
    return int(max(1, min(chunk_size, max(16, _MAX_CHUNK_BYTES // row_bytes))))


class RasterView(View):
    """Chips centred on each location (see :mod:`geoembed.views.raster`)."""

    kind = "raster"
    config_model = RasterViewConfig
    chunk_key = "chunk_size"  # the key stores built before the View interface were fingerprinted with
    cfg: RasterViewConfig

    def fingerprint_settings(self) -> dict:
        """All settings but STAC's timeout, retries, item cap and signing hook (they change no chip: a
        read that timed out resumes with a longer ``stac.timeout_s``)."""
        data = super().fingerprint_settings()
        for key in _STAC_RUNTIME_KEYS:
            (data.get("stac") or {}).pop(key, None)
        return data

    def resolve(self, lon: np.ndarray, lat: np.ndarray) -> Resolved:
        cfg = self.cfg
        if cfg.stac is not None:
            return self._resolve_stac(lon, lat)
        sources, infos = resolve_sources(cfg)
        channels = sum(len(s.bands) for s in sources)
        attrs = {
            "view": cfg.name,
            "sources": [i["path"] for i in infos],
            "fingerprints": [i["fingerprint"] for i in infos],
            "crs": [{"epsg": i["crs_epsg"], "wkt": i["crs_wkt"]} for i in infos],
            "bands": [i["bands"] for i in infos],
            "band_names": [n for i in infos for n in i["band_names"]],
            "source_dtypes": [i["dtype"] for i in infos],
            "nodata": [i["nodata"] for i in infos],
            "nodata_source": [i["nodata_source"] for i in infos],
            "source_res": [i["res"] for i in infos],
            "channels": channels,
            "dtype": cfg.dtype,
            "chip_size": cfg.chip_size,
            "resolution_m": cfg.resolution_m,
            "resampling": cfg.resampling,
            "local_projection": LOCAL_PROJECTION,
            "min_valid_fraction": cfg.min_valid_fraction,
            "values": "raw band values (no scale/offset), NaN = no data",
        }
        return Resolved(arrays={"chips": ArraySpec((channels, cfg.chip_size, cfg.chip_size), cfg.dtype)},
                        attrs=attrs, inputs={"sources": attrs["fingerprints"]}, context=sources)

    def _resolve_stac(self, lon: np.ndarray, lat: np.ndarray) -> Resolved:
        """Search the STAC catalogue under the locations' chips and resolve the items' assets."""
        from geoembed.sources import prepare_stac

        cfg, stac = self.cfg, self.cfg.stac
        # the search is grouped by chunks of the default size: the items found do not depend on it
        rows = raster_chunk_rows(DaskConfig().chunk_size, len(stac.assets), cfg.chip_size)
        try:
            assets = prepare_stac(stac, lon, lat, chip_size=cfg.chip_size, resolution_m=cfg.resolution_m,
                                  chunk_rows=rows)
        except InputError as err:
            hint = (" (a STAC view does not restrict where locations go: locations.region does)"
                    if "no item in" in str(err) else "")
            raise InputError(f"view {cfg.name}: {err}{hint}") from None
        attrs = {
            "view": cfg.name,
            "stac": {"catalog": stac.catalog, "collections": stac.collections, "datetime": stac.datetime,
                     "query": stac.query, "mask": stac.mask.model_dump() if stac.mask else None,
                     "composite": stac.composite, "nodata": stac.nodata},
            "items": [{"id": it.id, "collection": it.collection, "datetime": it.datetime, "hrefs": list(it.hrefs)}
                      for it in assets.items],
            "fingerprints": [assets.fingerprint],
            "band_names": assets.band_names,
            "channels": assets.channels,
            "dtype": cfg.dtype,
            "chip_size": cfg.chip_size,
            "resolution_m": cfg.resolution_m,
            "resampling": cfg.resampling,
            "local_projection": LOCAL_PROJECTION,
            "min_valid_fraction": cfg.min_valid_fraction,
            "values": "raw asset values (no scale/offset), composited over the items; NaN = no data",
        }
        return Resolved(arrays={"chips": ArraySpec((assets.channels, cfg.chip_size, cfg.chip_size), cfg.dtype)},
                        attrs=attrs, inputs={"stac": assets.fingerprint}, context=assets)

    def chunk_rows(self, resolved: Resolved, chunk_size: int) -> int:
        return raster_chunk_rows(chunk_size, resolved.arrays["chips"].shape[0], self.cfg.chip_size)

    def compute_chunk(self, prepared: list[RasterSource] | StacAssets, lon: np.ndarray, lat: np.ndarray) -> Chunk:
        """Chips of one chunk: ``prepared`` is the list of :class:`RasterSource` of file sources, or the
        :class:`~geoembed.sources.StacAssets` of a STAC view."""
        cfg = self.cfg
        if cfg.stac is not None:
            from geoembed.sources import read_stac_chunk

            chips, vf = read_stac_chunk(prepared, lon, lat, chip_size=cfg.chip_size, resolution_m=cfg.resolution_m,
                                        resampling=cfg.resampling)
        else:
            chips, vf = extract_chips(prepared, lon, lat, chip_size=cfg.chip_size, resolution_m=cfg.resolution_m,
                                      resampling=cfg.resampling)
        return Chunk({"chips": chips}, valid=(vf >= cfg.min_valid_fraction) & (vf > 0), valid_fraction=vf)

    @contextlib.contextmanager
    def running(self, resolved: Resolved) -> Iterator[None]:
        """GDAL's block cache kept small while geoembed caches decoded blocks itself (file sources: a
        STAC view's items are only opened by its chunks); the open handles and the decoded blocks are
        released when the build ends."""
        try:
            with block_read_env(resolved.context) if self.cfg.stac is None else contextlib.nullcontext():
                yield
        finally:
            close_cached_datasets()
            tile_cache().clear()  # give the decoded blocks back once the view is built
