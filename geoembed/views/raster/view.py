"""The raster view kind: :class:`RasterView`, C x H x W chips per location from any number of rasters.

Store array ``chips`` ``(C, S, S)`` (``float32`` or ``float16``): the sources' bands stacked in order, NaN
where there is no data; a row is valid when its ``valid_fraction`` (non-NaN share over all bands and
pixels) is at least ``min_valid_fraction`` and above 0. Chunks are ``dask.chunk_size`` rows, fewer for
large chips (at most 64 MB of float32 chips per chunk, :func:`raster_chunk_rows`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

from geoembed.config.build import RasterViewConfig
from geoembed.io.tilecache import tile_cache
from geoembed.io.viewstore import ArraySpec
from geoembed.views.base import Chunk, Resolved, View
from geoembed.views.raster.reading import block_read_env
from geoembed.views.raster.sampling import extract_chips
from geoembed.views.raster.sources import RasterSource, close_cached_datasets, resolve_sources

__all__ = ["LOCAL_PROJECTION", "RasterView", "raster_chunk_rows"]

LOCAL_PROJECTION = (
    "per-location azimuthal equidistant (WGS84), north-up, centred on the location; "
    "chip pixel positions in each source from a local second-order model of the transform"
)
_MAX_CHUNK_BYTES = 64 << 20


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

    def resolve(self, lon: np.ndarray, lat: np.ndarray) -> Resolved:
        cfg = self.cfg
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

    def chunk_rows(self, resolved: Resolved, chunk_size: int) -> int:
        return raster_chunk_rows(chunk_size, resolved.arrays["chips"].shape[0], self.cfg.chip_size)

    def compute_chunk(self, prepared: list[RasterSource], lon: np.ndarray, lat: np.ndarray) -> Chunk:
        cfg = self.cfg
        chips, vf = extract_chips(prepared, lon, lat, chip_size=cfg.chip_size, resolution_m=cfg.resolution_m,
                                  resampling=cfg.resampling)
        return Chunk({"chips": chips}, valid=(vf >= cfg.min_valid_fraction) & (vf > 0), valid_fraction=vf)

    @contextlib.contextmanager
    def running(self, resolved: Resolved) -> Iterator[None]:
        """GDAL's block cache kept small while geoembed caches decoded blocks itself; the open handles
        and the decoded blocks are released when the build ends."""
        try:
            with block_read_env(resolved.context):
                yield
        finally:
            close_cached_datasets()
            tile_cache().clear()  # give the decoded blocks back once the view is built
