"""Artefacts on disk, one module each (read, write, validate), and the helpers their writers share.

* :mod:`~geoembed.io.locations` - the locations GeoParquet.
* :mod:`~geoembed.io.viewstore` - a view store (zarr + chunk markers + index + meta.json).
* :mod:`~geoembed.io.bundle` - the model bundle; :mod:`~geoembed.io.bundle_schema` - its geoembed.json
  checked field by field; :mod:`~geoembed.io.seal` - the seal tying geoembed.json and the weights.
* :mod:`~geoembed.io.enriched` - the enriched table (columns, metadata, CSV sidecar, folder summary).
* :mod:`~geoembed.io.reduction` - a fitted PCA / whitening of embeddings (JSON, or inside a bundle).
* :mod:`~geoembed.io.rasters`, :mod:`~geoembed.io.tilecache` - input rasters and their decoded blocks;
  :mod:`~geoembed.io.gdalnames` - GDAL dataset names (subdatasets, ``/vsizip/`` ...) and their files.
* :mod:`~geoembed.io.atomic` - atomic writes; :mod:`~geoembed.io.fingerprint` - fingerprints of files,
  sources and objects, with a per-user cache for large files.

Nothing here imports a stage (build, views, train, enrich, evaluate).
"""
