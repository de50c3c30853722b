"""Configuration of the build stage: locations, views and the Dask runtime.

Every view's settings are a :class:`ViewConfig` subclass; the one for a ``kind`` is found in the
view-kind registry (:mod:`geoembed.views.registry`), so a new kind brings its own model. The built-in
kinds' models (``raster``, ``osm``) are defined here; their remote-source blocks (``stac:``,
``overpass:``) in :mod:`geoembed.config.sources`.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, PlainValidator, SerializeAsAny, ValidationError, model_serializer, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from geoembed.config.base import Section
from geoembed.config.sources import OverpassConfig, StacConfig


class DaskConfig(Section):
    """Where Dask tasks run. ``scheduler`` (or env GEOEMBED_SCHEDULER) is a distributed scheduler
    address such as ``tcp://10.0.0.5:8786``, or one of the local schedulers ``threads``,
    ``processes``, ``synchronous``. When unset, tasks run locally: on threads, except a large OSM
    view (100,000 rows or more), whose GIL-bound kernels run in worker processes."""

    scheduler: str | None = None
    num_workers: int | None = Field(default=None, ge=1)
    chunk_size: int = Field(default=4096, ge=1, description="locations per task (raster views: fewer "
                            "where the chips would pass 64 MB per chunk)")


class _OmitWhenUnset:
    """Settings added after artefacts were first fingerprinted (``_omit_when_none``) are left out of
    the dump while unset, so that the fingerprints of configs without them do not change."""

    _omit_when_none: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler):
        data = handler(self)
        for key in self._omit_when_none:
            if isinstance(data, dict) and key in data and data[key] is None:
                del data[key]
        return data


class RegionConfig(_OmitWhenUnset, Section):
    """The sampling region: exactly one of a bounding box, a polygon file or a raster. A raster region
    is where the raster has data (its valid pixels: not nodata, not NaN, not masked), not its whole
    rectangle; ``crs`` and ``nodata`` override the raster's own (else those of a raster view listing
    the same file apply)."""

    _omit_when_none: ClassVar[tuple[str, ...]] = ("crs", "nodata")

    bbox: tuple[float, float, float, float] | None = Field(
        default=None, description="lon_min, lat_min, lon_max, lat_max in EPSG:4326 (lon_min > lon_max: across "
        "the antimeridian, e.g. [170, -20, -170, -10])"
    )
    polygon: str | None = Field(default=None, description="vector file (any CRS); union of its geometries")
    raster: str | None = Field(default=None, description="raster (path or GDAL dataset name) whose valid-data "
                               "area is the region")
    crs: str | None = Field(default=None, description="CRS of the region raster when it has none (or the "
                            "wrong one), e.g. EPSG:4326")
    nodata: float | None = Field(default=None, description="nodata value of the region raster (overrides the "
                                 "file's)")

    @model_validator(mode="after")
    def _one_of(self) -> RegionConfig:
        given = [k for k in ("bbox", "polygon", "raster") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of bbox, polygon, raster (got {given or 'none'})")
        if self.raster is None and (self.crs is not None or self.nodata is not None):
            raise ValueError("crs and nodata apply to a region raster only")
        if self.bbox is not None:
            x0, y0, x1, y1 = self.bbox
            # lon_min > lon_max crosses the antimeridian (as GeoJSON bboxes do); such a box wider than
            # half the globe is far more likely swapped corners, so it is refused
            lon_ok = x0 < x1 or (x0 > x1 and x1 + 360.0 - x0 <= 180.0)
            if not (-180 <= x0 <= 180 and -180 <= x1 <= 180 and lon_ok and -90 <= y0 < y1 <= 90):
                raise ValueError(f"bbox {self.bbox} is not lon_min, lat_min, lon_max, lat_max in degrees with "
                                 "lat_min < lat_max and lon_min < lon_max (or lon_min > lon_max for a box "
                                 "across the antimeridian, at most 180 degrees wide)")
        return self


class WeightConfig(_OmitWhenUnset, Section):
    """Sampling weights: a density raster (sampled proportionally to its values) or a point layer
    (sampled around its points, with ``jitter_m`` Gaussian spread)."""

    _omit_when_none: ClassVar[tuple[str, ...]] = ("crs",)

    raster: str | None = None
    points: str | None = None
    jitter_m: float = Field(default=250.0, ge=0)
    crs: str | None = Field(default=None, description="CRS of the density raster when it has none")

    @model_validator(mode="after")
    def _one_of(self) -> WeightConfig:
        if (self.raster is None) == (self.points is None):
            raise ValueError("give exactly one of raster, points")
        if self.raster is None and self.crs is not None:
            raise ValueError("crs applies to a density raster only")
        return self


class LocationsConfig(Section):
    """Sample ``n`` locations in ``region`` (or take a user's point table from ``points``)."""

    region: RegionConfig | None = None
    n: int | None = Field(default=None, ge=1)
    weight: WeightConfig | None = None
    points: str | None = Field(default=None, description="CSV/Parquet/GeoParquet/vector file of points")
    lon_col: str = "lon"
    lat_col: str = "lat"
    id_col: str | None = None
    coverage: list[str] = Field(
        default_factory=list,
        description="rasters on whose data (valid pixels) a location must lie; default: all raster view sources",
    )
    block_size_m: float = Field(default=2000.0, gt=0, description="spatial block edge for later splits")

    @model_validator(mode="after")
    def _source(self) -> LocationsConfig:
        if self.points is None and (self.region is None or self.n is None):
            raise ValueError("give either points, or region and n")
        if self.points is not None and (self.region is not None or self.weight is not None):
            raise ValueError("points cannot be combined with region or weight")
        return self


class ViewConfig(Section):
    """Settings of one view: its ``kind`` (a registered view kind) and ``name`` (its folder under
    ``<workdir>/views/``). A view kind subclasses this with its own fields and a ``kind`` literal.

    ``path_fields`` names the fields holding file paths that are resolved against the config file's
    folder, besides the common ones (``source``, ``sources``, ``raster``, ``points``, ...)."""

    path_fields: ClassVar[tuple[str, ...]] = ()

    kind: str
    name: str

    def footprint_sources(self) -> list[str]:
        """Rasters whose footprint a location must lie in for this view (default: none)."""
        return []


class RasterViewConfig(_OmitWhenUnset, ViewConfig):
    """Chips from one or more rasters, stacked band-wise, on a local metric grid centred on each location.

    Exactly one of ``sources`` and ``stac``. A source is a path or a GDAL dataset name
    (``NETCDF:"x.nc":t2m``, ``/vsizip/a.zip/b.tif``, a URL); ``bands``, ``crs`` and ``nodata`` are per
    source (null = what the file declares). ``stac`` searches a STAC catalogue for the items under the
    locations' chips and composites their assets (one band each); it has no footprint of files, so it
    does not restrict where locations are sampled (``locations.region`` decides)."""

    _omit_when_none: ClassVar[tuple[str, ...]] = ("crs", "sources", "stac")
    path_fields: ClassVar[tuple[str, ...]] = ("catalog",)  # stac.catalog (URLs are kept as they are)

    kind: Literal["raster"] = "raster"
    name: str
    sources: list[str] | None = Field(default=None, min_length=1)
    stac: StacConfig | None = Field(default=None, description="a STAC search instead of sources")
    bands: list[list[int] | None] | None = Field(
        default=None, description="per source: 1-based band indexes to use (null = all but an alpha band, which masks the others)"
    )
    chip_size: int = Field(default=16, ge=1, le=1024, description="chip height and width in pixels")
    resolution_m: float = Field(default=30.0, gt=0, description="ground size of one chip pixel")
    resampling: Literal["nearest", "bilinear"] = "bilinear"
    min_valid_fraction: float = Field(default=0.9, ge=0, le=1)
    nodata: list[float | None] | None = Field(
        default=None, description="per source nodata override (null = what the file declares)"
    )
    crs: list[str | None] | None = Field(
        default=None, description="per source CRS override, e.g. EPSG:4326 for a NetCDF without one (null = the "
        "file's)"
    )
    dtype: Literal["float32", "float16"] = "float32"

    @model_validator(mode="after")
    def _lengths(self) -> RasterViewConfig:
        if (self.sources is None) == (self.stac is None):
            raise ValueError("give exactly one of sources (raster files) and stac (a STAC search), got "
                             + ("both" if self.sources is not None else "neither"))
        if self.stac is not None:
            given = [k for k in ("bands", "nodata", "crs") if getattr(self, k) is not None]
            if given:
                raise ValueError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to sources, not to stac: a STAC view's bands are "
                                 "stac.assets, its nodata stac.nodata, and each asset's CRS is its own")
            return self
        for key in ("bands", "nodata", "crs"):
            val = getattr(self, key)
            if val is not None and len(val) != len(self.sources):
                raise ValueError(f"{key} has {len(val)} entries but there are {len(self.sources)} sources")
        return self

    def footprint_sources(self) -> list[str]:
        """Locations are kept on the sources' data (unless ``locations.coverage`` says); a STAC view
        has no files to keep them on."""
        return list(self.sources or [])


_SHA256_HEX = frozenset("0123456789abcdef")


class OsmViewConfig(_OmitWhenUnset, ViewConfig):
    """Per-location OSM features: H3 hex tensor, radius aggregates and capped nearest distances.

    Exactly one of ``source`` (a local file, or an http(s) URL downloaded once into the cache and
    checked against ``source_sha256`` when given) and ``overpass`` (the catalogue's tags over the
    locations' extent from an Overpass API)."""

    _omit_when_none: ClassVar[tuple[str, ...]] = ("source", "source_sha256", "overpass")

    kind: Literal["osm"] = "osm"
    name: str
    source: str | None = Field(default=None, description=".osm.pbf, .osm XML, or GeoParquet of features; a path "
                               "or an http(s) URL")
    source_sha256: str | None = Field(default=None, description="sha256 of a downloaded source (hex)")
    overpass: OverpassConfig | None = Field(default=None, description="an Overpass API instead of source")
    catalogue: str | None = Field(default=None, description="YAML tag-to-category catalogue (default built in)")
    h3_resolution: int = Field(default=9, ge=0, le=15, description="H3 resolution of the 7 x 7 hex tensor")
    radii_m: list[float] = Field(default_factory=lambda: [250.0, 1000.0], min_length=1,
                                 description="disk radii (m) of the count / length / area aggregates")
    max_distance_m: float = Field(default=5000.0, gt=0, description="cap of the nearest-feature distances")

    @model_validator(mode="after")
    def _radii(self) -> OsmViewConfig:
        if (self.source is None) == (self.overpass is None):
            raise ValueError("give exactly one of source (a file or an http(s) URL) and overpass (an Overpass "
                             "API), got " + ("both" if self.source is not None else "neither"))
        if self.source_sha256 is not None:
            if self.source is None or not self.source.startswith(("http://", "https://")):
                raise ValueError("source_sha256 applies to a source downloaded from an http(s) URL")
            hexa = self.source_sha256.lower().removeprefix("sha256:")
            if len(hexa) != 64 or not set(hexa) <= _SHA256_HEX:
                raise ValueError(f"source_sha256 {self.source_sha256!r} is not 64 hexadecimal digits")
        if any(not (0 < r <= 100_000) for r in self.radii_m):
            raise ValueError(f"radii_m must be in (0, 100000] metres, got {self.radii_m}")
        if len(set(self.radii_m)) != len(self.radii_m):
            raise ValueError(f"radii_m repeat: {self.radii_m}")
        return self


def _validate_view(value: Any) -> ViewConfig:
    """A view's settings, validated by the model its ``kind`` registered (see the module docstring).

    Errors keep pydantic's form, located under the kind (``views.0.raster.chip_size``)."""
    from geoembed.errors import ConfigError
    from geoembed.views.registry import view_kind, view_kinds

    if isinstance(value, ViewConfig):
        return value
    if not isinstance(value, dict):
        raise PydanticCustomError("view_type", "a view is a mapping with a kind and a name")
    kind = value.get("kind")
    if kind is None:
        raise PydanticCustomError("view_kind", "a view needs a kind (one of: {kinds})",
                                  {"kinds": ", ".join(view_kinds())})
    try:
        model = view_kind(kind).config_model
    except ConfigError as err:
        raise PydanticCustomError("view_kind", "{error}", {"error": str(err)}) from None
    try:
        return model.model_validate(value)
    except ValidationError as err:  # the same errors, located under the kind
        raise ValidationError.from_exception_data(model.__name__, [
            InitErrorDetails(type=PydanticCustomError(e["type"], e["msg"]), loc=(kind, *e["loc"]), input=e["input"])
            for e in err.errors()]) from None


AnyViewConfig = SerializeAsAny[Annotated[ViewConfig, PlainValidator(_validate_view)]]
"""A view's settings in a config: validated by its kind's model, written out with all its fields."""
