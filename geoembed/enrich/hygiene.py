"""Coordinate hygiene: parse longitude/latitude columns and classify every row as valid or not, and why.

Each row gets a reason code (0 = valid). Codes are checked in this order, the first that applies wins:
``missing`` (null, NaN, empty text), ``non_numeric`` (text that is not a number), ``infinite``,
``out_of_range`` (|lon| > 180 or |lat| > 90), ``null_island`` (exactly (0, 0): almost always a
failed geocode), ``not_point`` (a geometry that is not a single point). A table of polygons
(:mod:`geoembed.enrich.polygons`) has its own: ``not_polygon``, ``empty``, ``invalid_geometry``,
``zero_area``, ``zero_weight``. After embedding, a row whose embedding is NaN or infinite although its
coordinates are valid (weights that overflow there) gets ``non_finite_embedding``. Rows are never dropped: the caller decides whether invalid rows are an
error or get empty embeddings.

Two verdicts are taken on the whole table, from counts summed over its chunks (so neither chunk size
nor row order can change them), once every chunk has been seen: swapped columns (most finite points
fall outside the training footprint but inside it when longitude and latitude are exchanged) and
projected coordinates given as degrees (most finite values are beyond any angle: metres or feet).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from geoembed.errors import InputError

OK = 0
MISSING = 1
NON_NUMERIC = 2
INFINITE = 3
OUT_OF_RANGE = 4
NULL_ISLAND = 5
NOT_POINT = 6
NOT_POLYGON = 7
EMPTY = 8
INVALID_GEOMETRY = 9
ZERO_AREA = 10
ZERO_WEIGHT = 11
NON_FINITE_EMBEDDING = 12

REASONS: tuple[str | None, ...] = (
    None, "missing", "non_numeric", "infinite", "out_of_range", "null_island", "not_point",
    "not_polygon", "empty", "invalid_geometry", "zero_area", "zero_weight", "non_finite_embedding",
)

# Text that means "no value" in a coordinate column (compared case-insensitively, after stripping).
_NULL_TEXT = {"", "na", "n/a", "nan", "null", "none", "-nan", "#n/a", "-"}


def parse_numeric(values) -> tuple[np.ndarray, np.ndarray]:
    """Parse one coordinate column to float64 with a per-row reason code.

    Accepts a pyarrow Array/ChunkedArray, a pandas Series or a numpy array (numeric, text or object).
    Returns ``(values, codes)``: ``values`` is float64 (NaN where unparseable), ``codes`` uint8 with
    MISSING, NON_NUMERIC or INFINITE (or OK). Range checks are done by :func:`classify`.
    Raises InputError for a column type that cannot hold coordinates (dates, nested values, ...).
    """
    try:
        import pyarrow as pa
    except ImportError:  # pragma: no cover - pyarrow is a core dependency
        pa = None
    if pa is not None and isinstance(values, pa.ChunkedArray | pa.Array):
        return _parse_arrow(values)
    if isinstance(values, pd.Series | pd.Index):
        if isinstance(values.dtype, pd.ArrowDtype) or values.dtype == "string" or str(values.dtype) == "str":
            return _parse_object(values.to_numpy(dtype=object, na_value=None))
        if pd.api.types.is_bool_dtype(values.dtype) or pd.api.types.is_datetime64_any_dtype(values.dtype):
            raise InputError(f"a coordinate column has type {values.dtype}, not numeric")
        if pd.api.types.is_numeric_dtype(values.dtype):
            arr = values.to_numpy(dtype=np.float64, na_value=np.nan)
            return arr, _float_codes(arr)
        values = values.to_numpy(dtype=object)
    arr = np.asarray(values)
    if arr.dtype.kind in "fiu":
        arr = arr.astype(np.float64, copy=False)
        return arr, _float_codes(arr)
    if arr.dtype.kind in "OUS":
        return _parse_object(arr.astype(object, copy=False))
    raise InputError(f"a coordinate column has type {arr.dtype}, not numeric")


def _float_codes(arr: np.ndarray) -> np.ndarray:
    codes = np.zeros(arr.shape, dtype=np.uint8)
    codes[np.isnan(arr)] = MISSING
    codes[np.isinf(arr)] = INFINITE
    return codes


def _parse_object(obj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Parse an object array of numbers, text or None (the slow path: only for text or mixed input)."""
    ser = pd.Series(obj, dtype=object)
    null = ser.isna().to_numpy().copy()
    text = ser.where(null, ser.astype(str)).str.strip()
    null |= text.str.lower().isin(_NULL_TEXT).to_numpy()
    out = pd.to_numeric(text.where(~null), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    codes = np.zeros(len(out), dtype=np.uint8)
    codes[np.isnan(out)] = NON_NUMERIC
    codes[np.isinf(out)] = INFINITE
    codes[null] = MISSING
    return out, codes


def _parse_arrow(col) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    t = col.type
    if pa.types.is_null(t):
        return np.full(len(col), np.nan), np.full(len(col), MISSING, dtype=np.uint8)
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        arr = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
        # Nulls arrive as NaN from to_numpy on a float column: both are "missing".
        return arr, _float_codes(arr)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        try:
            arr = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return _parse_object(col.to_numpy(zero_copy_only=False))
        codes = _float_codes(arr)
        return arr, codes
    raise InputError(f"a coordinate column has type {t}, not numeric")


def classify(lon: np.ndarray, lat: np.ndarray, lon_codes: np.ndarray, lat_codes: np.ndarray) -> np.ndarray:
    """Combine per-column parse codes with range and (0, 0) checks into one reason code per row."""
    codes = np.where(lon_codes != OK, lon_codes, lat_codes).astype(np.uint8)
    with np.errstate(invalid="ignore"):
        out = (np.abs(lon) > 180.0) | (np.abs(lat) > 90.0)
    codes[(codes == OK) & out] = OUT_OF_RANGE
    codes[(codes == OK) & (lon == 0.0) & (lat == 0.0)] = NULL_ISLAND
    return codes


def reason_names(codes: np.ndarray) -> np.ndarray:
    """Reason strings (object array, None where valid) for an array of codes."""
    lut = np.array(REASONS, dtype=object)
    return lut[codes]


@dataclass
class HygieneReport:
    """Running counts over a stream of chunks, for the final error message and summary."""

    rows: int = 0
    invalid: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    examples: list[tuple[int, str, object, object]] = field(default_factory=list)
    finite: int = 0
    inside: int = 0
    swapped_inside: int = 0
    projected: int = 0
    projected_example: tuple | None = None
    max_examples: int = 10
    kind: str = "point"  # "polygon": examples hold a description of the geometry, not lon/lat

    def add(self, codes: np.ndarray, row_offset: int, lon_raw=None, lat_raw=None) -> None:
        """Count one chunk's codes; keep the first few bad rows with their raw values."""
        self.rows += len(codes)
        bad = np.flatnonzero(codes != OK)
        if not len(bad):
            return
        self.invalid += len(bad)
        counts = np.bincount(codes[bad], minlength=len(REASONS))
        for code in np.flatnonzero(counts):
            name = REASONS[code]
            self.by_reason[name] = self.by_reason.get(name, 0) + int(counts[code])
        for i in bad[: max(0, self.max_examples - len(self.examples))]:
            self.examples.append((row_offset + int(i), REASONS[codes[i]],
                                  _raw(lon_raw, i), _raw(lat_raw, i)))

    def add_embedding_failures(self, rows: np.ndarray, row_offset: int, lon_raw=None, lat_raw=None) -> None:
        """Count rows (indices within a chunk already counted by :meth:`add`) whose embedding is not
        finite: they become invalid with the reason ``non_finite_embedding``."""
        if not len(rows):
            return
        self.invalid += len(rows)
        name = REASONS[NON_FINITE_EMBEDDING]
        self.by_reason[name] = self.by_reason.get(name, 0) + len(rows)
        for i in rows[: max(0, self.max_examples - len(self.examples))]:
            self.examples.append((row_offset + int(i), name, _raw(lon_raw, i), _raw(lat_raw, i)))
        self.examples.sort(key=lambda e: e[0])

    def add_footprint(self, finite: int, inside: int, swapped_inside: int) -> None:
        """Count how many finite points fall inside the footprint as given and when swapped."""
        self.finite += finite
        self.inside += inside
        self.swapped_inside += swapped_inside

    def add_projected(self, n: int, example: tuple | None) -> None:
        """Count finite values beyond any angle (projected metres or feet given as degrees)."""
        self.projected += n
        if self.projected_example is None and example is not None:
            self.projected_example = example

    def looks_projected(self) -> bool:
        """At least half the finite coordinates are far beyond degrees."""
        return self.projected > 0 and self.projected >= 0.5 * self.finite

    def verdict(self, origin: str, lon_col: str, lat_col: str, how_crs: str) -> str | None:
        """The whole-table error, if any: projected coordinates first, then swapped columns."""
        from geoembed.io.tables import projected_message

        if self.looks_projected():
            return projected_message(origin, lon_col, lat_col, self.projected, self.finite,
                                     self.projected_example, how_crs)
        if self.looks_swapped():
            return self.swapped_message(origin, lon_col, lat_col)
        return None

    def counts(self) -> dict:
        """The verdict counts, as recorded in an enriched part's totals."""
        return {"finite": self.finite, "inside": self.inside, "swapped_inside": self.swapped_inside,
                "projected": self.projected}

    def looks_swapped(self) -> bool:
        """Most finite points lie outside the footprint but (at least half) inside it when swapped."""
        if self.finite == 0:
            return False
        frac_swapped = self.swapped_inside / self.finite
        frac_inside = self.inside / self.finite
        return frac_swapped >= 0.5 and frac_swapped > 2.0 * frac_inside

    def swapped_message(self, origin: str, lon_col: str, lat_col: str) -> str:
        return (
            f"{origin}: longitude and latitude look swapped: {self.finite - self.inside:,} of "
            f"{self.finite:,} points lie outside the model's training footprint, but "
            f"{self.swapped_inside:,} would lie inside it with '{lon_col}' and '{lat_col}' exchanged. "
            f"Check which column holds longitude (x) and which latitude (y); pass --lon-col/--lat-col "
            f"(or lon_col=/lat_col=) to name them."
        )

    def invalid_message(self, origin: str, lon_col: str, lat_col: str,
                        where: Callable[[int], str] | None = None) -> str:
        """The error for invalid rows; ``where`` names a row (default ``row N``; for a folder of parts,
        the part and the row within it)."""
        reasons = ", ".join(f"{k}: {v:,}" for k, v in sorted(self.by_reason.items(), key=lambda kv: -kv[1]))
        model = REASONS[NON_FINITE_EMBEDDING] in self.by_reason
        what = "are invalid" if model else "have invalid coordinates"
        lines = [
            f"{origin}: {self.invalid:,} of {self.rows:,} rows {what} ({reasons}); "
            f"first bad rows (0-based row number{' within its file' if where else ''}, reason, {lon_col}, "
            f"{lat_col}):"
        ]
        if self.kind == "polygon":
            lines[0] = (f"{origin}: {self.invalid:,} of {self.rows:,} polygons are invalid ({reasons}); first "
                        f"bad rows (0-based row number{' within its file' if where else ''}, reason, detail):")
        for row, reason, lo, la in self.examples:
            at = where(row) if where else f"row {row}"
            if self.kind == "polygon":
                lines.append(f"  {at}: {reason} ({lo})")
            else:
                lines.append(f"  {at}: {reason} ({lon_col}={lo!r}, {lat_col}={la!r})")
        legend = "; ".join(f"{k} = {_LEGEND[k]}" for k in REASONS[1:] if k in self.by_reason)
        lines.append(f"Reasons: {legend}.")
        if model:
            lines.append("The bundle's encoder gives NaN or infinite embeddings at valid coordinates: its weights "
                         "overflow there (rows are embedded until the first invalid one, so later ones are not "
                         "counted). Check or rebuild the bundle.")
        lines.append(f"Fix these {'polygons' if self.kind == 'polygon' else 'rows'}, or pass --on-invalid "
                     f"null (on_invalid='null') to give them empty embeddings and a geoembed_invalid flag.")
        return "\n".join(lines)


_LEGEND = {
    "missing": "null, NaN or empty",
    "non_numeric": "text that is not a number",
    "infinite": "inf or -inf",
    "out_of_range": "|lon| > 180 or |lat| > 90 degrees",
    "null_island": "exactly (0, 0), usually a failed geocode",
    "not_point": "a geometry that is not a single point",
    "not_polygon": "a geometry that is not a polygon or multipolygon",
    "empty": "an empty geometry",
    "invalid_geometry": "unreadable, or invalid other than by self-intersection (which is repaired)",
    "zero_area": "a polygon without area (a line or a point)",
    "zero_weight": "the weight raster is 0 or nodata at every sampled point",
    "non_finite_embedding": "the model's embedding is NaN or infinite there",
}


def _raw(raw, i):
    if raw is None:
        return None
    try:
        v = raw[int(i)]
    except Exception:  # noqa: BLE001 - best effort for the message only
        return None
    if hasattr(v, "as_py"):
        v = v.as_py()
    if isinstance(v, np.generic):
        v = v.item()
    return v
