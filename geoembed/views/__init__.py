"""Views: per-location arrays computed from rasters, OpenStreetMap and other sources (the build stage).

* :mod:`geoembed.views.base`: the :class:`~geoembed.views.base.View` interface a view kind implements;
* :mod:`geoembed.views.registry`: view kind -> (config model, View, default encoder);
* :mod:`geoembed.views.driver`: :func:`~geoembed.views.driver.build_view_store`, the one build driver;
* :mod:`geoembed.views.raster`: the ``raster`` kind (chips), a package of its stages;
* :mod:`geoembed.views.osm`: the ``osm`` kind (its readers, geometry and kernels in ``osm_*`` and
  ``disk_kernel``).

Nothing is imported here, so that the config layer can consult the registry cheaply.
"""
