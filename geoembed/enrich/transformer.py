"""``LocationEmbedder``: a scikit-learn transformer from (lon, lat) columns to embedding features.

    from sklearn.pipeline import make_pipeline
    from sklearn.linear_model import PoissonRegressor
    model = make_pipeline(LocationEmbedder("runs/demo/bundle"), PoissonRegressor())
    model.fit(policies[["lon", "lat"]], claims)

Coordinates are taken by column name (``lon_col``/``lat_col``, default "lon"/"lat") from a DataFrame;
only those two columns are read, so other columns may differ between ``fit`` and ``transform`` (fit on
a reference table, transform a policy table). For a plain array, give positions (``lon_col=0,
lat_col=1``); then the array layout must match the one seen in ``fit`` (scikit-learn's usual rules).
A GeoDataFrame without those columns gives its geometry: points as they are (any CRS), polygons one
embedding each, the mean over ``points_per_polygon`` points sampled uniformly in it
(:mod:`geoembed.enrich.polygons`). ``crs`` names the CRS of x/y columns in projected units (or of a
geometry without one). Invalid coordinates follow :mod:`geoembed.enrich.hygiene`: an error by default,
or NaN rows with ``on_invalid="null"``. Swapped columns and projected coordinates given as degrees are
always an error. ``transform`` of 0 rows returns 0 rows (``fit`` needs at least one, as scikit-learn
requires).
"""

from __future__ import annotations

import logging
import os

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_array, check_is_fitted

from geoembed.enrich import hygiene as hy
from geoembed.enrich.enricher import DEFAULT_EMBED_BATCH, Enricher, load_bundle_cached
from geoembed.enrich.polygons import DEFAULT_POINTS, PolygonSampler
from geoembed.errors import InputError
from geoembed.io.enriched import embedding_names
from geoembed.io.reduction import Reduction, reduced_names

log = logging.getLogger(__name__)

_HOW_CRS = ("Pass crs='EPSG:XXXX' naming the CRS of these columns (e.g. EPSG:31985 for SIRGAS 2000 / UTM "
            "zone 25S); they are then converted to lon/lat.")


class _Polygons:
    """A GeoDataFrame's polygons, for :meth:`LocationEmbedder._polygons`."""

    def __init__(self, geoms: np.ndarray, transformer, geographic: bool) -> None:
        self.geoms, self.transformer, self.geographic = geoms, transformer, geographic


class LocationEmbedder(TransformerMixin, BaseEstimator):
    """Embed (lon, lat) with a trained geoembed bundle; features ``emb_0 .. emb_{d-1}``.

    Parameters
    ----------
    bundle : path of a model bundle folder (written by ``geoembed train``).
    lon_col, lat_col : column names (DataFrames) or integer positions (arrays) of longitude and
        latitude in degrees, EPSG:4326.
    on_invalid : "error" (default: raise, naming the first bad rows) or "null" (NaN embeddings).
    n_components : if set, fit a PCA on the embeddings of the ``fit`` data and output that many
        components ``emb_pc_0 ..`` (whitened when ``whiten=True``).
    reduction : path of a reduction JSON file written by ``geoembed enrich fit-reduction`` (instead
        of ``n_components``).
    dtype : output dtype, "float64" (default, what GLM solvers expect) or "float32".
    embed_batch : rows per encoder forward pass.
    crs : CRS (e.g. "EPSG:31985") of the lon_col/lat_col values when they are projected x/y, or of a
        GeoDataFrame's geometry that has none.
    points_per_polygon, polygon_seed, weight_raster : for a GeoDataFrame of polygons, the points sampled
        in each (deterministic for the seed) and an optional density raster weighting them.
    """

    def __init__(self, bundle=None, *, lon_col="lon", lat_col="lat", on_invalid="error",
                 n_components=None, whiten=False, reduction=None, dtype="float64",
                 embed_batch=DEFAULT_EMBED_BATCH, crs=None, points_per_polygon=DEFAULT_POINTS,
                 polygon_seed=0, weight_raster=None):
        self.bundle = bundle
        self.lon_col = lon_col
        self.lat_col = lat_col
        self.on_invalid = on_invalid
        self.n_components = n_components
        self.whiten = whiten
        self.reduction = reduction
        self.dtype = dtype
        self.embed_batch = embed_batch
        self.crs = crs
        self.points_per_polygon = points_per_polygon
        self.polygon_seed = polygon_seed
        self.weight_raster = weight_raster

    # ------------------------------------------------------------------------------------- sklearn API
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = self.on_invalid == "null"
        tags.input_tags.string = True  # coordinates given as text are parsed (non-numbers are invalid)
        tags.transformer_tags.preserves_dtype = ["float64"] if self.dtype == "float64" else []
        return tags

    def fit(self, X, y=None):
        """Load the bundle, check ``X``'s coordinates, and fit the optional reduction on ``X``."""
        self._check_params()
        bundle = self._load()
        coords = self._coordinates(X, reset=True)
        enricher = Enricher(bundle, on_invalid=self.on_invalid, embed_batch=self.embed_batch, workers=1)
        if isinstance(coords, _Polygons):
            emb_all = self._polygons(enricher, coords)
            valid = np.isfinite(emb_all).all(axis=1)
        else:
            lon, lat, codes, raw = coords
            self._check_rows(enricher, lon, lat, codes, raw)
            valid = codes == hy.OK
        self.bundle_fingerprint_ = bundle.fingerprint
        self.embedding_dim_ = int(bundle.embedding_dim)
        self.out_of_support_km_ = float(bundle.out_of_support_km)
        self.reduction_ = None
        if self.reduction is not None:
            red = Reduction.load(self.reduction)
            red.check_bundle(bundle.fingerprint, self.embedding_dim_, origin=f"reduction {self.reduction}")
            self.reduction_ = red
        elif self.n_components is not None:
            if isinstance(coords, _Polygons):
                emb = emb_all[valid]
            else:
                emb = self._embed(enricher, lon, lat, codes, raw)
                emb = emb[codes == hy.OK]
            if len(emb) <= self.n_components:
                raise ValueError(f"n_components={self.n_components} needs more than {self.n_components} "
                                 f"valid rows to fit a reduction; got {len(emb)} sample(s)")
            self.reduction_ = Reduction.fit(emb, int(self.n_components),
                                            method="whiten" if self.whiten else "pca",
                                            bundle_fingerprint=bundle.fingerprint)
        self._enricher = Enricher(bundle, on_invalid=self.on_invalid, reduction=self.reduction_,
                                  embed_batch=self.embed_batch, workers=1)
        return self

    def transform(self, X):
        """``(n, k)`` array of embeddings (or reduced components); NaN rows for invalid coordinates."""
        check_is_fitted(self, "bundle_fingerprint_")
        enricher = self._get_enricher()
        coords = self._coordinates(X, reset=False)
        if isinstance(coords, _Polygons):
            return self._polygons(enricher, coords).astype(self.dtype, copy=False)
        lon, lat, codes, raw = coords
        inside = self._check_rows(enricher, lon, lat, codes, raw)
        valid = codes == hy.OK
        if valid.any():
            far = enricher.support_km(lon, lat, valid, inside) > self.out_of_support_km_
            if far.any():
                log.warning("%d of %d rows lie more than %g km outside the bundle's training footprint; "
                            "their embeddings are extrapolations", int(far.sum()), len(lon),
                            self.out_of_support_km_)
        return self._embed(enricher, lon, lat, codes, raw).astype(self.dtype, copy=False)

    def get_feature_names_out(self, input_features=None):
        """``emb_0 .. emb_{d-1}`` (or ``emb_pc_0 .. emb_pc_{k-1}`` with a reduction)."""
        check_is_fitted(self, "bundle_fingerprint_")
        if input_features is not None:
            from sklearn.utils.validation import _check_feature_names_in

            _check_feature_names_in(self, input_features)
        if self.reduction_ is not None:
            return np.asarray(reduced_names(self.reduction_.n_components), dtype=object)
        return np.asarray(embedding_names(self.embedding_dim_), dtype=object)

    # ------------------------------------------------------------------------------------------ helpers
    def _check_params(self) -> None:
        if self.bundle is None:
            raise ValueError("LocationEmbedder needs bundle= (the path of a model bundle folder)")
        if self.on_invalid not in ("error", "null"):
            raise ValueError(f"on_invalid must be 'error' or 'null', got {self.on_invalid!r}")
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"dtype must be 'float64' or 'float32', got {self.dtype!r}")
        if self.n_components is not None and self.reduction is not None:
            raise ValueError("give either n_components (fit a reduction here) or reduction (a fitted "
                             "reduction file), not both")
        if self.n_components is not None and (not isinstance(self.n_components, int | np.integer)
                                              or self.n_components < 1):
            raise ValueError(f"n_components must be a positive integer, got {self.n_components!r}")
        for name in ("lon_col", "lat_col"):
            v = getattr(self, name)
            if not isinstance(v, str | int | np.integer) or isinstance(v, bool):
                raise ValueError(f"{name} must be a column name or an integer position, got {v!r}")
        if self.lon_col == self.lat_col:
            raise ValueError(f"lon_col and lat_col are both {self.lon_col!r}")
        if self.whiten not in (True, False):
            raise ValueError(f"whiten must be True or False, got {self.whiten!r}")

    def _load(self):
        if isinstance(self.bundle, str | os.PathLike):
            return load_bundle_cached(self.bundle)
        if hasattr(self.bundle, "embed") and hasattr(self.bundle, "fingerprint"):
            return self.bundle  # an already loaded Bundle
        raise ValueError(f"bundle must be a bundle folder path, got {type(self.bundle).__name__}")

    def _get_enricher(self) -> Enricher:
        enricher = getattr(self, "_enricher", None)
        if enricher is None:
            bundle = self._load()
            if bundle.fingerprint != self.bundle_fingerprint_:
                raise InputError(f"the bundle at {self.bundle} changed since this LocationEmbedder was "
                                 f"fitted ({self.bundle_fingerprint_} -> {bundle.fingerprint}); refit it")
            enricher = Enricher(bundle, on_invalid=self.on_invalid, reduction=self.reduction_,
                                embed_batch=self.embed_batch, workers=1)
            self._enricher = enricher
        return enricher

    def __getstate__(self):
        # Pickles refer to the bundle by path and fingerprint (checked on first use), not by copy.
        state = super().__getstate__()
        state.pop("_enricher", None)
        return state

    def _embed(self, enricher: Enricher, lon, lat, codes, raw) -> np.ndarray:
        """Embeddings of the valid rows (NaN elsewhere); rows the model gives NaN/inf for are invalid
        rows (an error, or NaN with a warning under ``on_invalid="null"``)."""
        emb = enricher.embed(lon, lat, codes == hy.OK)
        report = hy.HygieneReport(rows=len(codes))
        bad = enricher.flag_non_finite(emb, codes, report, 0, *raw)
        if len(bad):
            if self.on_invalid == "error":
                raise InputError(report.invalid_message("X", str(self.lon_col), str(self.lat_col)))
            log.warning("%d of %d rows get NaN embeddings: the bundle's encoder gives NaN or infinite values "
                        "there (its weights overflow)", len(bad), len(codes))
        return emb

    def _check_rows(self, enricher: Enricher, lon, lat, codes, raw, labels=None) -> np.ndarray:
        report = hy.HygieneReport()
        inside = enricher.check(lon, lat, codes, report, 0, *raw)
        labels = labels or (str(self.lon_col), str(self.lat_col))
        problem = report.verdict("X", *labels, _HOW_CRS)
        if problem is not None:
            raise InputError(problem)
        if report.invalid and self.on_invalid == "error":
            raise InputError(report.invalid_message("X", *labels))
        return inside

    def _polygons(self, enricher: Enricher, poly: _Polygons) -> np.ndarray:
        """(n, k) float32 mean embeddings of a GeoDataFrame's polygons (NaN rows where invalid)."""
        sampler = PolygonSampler(self.points_per_polygon, self.polygon_seed, self.weight_raster)
        try:
            res = sampler.embed_geoms(enricher, poly.geoms, poly.transformer, poly.geographic)
        finally:
            sampler.close()
        report = hy.HygieneReport(kind="polygon")
        report.add(res.codes, 0, res.details, None)
        report.add_footprint(res.readable, 0, 0)
        report.add_projected(res.projected, res.projected_example)
        problem = report.verdict("X", "geometry.x", "geometry.y", _HOW_CRS)
        if problem is not None:
            raise InputError(problem)
        if report.invalid and self.on_invalid == "error":
            raise InputError(report.invalid_message("X", "geometry", ""))
        if res.repaired:
            log.warning("X: %d self-intersecting polygon(s) repaired with make_valid (rows %s)",
                        len(res.repaired), res.repaired[:10])
        return res.emb

    def _coordinates(self, X, reset: bool):
        """lon, lat (float64), reason codes and the raw columns, from a DataFrame (by name) or an array
        (by position)."""
        if hasattr(X, "columns") and hasattr(X, "shape"):
            geo = self._from_geometry(X, reset)
            return geo if geo is not None else self._from_frame(X, reset)
        if isinstance(self.lon_col, str) or isinstance(self.lat_col, str):
            X = check_array(X, dtype=None, ensure_all_finite=False, ensure_min_features=1)
            raise ValueError(f"X has no column names; pass a DataFrame with columns {self.lon_col!r} and "
                             f"{self.lat_col!r}, or set lon_col/lat_col to column positions for arrays")
        X = check_array(X, dtype=None, ensure_all_finite=False, ensure_min_features=1 if not reset else 2,
                        ensure_min_samples=1 if reset else 0, input_name="X")
        self._check_n_features(X.shape[1], reset)
        if reset:
            self.__dict__.pop("feature_names_in_", None)
        else:
            self._check_names(X)
        top = max(int(self.lon_col), int(self.lat_col))
        if top >= X.shape[1] or min(int(self.lon_col), int(self.lat_col)) < -X.shape[1]:
            raise ValueError(f"lon_col={self.lon_col}, lat_col={self.lat_col} but X has {X.shape[1]} "
                             f"feature(s)")
        return self._parse(X[:, int(self.lon_col)], X[:, int(self.lat_col)])

    def _from_frame(self, X, reset: bool):
        cols = list(X.columns)
        n_rows, n_cols = X.shape
        if n_rows == 0 and reset:
            raise ValueError(f"Found array with 0 sample(s) (shape=({n_rows}, {n_cols})) while a minimum "
                             f"of 1 is required by LocationEmbedder.")
        names = [str(c) for c in cols]
        all_str = all(isinstance(c, str) for c in cols)
        positional = not (isinstance(self.lon_col, str) and isinstance(self.lat_col, str))
        if positional:
            self._check_n_features(n_cols, reset)
            if n_cols < 2:
                raise ValueError(f"X has {n_cols} feature(s) (shape={X.shape}) while a minimum of 2 is "
                                 f"required.")
        if reset:
            self.n_features_in_ = n_cols
            if all_str:
                self.feature_names_in_ = np.asarray(cols, dtype=object)
            else:
                self.__dict__.pop("feature_names_in_", None)
        elif positional:
            self._check_names(X)

        def get(key):
            if isinstance(key, str):
                if key not in cols:
                    raise InputError(f"X lacks the coordinate column {key!r}; it has columns {names[:20]}"
                                     f"{' ...' if len(names) > 20 else ''}; set lon_col/lat_col")
                col = X[key]
            else:
                col = X.iloc[:, int(key)] if hasattr(X, "iloc") else X[:, int(key)]
            if hasattr(col, "columns"):
                raise InputError(f"X has more than one column named {key!r}")
            if not hasattr(col, "dtype") or type(col).__module__.startswith("polars"):
                col = np.asarray(col.to_numpy() if hasattr(col, "to_numpy") else col)
            return col

        return self._parse(get(self.lon_col), get(self.lat_col))

    def _from_geometry(self, X, reset: bool):
        """A GeoDataFrame without the coordinate columns: its points (lon, lat, codes, raw) or polygons."""
        geom = getattr(X, "geometry", None)
        if geom is None or not hasattr(geom, "crs") or (isinstance(self.lon_col, str) and self.lon_col in X.columns) \
                or not isinstance(self.lon_col, str):
            return None
        if reset:
            if len(X) == 0:
                raise ValueError("Found array with 0 sample(s) while a minimum of 1 is required by "
                                 "LocationEmbedder.")
            self.n_features_in_ = X.shape[1]
            self.feature_names_in_ = np.asarray([str(c) for c in X.columns], dtype=object)
        from geoembed.io.geocolumn import lonlat_transformer, parse_crs

        crs = geom.crs if self.crs is None else parse_crs(self.crs, "X", "crs")
        if crs is None:
            raise InputError("X: the GeoDataFrame's geometry has no CRS; set one (X.set_crs('EPSG:XXXX')) or "
                             "pass crs=")
        geoms = np.asarray(geom.values, dtype=object)
        transformer = lonlat_transformer(crs)
        import shapely

        if np.isin(shapely.get_type_id(geoms), (3, 6)).any():
            return _Polygons(geoms, transformer, bool(crs.is_geographic))
        missing = shapely.is_missing(geoms) | shapely.is_empty(geoms)
        is_pt = shapely.get_type_id(geoms) == 0
        x = np.full(len(geoms), np.nan)
        y = np.full(len(geoms), np.nan)
        ok = is_pt & ~missing
        x[ok], y[ok] = shapely.get_x(geoms[ok]), shapely.get_y(geoms[ok])
        lon, lat = (x, y)
        if transformer is not None and ok.any():
            lon, lat = x.copy(), y.copy()
            lon[ok], lat[ok] = transformer.transform(x[ok], y[ok])
        codes = hy.classify(lon, lat, hy._float_codes(lon), hy._float_codes(lat))
        codes[(codes == hy.INFINITE) & np.isfinite(x) & np.isfinite(y)] = hy.OUT_OF_RANGE
        codes[~is_pt & ~missing] = hy.NOT_POINT
        return lon, lat, codes, (x, y)

    def _parse(self, lon_raw, lat_raw):
        lon, lon_codes = hy.parse_numeric(lon_raw)
        lat, lat_codes = hy.parse_numeric(lat_raw)
        raw = tuple(np.asarray(r, dtype=object) if not isinstance(r, np.ndarray) else r
                    for r in (lon_raw, lat_raw))
        if self.crs is not None:
            from geoembed.io.geocolumn import lonlat_transformer, parse_crs

            tr = lonlat_transformer(parse_crs(self.crs, "X", "crs"))
            ok = np.isfinite(lon) & np.isfinite(lat)
            if tr is not None and ok.any():
                lon, lat = lon.copy(), lat.copy()
                lon[ok], lat[ok] = tr.transform(lon[ok], lat[ok])
            codes = hy.classify(lon, lat, lon_codes, lat_codes)
            codes[(codes == hy.OK) & ~(np.isfinite(lon) & np.isfinite(lat))] = hy.OUT_OF_RANGE
            return lon, lat, codes, raw
        return lon, lat, hy.classify(lon, lat, lon_codes, lat_codes), raw

    def _check_n_features(self, n: int, reset: bool) -> None:
        if reset:
            self.n_features_in_ = n
        elif n != self.n_features_in_:
            raise ValueError(f"X has {n} features, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input.")

    def _check_names(self, X) -> None:
        """scikit-learn's feature-name consistency rules (used when columns are taken by position)."""
        from sklearn.utils.validation import _check_feature_names

        _check_feature_names(self, X, reset=False)
