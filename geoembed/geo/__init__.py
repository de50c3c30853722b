"""Geometry on the sphere, in one place: longitudes across the antimeridian, local metric projections,
grid blocks, space-filling orders, H3 cells and disks, and distances to a training footprint.

Every stage calls these; nothing else in geoembed computes a projection, a block grid or a longitude arc.

* :mod:`geoembed.geo.lon`: longitude wrapping, shortest covering arcs, geometries split at 180 degrees;
* :mod:`geoembed.geo.project`: local transverse Mercator / UTM projections centred on a point set, and a
  global equal-area projection;
* :mod:`geoembed.geo.grid`: square grid blocks, Z-order and Hilbert orders, H3 cell ids and disks;
* :mod:`geoembed.geo.footprint`: training footprints, great-circle and azimuthal distances, destination
  points, uniform points in a region, support index.
"""

from geoembed.geo.footprint import (
    SupportIndex,
    aeqd_km,
    destination,
    haversine_km,
    training_footprint,
    uniform_in_area,
)
from geoembed.geo.grid import grid_blocks, h3_cells, h3_disk_reach_m, h3_disks, hilbert_order, morton_order
from geoembed.geo.lon import (
    continuous_lon,
    east_of_antimeridian,
    lon_extent,
    split_at_antimeridian,
    unwrap_lon,
    wrap_lon,
)
from geoembed.geo.project import (
    EQUAL_AREA_PROJ,
    equal_area_transformers,
    local_crs,
    local_metric_crs,
    project_local,
    to_local_metres,
    utm_crs,
)

__all__ = [
    "EQUAL_AREA_PROJ",
    "SupportIndex",
    "aeqd_km",
    "continuous_lon",
    "destination",
    "east_of_antimeridian",
    "equal_area_transformers",
    "grid_blocks",
    "h3_cells",
    "h3_disk_reach_m",
    "h3_disks",
    "haversine_km",
    "hilbert_order",
    "local_crs",
    "local_metric_crs",
    "lon_extent",
    "morton_order",
    "project_local",
    "split_at_antimeridian",
    "to_local_metres",
    "training_footprint",
    "uniform_in_area",
    "unwrap_lon",
    "utm_crs",
    "wrap_lon",
]
