"""The raster view: C x H x W chips centred on each location, from any number of rasters.

Entry point: :class:`RasterView` (kind ``raster``, settings :class:`~geoembed.config.build.RasterViewConfig`),
built by :func:`geoembed.views.driver.build_view_store`. Its per-chunk computation, :func:`extract_chips`,
is a pure function of the sources and the locations. The stages, one module each:

* :mod:`~geoembed.views.raster.sources`: the configured rasters checked and described, open handles;
* :mod:`~geoembed.views.raster.geometry`: where each chip pixel falls in a source (north-up local
  azimuthal-equidistant grid per location, second-order model of the transform);
* :mod:`~geoembed.views.raster.reading`: block-by-block and windowed reads, planned per group of locations;
* :mod:`~geoembed.views.raster.sampling`: :func:`extract_chips`, nearest / bilinear sampling, validity;
* :mod:`~geoembed.views.raster.kernel`: the compiled sampling loop (numba);
* :mod:`~geoembed.views.raster.view`: :class:`RasterView`, the store's arrays, metadata and chunking.

Row order: store row i is ``locations`` row i, and chunks are contiguous row ranges, so the build is
fastest when the locations come in a spatial order (the sampler sorts them by a space-filling key;
:func:`geoembed.geo.hilbert_order` gives a Hilbert order).
"""

from geoembed.views.raster.geometry import aeqd_offset, chip_offsets, chip_pixel_coords, source_pixel_frame
from geoembed.views.raster.reading import block_read_env
from geoembed.views.raster.sampling import extract_chips
from geoembed.views.raster.sources import RasterSource, close_cached_datasets, default_bands, resolve_sources
from geoembed.views.raster.view import LOCAL_PROJECTION, RasterView, raster_chunk_rows

__all__ = [
    "LOCAL_PROJECTION",
    "RasterSource",
    "RasterView",
    "aeqd_offset",
    "block_read_env",
    "chip_offsets",
    "chip_pixel_coords",
    "close_cached_datasets",
    "default_bands",
    "extract_chips",
    "raster_chunk_rows",
    "resolve_sources",
    "source_pixel_frame",
]
