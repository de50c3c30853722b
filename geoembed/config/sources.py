"""Configuration blocks of the remote sources: a STAC search behind a raster view (``stac:``) and an
Overpass query behind an OSM view (``overpass:``).

Both are :class:`geoembed.config.base.Section` models (unknown keys and wrong types are errors naming
the key). ``datetime`` takes what YAML gives: a date (``2023-06-01`` is read as a date), a datetime, a
range string ``2023-06-01/2023-08-31`` with ``..`` for an open end, or a pair ``[start, end]`` (``null``
= open); it is kept as one canonical string (``2023-06-01/2023-08-31``), which is what STAC APIs take.
A date stands for its whole day, a month (``2023-06``) or a year (``2023``) for all of it, as in
pystac-client: the range above ends at 2023-08-31T23:59:59.999999Z.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from geoembed.config.base import Section

__all__ = ["OverpassConfig", "QUERY_OPS", "StacConfig", "StacMaskConfig", "parse_interval"]

# the STAC API query extension's operators
QUERY_OPS = ("eq", "neq", "lt", "lte", "gt", "gte", "startsWith", "endsWith", "contains", "in")
_HOOK = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_YEAR = re.compile(r"^\d{4}$")
_MONTH = re.compile(r"^\d{4}-\d{2}$")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")

QueryValue = bool | int | float | str | list[bool | int | float | str]


def _bound_text(v: Any) -> str:
    """One end of a datetime range as canonical text (``..`` when open)."""
    if v is None:
        return ".."
    if isinstance(v, dt.datetime):
        if v.tzinfo is not None:
            v = v.astimezone(dt.UTC).replace(tzinfo=None)
        return v.isoformat() + "Z"
    if isinstance(v, dt.date):
        return v.isoformat()
    if isinstance(v, str):
        s = v.strip()
        if s in ("", ".."):
            return ".."
        _parse_bound(s, end=False)  # raises on a bad value
        return s
    raise ValueError(f"{v!r} is not a date, a datetime or '..'")


def _parse_bound(s: str, *, end: bool) -> dt.datetime | None:
    """A bound's instant (naive UTC): dates, months and years expand to their first or last
    microsecond; ``..`` is None."""
    if s == "..":
        return None
    try:
        if _YEAR.match(s):
            y = int(s)
            return dt.datetime(y, 12, 31, 23, 59, 59, 999999) if end else dt.datetime(y, 1, 1)
        if _MONTH.match(s):
            y, m = (int(p) for p in s.split("-"))
            if end:
                return dt.datetime(y, m, calendar.monthrange(y, m)[1], 23, 59, 59, 999999)
            return dt.datetime(y, m, 1)
        if _DAY.match(s):
            d = dt.date.fromisoformat(s)
            return dt.datetime.combine(d, dt.time.max if end else dt.time.min)
        t = dt.datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(f"{s!r} is not a date (2023-06-01, 2023-06, 2023), an ISO datetime "
                         "(2023-06-01T10:00:00Z) or '..'") from None
    if t.tzinfo is not None:
        t = t.astimezone(dt.UTC).replace(tzinfo=None)
    return t


def parse_interval(text: str | None) -> tuple[dt.datetime | None, dt.datetime | None]:
    """(start, end) instants (naive UTC, None = open) of a canonical datetime string; a single date or
    datetime is an interval from its first to its last instant."""
    if text is None:
        return None, None
    parts = text.split("/")
    if len(parts) == 1:
        return _parse_bound(parts[0], end=False), _parse_bound(parts[0], end=True)
    return _parse_bound(parts[0], end=False), _parse_bound(parts[1], end=True)


class StacMaskConfig(Section):
    """A per-pixel classification asset (e.g. Sentinel-2 ``scl``): pixels whose class is not in ``keep``
    become no data in every band of that item."""

    asset: str = Field(min_length=1)
    keep: list[int] = Field(min_length=1, description="classes to keep (e.g. [4, 5, 6, 7, 11] for SCL)")


class StacConfig(Section):
    """Raster chips from the items of a STAC search, composited over time."""

    catalog: str = Field(min_length=1, description="a STAC API URL, or a path or URL of a static catalog.json")
    collections: list[str] | None = Field(default=None, min_length=1)
    assets: list[str] = Field(min_length=1, description="asset keys; each becomes one chip band, in this order")
    datetime: str | None = Field(default=None, description="date, datetime, or range 'start/end' ('..' = open)")
    query: dict[str, dict[str, QueryValue]] | None = Field(
        default=None, description='STAC query extension, e.g. {"eo:cloud_cover": {"lt": 20}}')
    mask: StacMaskConfig | None = None
    composite: Literal["median", "first"] = Field(
        default="median", description="median over items, or the first valid item (least cloudy first)")
    nodata: float | None = Field(default=None, description="nodata of the data assets when they declare none")
    sign: str | None = Field(default=None, description="'module:function' that signs an asset href for reading")
    max_items: int = Field(default=2000, ge=1, description="more items than this is an error (narrow the search)")
    timeout_s: float = Field(default=60.0, gt=0, description="HTTP timeout of catalogue requests and COG reads")
    retries: int = Field(default=3, ge=0, le=10, description="retries of a failed catalogue request")

    @field_validator("datetime", mode="before")
    @classmethod
    def _datetime(cls, v: Any) -> Any:
        if v is None:
            return None
        if isinstance(v, list | tuple):
            if len(v) != 2:
                raise ValueError(f"a datetime range is [start, end], got {len(v)} values")
            text = f"{_bound_text(v[0])}/{_bound_text(v[1])}"
        elif isinstance(v, str) and "/" in v:
            parts = v.split("/")
            if len(parts) != 2:
                raise ValueError(f"{v!r} is not 'start/end'")
            text = f"{_bound_text(parts[0])}/{_bound_text(parts[1])}"
        else:
            text = _bound_text(v)
            if text == "..":
                raise ValueError("a single datetime cannot be open ('..'); give a range such as '../2023-08-31'")
            return text
        start, end = parse_interval(text)
        if start is None and end is None:
            raise ValueError(f"{text!r}: at least one end of the range must be given")
        if start is not None and end is not None and start > end:
            raise ValueError(f"{text!r}: the start is after the end")
        return text

    @field_validator("query")
    @classmethod
    def _query(cls, q: dict | None) -> dict | None:
        for field, ops in (q or {}).items():
            if not ops:
                raise ValueError(f"query.{field} has no operator (use e.g. {{'lt': 20}})")
            for op, val in ops.items():
                if op not in QUERY_OPS:
                    raise ValueError(f"query.{field}: unknown operator {op!r} (one of {', '.join(QUERY_OPS)})")
                if (op == "in") != isinstance(val, list):
                    raise ValueError(f"query.{field}.{op}: " + ("'in' takes a list" if op == "in"
                                                                 else "takes a single value, not a list"))
        return q

    @field_validator("sign")
    @classmethod
    def _sign(cls, v: str | None) -> str | None:
        if v is not None and not _HOOK.match(v):
            raise ValueError(f"{v!r} is not 'module:function' (e.g. planetary_computer:sign)")
        return v

    @model_validator(mode="after")
    def _unique_assets(self) -> StacConfig:
        dup = sorted({a for a in self.assets if self.assets.count(a) > 1})
        if dup:
            raise ValueError(f"assets repeat: {dup}")
        return self


class OverpassConfig(Section):
    """OSM features of the catalogue's tags over the locations' extent, from an Overpass API."""

    url: str = Field(default="https://overpass-api.de/api/interpreter", description="interpreter endpoint")
    timeout_s: int = Field(default=180, ge=1, le=3600, description="server-side query timeout, seconds")
    tile_deg: float = Field(default=0.1, gt=0, le=5, description="larger extents are queried in tiles of "
                            "at most this many degrees a side")
    retries: int = Field(default=4, ge=0, le=10, description="retries of a tile after 429/5xx/timeouts")
    backoff_s: float = Field(default=5.0, ge=0, description="first retry delay; doubles on each retry")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"{v!r} is not an http(s) URL")
        return v
