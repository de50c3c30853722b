"""Read OSM features from a local file into one GeoDataFrame (EPSG:4326) of geometry + tag columns.

Supported sources (chosen by file name):

* ``*.osm.pbf`` / ``*.pbf`` and ``*.osm`` / ``*.xml`` (OSM XML): by default the one-pass libosmium
  reader :func:`geoembed.views.osm_pbf.read_pbf` (catalogue keys filtered in C++, bounded memory; see
  there how it differs from GDAL). ``GEOEMBED_OSM_READER=gdal`` (or ``reader="gdal"``) selects the
  previous readers instead, kept as a fallback and as the reference of the equality test:
  GDAL's OSM driver through pyogrio for .pbf, layers ``points``, ``lines``, ``multilinestrings``,
  ``multipolygons`` (read with ``on_invalid="ignore"``: rings no reader can parse are dropped) and
  ``other_relations``, with a driver configuration (:func:`osm_config_file`) that reports the
  catalogue's keys as fields and nothing else; ``osmnx.features_from_xml`` for OSM XML.
* ``*.parquet`` / ``*.geoparquet``: a GeoParquet of features (geometry + one column per tag key).

The result has the requested tag columns (object dtype, null = absent) and ``gtype`` in
{"point", "line", "polygon"}; geometry collections are split into their parts, empty geometries
dropped. A missing, unreadable, corrupt or feature-less file raises :class:`InputError` naming it.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from geoembed.errors import ConfigError, InputError

log = logging.getLogger(__name__)

PBF_LAYERS = ("points", "lines", "multilinestrings", "multipolygons", "other_relations")
#: Readers of .osm.pbf / .osm XML: "osmium" (default) or "gdal" (GDAL for .pbf, osmnx for XML).
OSM_READERS = ("osmium", "gdal")
# shapely type ids -> geometry class
_GTYPE = {0: "point", 4: "point", 1: "line", 2: "line", 5: "line", 3: "polygon", 6: "polygon"}


def source_format(path: str | os.PathLike) -> str:
    """``"pbf"``, ``"xml"`` or ``"parquet"`` from the file name; InputError otherwise."""
    name = Path(path).name.lower()
    if name.endswith(".pbf"):
        return "pbf"
    if name.endswith((".osm", ".xml", ".osm.xml")):
        return "xml"
    if name.endswith((".parquet", ".geoparquet")):
        return "parquet"
    raise InputError(f"OSM source {path}: unknown format (expected .osm.pbf, .osm XML or .parquet GeoParquet)")


_OSM_CONFIGS: dict[tuple[str, ...], str] = {}


def osm_config_file(keys: list[str]) -> str:
    """A GDAL OSM driver configuration (osmconf.ini) whose layers report exactly ``keys`` as fields,
    with no ``other_tags`` string to parse afterwards; GDAL's own defaults otherwise (which closed
    ways are areas, which nodes are significant). Written once per process and key set."""
    import configparser
    import tempfile

    import pyogrio

    key = tuple(keys)
    if key in _OSM_CONFIGS and Path(_OSM_CONFIGS[key]).is_file():
        return _OSM_CONFIGS[key]
    default = Path(pyogrio.get_gdal_data_path() or "") / "osmconf.ini"
    cfg = configparser.ConfigParser(interpolation=None, strict=False)
    cfg.optionxform = str  # keys are case-sensitive
    if not cfg.read(default) or not cfg.has_option("general", "closed_ways_are_polygons"):
        # without GDAL's defaults, closed ways would not become polygons: refuse rather than misread
        raise InputError(f"GDAL's OSM driver configuration {default} is missing or unreadable; set GDAL_DATA "
                         "to GDAL's data folder to read .osm.pbf files")
    for layer in PBF_LAYERS:
        if not cfg.has_section(layer):
            cfg.add_section(layer)
        sec = cfg[layer]
        sec["attributes"] = ",".join(keys)
        sec["other_tags"] = "no"
        for opt in [o for o in sec if o == "computed_attributes" or o.startswith("z_order")]:
            del sec[opt]  # a computed field over tags that are no longer fields
        # a listed key must not be dropped as unsignificant / ignored
        for opt in ("ignore", "unsignificant"):
            if opt in sec:
                sec[opt] = ",".join(t for t in sec[opt].split(",") if t and t not in key)
    fd, path = tempfile.mkstemp(prefix="geoembed_osmconf_", suffix=".ini")
    with os.fdopen(fd, "w") as fh:
        cfg.write(fh, space_around_delimiters=False)  # GDAL reads "key=value" only
    if not _OSM_CONFIGS:
        import atexit

        atexit.register(_remove_configs)
    _OSM_CONFIGS[key] = path
    return path


def _remove_configs() -> None:
    for path in _OSM_CONFIGS.values():
        Path(path).unlink(missing_ok=True)


def osm_reader(path: str | os.PathLike, reader: str | None = None) -> str:
    """The reader :func:`read_osm_features` uses for ``path``: ``"parquet"`` for GeoParquet; else
    ``reader``, or ``GEOEMBED_OSM_READER``, or ``"osmium"`` (ConfigError for another name)."""
    if source_format(path) == "parquet":
        return "parquet"
    name = reader or os.environ.get("GEOEMBED_OSM_READER") or "osmium"
    if name not in OSM_READERS:
        origin = "reader" if reader else "GEOEMBED_OSM_READER"
        raise ConfigError(f"{origin}={name!r}: unknown OSM reader (expected one of {', '.join(OSM_READERS)})")
    return name


def _read_pbf(path: Path, keys: list[str], layers: tuple[str, ...] = PBF_LAYERS) -> gpd.GeoDataFrame:
    """GDAL's OSM driver: the features of ``layers`` (default all five)."""
    import pyogrio

    conf = osm_config_file(keys)
    frames = []
    for layer in layers:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                df = pyogrio.read_dataframe(path, layer=layer, on_invalid="ignore", CONFIG_FILE=conf)
        except Exception as err:  # noqa: BLE001 - any reader failure is a bad file
            raise InputError(f"cannot read OSM file {path} (layer {layer}): {err}") from None
        if len(df) == 0:
            continue
        out = {}
        for k in keys:
            col = next((c for c in (k, k.replace(":", "_")) if c in df.columns), None)  # GDAL: addr:street -> addr_street
            if col is not None:
                v = df[col].astype("object")
                out[k] = v.where(v.notna(), None)
            else:
                out[k] = pd.Series([None] * len(df), index=df.index, dtype="object")
        frames.append(gpd.GeoDataFrame(pd.DataFrame(out, index=df.index), geometry=df.geometry.values,
                                       crs=df.crs or "EPSG:4326"))
    if not frames:
        raise InputError(f"OSM file {path} holds no features")
    return gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=frames[0].crs)


def _read_xml(path: Path, keys: list[str]) -> gpd.GeoDataFrame:
    import osmnx

    try:
        gdf = osmnx.features_from_xml(path)
    except Exception as err:  # noqa: BLE001 - osmnx raises many kinds on bad or empty XML
        raise InputError(f"cannot read OSM XML file {path}: {type(err).__name__}: {err}") from None
    gdf = gdf.reset_index(drop=True)
    out = pd.DataFrame(index=gdf.index)
    for k in keys:
        if k in gdf.columns:
            v = gdf[k].astype("object")
            out[k] = v.where(v.notna(), None)
        else:
            out[k] = None
    return gpd.GeoDataFrame(out, geometry=gdf.geometry.values, crs=gdf.crs or "EPSG:4326")


def _read_parquet(path: Path, keys: list[str]) -> gpd.GeoDataFrame:
    try:
        gdf = gpd.read_parquet(path)
    except Exception as err:  # noqa: BLE001
        raise InputError(f"cannot read OSM features GeoParquet {path}: {err}") from None
    if gdf.crs is None:
        raise InputError(f"OSM features GeoParquet {path} has no CRS")
    out = pd.DataFrame(index=gdf.index)
    for k in keys:
        if k in gdf.columns:
            v = gdf[k].astype("object")
            out[k] = v.where(v.notna(), None).map(lambda x: None if x is None else str(x))
        else:
            out[k] = None
    return gpd.GeoDataFrame(out, geometry=gdf.geometry.values, crs=gdf.crs)


def read_osm_features(path: str | os.PathLike, keys: list[str], *, catalogue=None,
                      reader: str | None = None) -> gpd.GeoDataFrame:
    """Read the features of an OSM source with the tag columns ``keys`` and a ``gtype`` column.

    ``reader`` (default: ``GEOEMBED_OSM_READER``, else ``"osmium"``) picks the .pbf / XML reader, see
    :func:`osm_reader`. Given the ``catalogue``, the libosmium reader keeps only features in one of its
    categories (the others return every feature). Returns EPSG:4326 geometries; raises InputError
    naming ``path`` when it is missing, unreadable, corrupt or holds no usable features.
    """
    p = Path(path)
    fmt = source_format(p)
    name = osm_reader(p, reader)
    if not p.is_file():
        raise InputError(f"OSM source {p} does not exist")
    if p.stat().st_size == 0:
        raise InputError(f"OSM source {p} is empty (0 bytes)")
    if name == "osmium":
        from geoembed.views.osm_pbf import read_pbf

        gdf = read_pbf(p, list(keys), catalogue)
    else:
        gdf = {"pbf": _read_pbf, "xml": _read_xml, "parquet": _read_parquet}[fmt](p, list(keys))
    # (each step copies only when it changes something: a country extract holds millions of rows)
    bad = gdf.geometry.isna().to_numpy() | gdf.geometry.is_empty.to_numpy()
    if bad.any():
        gdf = gdf[~bad]
    # Split geometry collections (e.g. other_relations) into their parts.
    tid = shapely.get_type_id(gdf.geometry.values)
    if (tid == 7).any():
        coll = gdf[tid == 7].explode(index_parts=False)
        gdf = pd.concat([gdf[tid != 7], coll], ignore_index=True)
        gdf = gdf[~gdf.geometry.is_empty]
    gdf = gdf.reset_index(drop=True)
    tid = shapely.get_type_id(gdf.geometry.values)
    gtype = np.array([_GTYPE.get(int(t), "") for t in range(8)], dtype=object)[tid]
    ok = gtype != ""
    gdf = gdf[ok].copy() if not ok.all() else gdf.copy(deep=False)
    gdf["gtype"] = gtype[ok]
    if len(gdf) == 0:
        raise InputError(f"OSM source {p} holds no features (an empty extract, or a download cut short at a block "
                         "boundary: download or export it again)")
    if gdf.crs is None:
        gdf = gdf.set_crs("EPSG:4326")
    elif gdf.crs.to_epsg() != 4326:
        gdf = gdf.to_crs("EPSG:4326")
    log.info("read %d OSM features from %s", len(gdf), p)
    return gdf.reset_index(drop=True)
