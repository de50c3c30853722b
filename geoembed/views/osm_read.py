"""Read OSM features from a local file into one GeoDataFrame (EPSG:4326) of geometry + tag columns.

Supported sources (chosen by file name):

* ``*.osm.pbf`` / ``*.pbf``: GDAL's OSM driver through pyogrio, layers ``points``, ``lines``,
  ``multilinestrings``, ``multipolygons`` (read with ``on_invalid="ignore"``: broken rings are dropped)
  and ``other_relations``. Tags live in named columns plus the hstore-like ``other_tags`` string
  (``"k"=>"v","k2"=>"v2"``); only the keys the catalogue needs are extracted.
* ``*.osm`` / ``*.xml``: OSM XML through ``osmnx.features_from_xml`` (offline).
* ``*.parquet`` / ``*.geoparquet``: a GeoParquet of features (geometry + one column per tag key).

The result has the requested tag columns (object dtype, null = absent) and ``gtype`` in
{"point", "line", "polygon"}; geometry collections are split into their parts, empty geometries
dropped. A missing, unreadable, corrupt or feature-less file raises :class:`InputError` naming it.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from geoembed.errors import InputError

log = logging.getLogger(__name__)

PBF_LAYERS = ("points", "lines", "multilinestrings", "multipolygons", "other_relations")
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


def parse_other_tags(other: pd.Series, key: str) -> pd.Series:
    """Extract one key's value from GDAL's ``other_tags`` strings (null where absent)."""
    pat = r'(?:^|,)"' + re.escape(key) + r'"=>"((?:[^"\\]|\\.)*)"'
    s = other.astype("object").where(other.notna(), None)
    if s.isna().all():
        return pd.Series([None] * len(s), index=s.index, dtype="object")
    vals = s.astype("string").str.extract(pat, expand=False)
    return vals.astype("object").where(vals.notna(), None)


def _read_pbf(path: Path, keys: list[str]) -> gpd.GeoDataFrame:
    import pyogrio

    frames = []
    for layer in PBF_LAYERS:
        try:
            info = pyogrio.read_info(path, layer=layer)
        except Exception as err:  # noqa: BLE001 - any reader failure is a bad file
            raise InputError(f"cannot read OSM file {path} (layer {layer}): {err}") from None
        fields = list(info["fields"])
        named = [k for k in keys if k in fields]
        cols = named + (["other_tags"] if "other_tags" in fields else [])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                df = pyogrio.read_dataframe(path, layer=layer, columns=cols, on_invalid="ignore")
        except Exception as err:  # noqa: BLE001
            raise InputError(f"cannot read OSM file {path} (layer {layer}): {err}") from None
        if len(df) == 0:
            continue
        out = {}
        for k in keys:
            if k in named:
                v = df[k].astype("object")
                out[k] = v.where(v.notna(), None)
            elif "other_tags" in df.columns:
                out[k] = parse_other_tags(df["other_tags"], k)
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


def read_osm_features(path: str | os.PathLike, keys: list[str]) -> gpd.GeoDataFrame:
    """Read the features of an OSM source with the tag columns ``keys`` and a ``gtype`` column.

    Returns EPSG:4326 geometries; raises InputError naming ``path`` when it is missing, unreadable,
    corrupt or holds no usable features.
    """
    p = Path(path)
    fmt = source_format(p)
    if not p.is_file():
        raise InputError(f"OSM source {p} does not exist")
    if p.stat().st_size == 0:
        raise InputError(f"OSM source {p} is empty (0 bytes)")
    reader = {"pbf": _read_pbf, "xml": _read_xml, "parquet": _read_parquet}[fmt]
    gdf = reader(p, list(keys))
    gdf = gdf[~(gdf.geometry.isna() | gdf.geometry.is_empty)]
    # Split geometry collections (e.g. other_relations) into their parts.
    tid = shapely.get_type_id(gdf.geometry.values)
    if (tid == 7).any():
        coll = gdf[tid == 7].explode(index_parts=False)
        gdf = pd.concat([gdf[tid != 7], coll], ignore_index=True)
        gdf = gdf[~gdf.geometry.is_empty]
    gdf = gdf.reset_index(drop=True)
    tid = shapely.get_type_id(gdf.geometry.values)
    gtype = np.array([_GTYPE.get(int(t), "") for t in range(8)], dtype=object)[tid]
    gdf = gdf[gtype != ""].copy()
    gdf["gtype"] = gtype[gtype != ""]
    if len(gdf) == 0:
        raise InputError(f"OSM source {p} holds no features")
    gdf = gdf.set_crs(gdf.crs or "EPSG:4326").to_crs("EPSG:4326")
    log.info("read %d OSM features from %s", len(gdf), p)
    return gdf.reset_index(drop=True)
