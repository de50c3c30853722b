"""Configuration of the evaluation stage: the ``evaluate:`` section of a geoembed config.

A minimal section::

    evaluate:
      table: policies.parquet        # CSV / Parquet / GeoParquet, relative to the config file
      target: claims
      exposure: years                # optional; an offset log(exposure) (log link only)
      family: poisson
      features: [none, coords, embeddings]
      models: [glm, gam, gbm]
      split: {kind: spatial_block, n_folds: 5, block_method: grid, block_size_m: 2000}

Rating factors enter every model (``covariates`` numeric, ``categorical`` levels; or in one key
``covariates: {numeric: [...], categorical: [...]}``), so feature set ``none`` is the covariates-only model
that the spatial feature sets are measured against.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from geoembed.config.base import Section

DEFAULT_POINTS = 1000  #: points per polygon; the same as geoembed.enrich.polygons.DEFAULT_POINTS

Family = Literal["poisson", "gamma", "tweedie", "gaussian", "binomial"]
Link = Literal["log", "identity", "logit"]
FeatureSet = Literal["none", "coords", "embeddings", "both"]
#: The built-in feature sets; ``evaluate.features`` may also name an entry of ``evaluate.embedding_sets``.
FEATURE_SETS: tuple[str, ...] = ("none", "coords", "embeddings", "both")
ModelName = Literal["glm", "gam", "gbm"]

#: Links each family accepts; the first is the default.
FAMILY_LINKS: dict[str, tuple[str, ...]] = {
    "poisson": ("log", "identity"),
    "gamma": ("log", "identity"),
    "tweedie": ("log",),
    "gaussian": ("identity", "log"),
    "binomial": ("logit", "log"),
}


class SplitConfig(Section):
    """How rows are assigned to cross-validation folds.

    ``kind``:
      - ``random``: random K-fold over rows;
      - ``spatial_block``: rows grouped into spatial blocks (``block_method``: a square ``grid`` of
        ``block_size_m`` metres in a local equal-area projection, the ``h3`` parent cell at
        ``h3_resolution``, or ``kmeans`` of projected coordinates into ``n_blocks`` clusters, or an existing
        ``block_column``); whole blocks are assigned to K folds, so a block never straddles train and test;
      - ``leave_region_out``: each value of ``region_column`` is a fold (or only the ``holdout_regions``
        values form the single test fold); or the rows inside ``bbox`` (min_lon, min_lat, max_lon, max_lat)
        or inside the polygon(s) of the vector file ``polygon`` (or the ``wkt`` geometry) form the test fold.
    """

    kind: Literal["random", "spatial_block", "leave_region_out"] = "spatial_block"
    n_folds: int = Field(5, ge=2)
    block_method: Literal["grid", "h3", "kmeans", "column"] = "grid"
    block_size_m: float = Field(2000.0, gt=0)
    h3_resolution: int = Field(7, ge=0, le=15)
    n_blocks: int | None = Field(None, ge=2)
    block_column: str | None = None
    region_column: str | None = None
    holdout_regions: list[str | int] | None = None
    bbox: tuple[float, float, float, float] | None = None
    polygon: str | None = None
    wkt: str | None = None
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> SplitConfig:
        if self.kind == "spatial_block" and self.block_method == "column" and not self.block_column:
            raise ValueError("split.block_method 'column' needs split.block_column")
        if self.kind == "leave_region_out":
            given = [k for k in ("region_column", "bbox", "polygon", "wkt") if getattr(self, k) is not None]
            if len(given) != 1:
                raise ValueError("split.kind 'leave_region_out' needs exactly one of split.region_column, "
                                 f"split.bbox, split.polygon, split.wkt (got {given or 'none'})")
        if self.holdout_regions is not None and self.region_column is None:
            raise ValueError("split.holdout_regions needs split.region_column")
        if self.bbox is not None and not (self.bbox[0] < self.bbox[2] and self.bbox[1] < self.bbox[3]):
            raise ValueError(f"split.bbox must be (min_lon, min_lat, max_lon, max_lat), got {self.bbox}")
        return self


class GLMConfig(Section):
    """GLM solved by glum (``GLMRegressor``). ``ridge`` > 0 adds an L2 penalty ``ridge / 2 ||b||^2`` next to
    ``deviance / (2 n)`` (on standardised columns, not the intercept)."""

    ridge: float = Field(0.0, ge=0)
    maxiter: int = Field(100, ge=1)


class GAMConfig(Section):
    """Penalised B-spline smooths solved by glum (``GAMRegressor``).

    One penalised cubic B-spline smooth (``df`` basis functions) per embedding component; a tensor-product
    smooth of lon/lat (``tensor_df`` x ``tensor_df`` basis) for coordinates. ``smooth_basis`` /
    ``tensor_basis``: ``bspline`` (quantile knots, curvature penalty) or ``pspline`` (equally spaced knots,
    second-difference penalty; Eilers & Marx) for the two kinds of smooth. Each smooth's penalty is scaled
    so that ``alpha`` = 1 balances it against its share of the Fisher information; ``alpha`` (one multiplier
    for all smooths) is chosen from ``alpha_grid`` on the training fold by UBRE (Poisson, binomial) or GCV
    (other families), unless ``alpha`` is given. ``shrinkage`` adds a small ridge to each smooth's penalty
    so that the smooth's linear part is penalised too (mgcv's shrinkage smoothers).
    """

    df: int = Field(6, ge=4)
    degree: int = Field(3, ge=1, le=5)
    tensor_df: int = Field(6, ge=4)
    smooth_basis: Literal["bspline", "pspline"] = "bspline"
    tensor_basis: Literal["bspline", "pspline"] = "pspline"
    alpha: float | None = Field(None, gt=0)
    alpha_grid: list[float] = Field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0])
    shrinkage: float = Field(0.1, ge=0)
    maxiter: int = Field(100, ge=1)


class GBMConfig(Section):
    """LightGBM with the family's objective; exposure enters through ``init_score``.

    With ``early_stopping`` the number of rounds is chosen by inner ``inner_folds``-fold cross-validation of
    the training fold (whole spatial blocks when the split has blocks): the median of the inner folds' best
    iterations; the model is then refitted on the whole training fold with that many rounds. Without it,
    ``num_boost_round`` rounds are used.
    """

    num_boost_round: int = Field(1000, ge=1)
    learning_rate: float = Field(0.05, gt=0)
    num_leaves: int = Field(15, ge=2)
    min_data_in_leaf: int = Field(20, ge=1)
    feature_fraction: float = Field(1.0, gt=0, le=1)
    lambda_l2: float = Field(0.0, ge=0)
    extra_trees: bool = Field(True, description="LightGBM's extremely randomised trees (a random threshold per "
                              "feature and node): steadier on small tables of continuous features")
    early_stopping: bool = True
    early_stopping_rounds: int = Field(50, ge=1)
    inner_folds: int = Field(3, ge=2)
    num_threads: int = Field(1, ge=1)
    params: dict[str, float | int | str | bool] = Field(default_factory=dict)
    grid: dict[str, list[float | int | str | bool]] = Field(
        default_factory=dict,
        description="LightGBM parameters to lists of values, each combination early-stopped on the inner "
        "folds and the best refitted (e.g. {num_leaves: [4, 7, 15], feature_fraction: [0.7, 1.0]})")

    @model_validator(mode="after")
    def _grid_needs_early_stopping(self) -> GBMConfig:
        if self.grid and not self.early_stopping:
            raise ValueError("grid needs early_stopping: true (each combination is judged on the inner folds)")
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"grid.{key}: give at least one value")
        return self


class TerritoriesConfig(Section):
    """Territories and relativities in the report (``geoembed.evaluate.territories``); off unless given.

    ``model`` fitted on ``features`` (default: embeddings when the table has them, else coords), refitted on
    all rows; its spatial effect cut into ``k`` territories (1-D optimal binning, or with ``contiguous``
    connected clusters on a neighbour graph: touching polygons when the table is a vector file, else the
    ``neighbours`` nearest points). ``region_col``: a region column for the credibility baseline (a
    ridge-penalised region factor, penalty from ``credibility_alphas`` by inner CV) on the same folds.
    ``map``: ``territories.html`` (folium); ``smooth_plots``: ``gam_smooths.png`` when the model is the GAM.
    """

    k: int = Field(5, ge=2, le=50)
    contiguous: bool = False
    model: ModelName = "gam"
    features: FeatureSet | None = None
    region_col: str | None = None
    neighbours: int = Field(6, ge=1, le=50)
    credibility_alphas: list[float] = Field(default_factory=lambda: [10.0 ** i for i in range(-7, 2)])
    map: bool = True
    smooth_plots: bool = True


class EmbeddingSetConfig(Section):
    """A named embedding set of ``evaluate.embedding_sets``: exactly one of ``bundle`` (a bundle folder; the
    rows are embedded with it, polygons as the mean over sampled points like the default set) or ``prefix``
    (the table's own ``<prefix><k>`` columns, e.g. from a second ``geoembed enrich``)."""

    bundle: str | None = None
    prefix: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one(self) -> EmbeddingSetConfig:
        if (self.bundle is None) == (self.prefix is None):
            raise ValueError("an embedding set needs exactly one of bundle, prefix")
        return self


class EvaluateConfig(Section):
    """What ``geoembed evaluate`` compares: models x spatial feature sets under one split scheme.

    ``table`` is required by the command; library calls that pass a DataFrame may leave it unset.
    ``output`` is the report folder (default ``<workdir>/evaluation``). ``covariates`` (numeric) and
    ``categorical`` are the base rating factors, in every model; ``covariates`` may also be given as
    ``{numeric: [...], categorical: [...]}``. ``components``: a PCA of the embedding columns to that many
    components (``whiten``: unit variance), fitted on each training fold only. Rows farther than the bundle's
    ``out_of_support_km`` from its footprint (or flagged ``geoembed_out_of_support`` by enrich) are counted;
    when their share exceeds ``max_out_of_support_share`` the run stops unless ``allow_out_of_support``.
    A ``table`` of polygons (GeoParquet, GeoPackage, shapefile, ...) evaluated with a ``bundle`` is embedded
    polygon by polygon: each row's embedding is the mean over ``points_per_polygon`` points sampled in its
    area (seed ``polygon_seed``; weighted by the density raster ``weight_raster`` when given), as
    ``geoembed enrich`` does; lon/lat (the ``coords`` features, the folds) stay the centroids. Such a polygon
    is out of support when more than half of its (weighted) points are.
    ``embedding_sets``: further embeddings to compare on the same folds, by name (``{geoclip: {bundle:
    runs/geoclip_pc8}, distilled: {prefix: dist_}}``); a name listed in ``features`` is one more feature
    set (its columns alone, entered like ``embeddings``: linear, one smooth each, split features; reduced
    by ``components`` when set). Each bundle's rows out of its support are counted and checked as above.
    ``unknown_categories``: a level of a
    ``categorical`` column that a test fold has but its training rows lack is priced as the column's most
    frequent training level, with a warning naming it (``most_frequent``), or stops the run (``error``).
    """

    table: str | None = None
    target: str
    exposure: str | None = None
    covariates: list[str] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list)
    lon_col: str = "lon"
    lat_col: str = "lat"
    family: Family = "poisson"
    link: Link | None = None
    tweedie_power: float = Field(1.5, gt=1, lt=2)
    features: list[str] = Field(default_factory=lambda: ["none", "coords", "embeddings"])
    embedding_sets: dict[str, EmbeddingSetConfig] = Field(default_factory=dict)
    models: list[ModelName] = Field(default_factory=lambda: ["glm", "gam", "gbm"])
    unknown_categories: Literal["error", "most_frequent"] = "most_frequent"
    embedding_prefix: str = "emb_"
    bundle: str | None = None
    points_per_polygon: int = Field(DEFAULT_POINTS, ge=1)
    polygon_seed: int = 0
    weight_raster: str | None = None
    components: int | None = Field(None, ge=1)
    whiten: bool = False
    max_out_of_support_share: float = Field(0.5, ge=0, le=1)
    allow_out_of_support: bool = False
    output: str | None = None
    split: SplitConfig = Field(default_factory=SplitConfig)
    glm: GLMConfig = Field(default_factory=GLMConfig)
    gam: GAMConfig = Field(default_factory=GAMConfig)
    gbm: GBMConfig = Field(default_factory=GBMConfig)
    territories: TerritoriesConfig | None = None
    figures: bool = True
    grid_size: int = Field(80, ge=10, le=400)
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _covariate_roles(cls, data):
        """``covariates: {numeric: [...], categorical: [...]}`` -> ``covariates`` + ``categorical``."""
        if not isinstance(data, dict) or not isinstance(data.get("covariates"), dict):
            return data
        roles = dict(data["covariates"])
        unknown = sorted(set(roles) - {"numeric", "categorical"})
        if unknown:
            raise ValueError(f"evaluate.covariates: unknown key(s) {unknown}; use numeric and categorical")
        if roles.get("categorical") and data.get("categorical"):
            raise ValueError("give categorical rating factors either in evaluate.covariates.categorical or in "
                             "evaluate.categorical, not both")
        out = {**data, "covariates": roles.get("numeric") or []}
        if roles.get("categorical"):
            out["categorical"] = roles["categorical"]
        return out

    @model_validator(mode="after")
    def _check(self) -> EvaluateConfig:
        if self.whiten and self.components is None:
            raise ValueError("evaluate.whiten needs evaluate.components (the number of PCA components)")
        allowed = FAMILY_LINKS[self.family]
        if self.link is not None and self.link not in allowed:
            raise ValueError(f"evaluate.link {self.link!r} is not supported with evaluate.family "
                             f"{self.family!r}; use one of {list(allowed)}")
        if self.exposure is not None and self.resolved_link != "log":
            raise ValueError(f"evaluate.exposure enters as an offset log(exposure) and needs the log link; "
                             f"evaluate.link is {self.resolved_link!r}")
        if not self.features:
            raise ValueError("evaluate.features must name at least one of none, coords, embeddings, both")
        for name in self.embedding_sets:
            if name in FEATURE_SETS or not name.replace("_", "").isalnum() or not name[0].isalpha():
                raise ValueError(f"evaluate.embedding_sets: {name!r} must be a name of letters, digits and '_' "
                                 f"(starting with a letter) other than {list(FEATURE_SETS)}")
        unknown = [f for f in self.features if f not in FEATURE_SETS and f not in self.embedding_sets]
        if unknown:
            raise ValueError(f"evaluate.features: unknown feature set(s) {unknown}; use {list(FEATURE_SETS)} or "
                             f"a name of evaluate.embedding_sets ({sorted(self.embedding_sets) or 'none given'})")
        if not self.models:
            raise ValueError("evaluate.models must name at least one of glm, gam, gbm")
        for key in ("features", "models", "covariates", "categorical"):
            vals = getattr(self, key)
            dup = sorted({v for v in vals if vals.count(v) > 1})
            if dup:
                raise ValueError(f"evaluate.{key} repeats {dup}")
        both = set(self.covariates) & set(self.categorical)
        if both:
            raise ValueError(f"columns {sorted(both)} are in both evaluate.covariates and evaluate.categorical")
        return self

    @property
    def resolved_link(self) -> str:
        """The link in use: ``link`` or the family's default."""
        return self.link or FAMILY_LINKS[self.family][0]
