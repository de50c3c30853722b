"""The report's territories section: territory table, credibility baseline, GAM smooth plots, folium map.

:func:`write_territories` is the hook ``write_report`` calls when ``evaluate.territories`` is set; it writes
``territories.csv``, ``territories.json``, ``territories.html`` (folium, layers as GeoJSON, no tiles: it
is written offline and holds all its data, but folium's page loads the Leaflet scripts from a CDN, so a
browser needs the network to draw it; the PNGs are the offline figures), ``gam_smooths.png`` into the report folder and returns the markdown section.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from geoembed.config.evaluate import EvaluateConfig
from geoembed.errors import ConfigError, InputError
from geoembed.evaluate.core import EvaluationResult, summary_table
from geoembed.evaluate.estimators import make_estimator, with_inner_folds
from geoembed.evaluate.splits import inner_folds
from geoembed.evaluate.territories import (
    make_territories,
    neighbour_graph,
    region_baseline,
    spatial_effect,
    territory_table,
)

log = logging.getLogger(__name__)

PALETTE = ["#2166ac", "#67a9cf", "#d1e5f0", "#fddbc7", "#ef8a62", "#b2182b", "#762a83", "#1b7837",
           "#e08214", "#542788"]


def spatial_columns(features: str, cfg: EvaluateConfig, emb_cols: list[str]) -> list[str]:
    """The spatial feature columns of a feature set."""
    return ([cfg.lon_col, cfg.lat_col] if features in ("coords", "both") else []) + \
        (list(emb_cols) if features in ("embeddings", "both") else [])


def table_geometry(cfg: EvaluateConfig, n: int):
    """The geometries (EPSG:4326) of ``cfg.table`` when it is a vector / GeoParquet file of ``n`` rows, else None."""
    if not cfg.table:
        return None
    p = Path(cfg.table)
    try:
        import geopandas as gpd

        if p.suffix.lower() in (".parquet", ".geoparquet", ".pq"):
            import pyarrow.parquet as pq

            if b"geo" not in (pq.read_schema(p).metadata or {}):
                return None
            g = gpd.read_parquet(p)
        elif p.suffix.lower() in (".gpkg", ".shp", ".geojson", ".fgb"):
            g = gpd.read_file(p)
        else:
            return None
    except (OSError, ValueError, ImportError):
        return None
    if len(g) != n or g.crs is None:
        return None
    return g.geometry.to_crs("EPSG:4326").reset_index(drop=True)


def figure_gam_smooths(model, table: pd.DataFrame, path: Path, max_panels: int = 24) -> str | None:
    """One panel per smooth of a fitted GAMRegressor: partial effect (log scale) with a rug of the data;
    the lon/lat tensor smooth as an image. Returns a note when panels were left out."""
    from matplotlib.figure import Figure

    smooths = list(getattr(model, "smooths_", None) or [])
    if not smooths:
        return "GAM smooth plots skipped: the GAM has no smooth terms"
    n_lin = len(model.coef_) - sum(s.dim_basis for s in smooths)
    starts = n_lin + np.r_[0, np.cumsum([s.dim_basis for s in smooths])]
    shown = smooths[:max_panels]
    nc = min(4, len(shown))
    nr = int(np.ceil(len(shown) / nc))
    fig = Figure(figsize=(3.4 * nc, 2.9 * nr))
    axes = np.atleast_1d(fig.subplots(nr, nc, squeeze=False)).ravel()
    for i, s in enumerate(shown):
        ax, beta = axes[i], model.coef_[starts[i]:starts[i + 1]]
        if len(s.columns) == 1:
            c = s.columns[0]
            x = table[c].to_numpy(float)
            g = np.linspace(np.min(x), np.max(x), 200)
            ax.plot(g, s.transform(pd.DataFrame({c: g})) @ beta, color="C0")
            ax.plot(x, np.full_like(x, 0.0), "|", color="k", alpha=0.3, markersize=8,
                    transform=ax.get_xaxis_transform())
            ax.axhline(0.0, color="grey", lw=0.6, ls="--")
            ax.set_xlabel(c)
            ax.set_ylabel("partial effect (log)")
        else:
            a, b = s.columns[:2]
            gx = np.linspace(table[a].min(), table[a].max(), 60)
            gy = np.linspace(table[b].min(), table[b].max(), 60)
            GX, GY = np.meshgrid(gx, gy)
            z = (s.transform(pd.DataFrame({a: GX.ravel(), b: GY.ravel()})) @ beta).reshape(GX.shape)
            lim = float(np.abs(z).max()) or 1.0
            im = ax.imshow(z, origin="lower", extent=(gx[0], gx[-1], gy[0], gy[-1]), aspect="auto",
                           cmap="RdBu_r", vmin=-lim, vmax=lim)
            ax.scatter(table[a], table[b], s=1, c="k", alpha=0.3, linewidths=0)
            fig.colorbar(im, ax=ax, shrink=0.8)
            ax.set_xlabel(a)
            ax.set_ylabel(b)
        ax.set_title(f"s({', '.join(s.columns)})", fontsize=9)
    for ax in axes[len(shown):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    if len(smooths) > len(shown):
        return f"gam_smooths.png shows the first {len(shown)} of {len(smooths)} smooths"
    return None


def _colour(v: float, lo: float, hi: float) -> str:
    """Blue (low) - white - red (high) for a log-relativity, symmetric around 0."""
    lim = max(abs(lo), abs(hi), 1e-9)
    t = float(np.clip(v / lim, -1, 1))
    r, g, b = (255, int(255 * (1 - t)), int(255 * (1 - t))) if t >= 0 else (int(255 * (1 + t)), int(255 * (1 + t)), 255)
    return f"#{r:02x}{g:02x}{b:02x}"


def territory_features(labels: np.ndarray, effect: np.ndarray, lon: np.ndarray, lat: np.ndarray,
                       terr: pd.DataFrame, geometry=None) -> tuple[dict, dict]:
    """GeoJSON FeatureCollections: per-row spatial effect (points or polygons) and one feature per territory
    (the union of its polygons, or a MultiPoint of its points)."""
    import shapely

    rows, by_t = [], {}
    for i in range(len(labels)):
        g = shapely.Point(lon[i], lat[i]) if geometry is None else geometry[i]
        rows.append({"type": "Feature", "geometry": shapely.geometry.mapping(g),
                     "properties": {"row": i, "territory": int(labels[i]) + 1,
                                    "relativity": round(float(np.exp(effect[i])), 4)}})
        by_t.setdefault(int(labels[i]), []).append(g)
    tfeat = []
    for t, gs in sorted(by_t.items()):
        info = terr[terr["territory"] == t + 1].iloc[0]
        geom = shapely.union_all(gs) if geometry is not None else shapely.MultiPoint(gs)
        tfeat.append({"type": "Feature", "geometry": shapely.geometry.mapping(geom),
                      "properties": {"territory": t + 1, "exposure": round(float(info["exposure"]), 4),
                                     "claims": float(info["claims"]),
                                     "relativity": round(float(info["relativity"]), 4),
                                     "fitted_relativity": round(float(info["fitted_relativity"]), 4)}})
    return ({"type": "FeatureCollection", "features": rows}, {"type": "FeatureCollection", "features": tfeat})


def write_map(path: Path, effect_fc: dict, terr_fc: dict, lon: np.ndarray, lat: np.ndarray) -> None:
    """``territories.html``: a folium map without a tile layer, the spatial effect and the territories as
    GeoJSON layers (a layer control switches them)."""
    import folium

    eff = [f["properties"]["relativity"] for f in effect_fc["features"]]
    lo, hi = float(np.log(min(eff))), float(np.log(max(eff)))
    m = folium.Map(location=[float(np.mean(lat)), float(np.mean(lon))], tiles=None, zoom_start=12)
    m.fit_bounds([[float(np.min(lat)), float(np.min(lon))], [float(np.max(lat)), float(np.max(lon))]])

    def eff_style(f):
        c = _colour(float(np.log(f["properties"]["relativity"])), lo, hi)
        return {"fillColor": c, "color": c, "weight": 0.5, "fillOpacity": 0.8}

    def terr_style(f):
        c = PALETTE[(f["properties"]["territory"] - 1) % len(PALETTE)]
        return {"fillColor": c, "color": "#333333", "weight": 1.5, "fillOpacity": 0.5}

    marker = folium.CircleMarker(radius=4, fill=True)
    folium.GeoJson(effect_fc, name="spatial effect (relativity)", style_function=eff_style, marker=marker,
                   tooltip=folium.GeoJsonTooltip(["territory", "relativity"])).add_to(m)
    folium.GeoJson(terr_fc, name="territories", style_function=terr_style,
                   marker=folium.CircleMarker(radius=5, fill=True),
                   tooltip=folium.GeoJsonTooltip(["territory", "relativity", "exposure", "claims"])).add_to(m)
    from branca.colormap import LinearColormap

    lim = max(abs(lo), abs(hi), 1e-9)
    LinearColormap(["#0000ff", "#ffffff", "#ff0000"], vmin=-lim, vmax=lim,
                   caption="spatial effect (log relativity)").add_to(m)
    folium.LayerControl().add_to(m)
    m.save(str(path))


def write_territories(result: EvaluationResult, cfg: EvaluateConfig, out: Path) -> tuple[str, list[str], list[str]]:
    """Build the territories of ``cfg.territories`` and write their files into ``out``.

    Returns the markdown section, the figure / file names written and notes.
    """
    tc = cfg.territories
    t = result.table
    feats = tc.features or ("embeddings" if result.embedding_columns else "coords")
    if feats == "none":
        raise ConfigError("evaluate.territories.features 'none' has no spatial effect; use coords, embeddings or both")
    if feats in ("embeddings", "both") and not result.embedding_columns:
        raise ConfigError(f"evaluate.territories.features {feats!r} needs embedding columns")
    if tc.region_col and tc.region_col not in t.columns:
        raise InputError(f"evaluate.territories.region_col {tc.region_col!r} is not a column of the table "
                         f"(it has {list(t.columns)[:20]})")
    cols = spatial_columns(feats, cfg, result.embedding_columns)
    y = t[cfg.target].to_numpy(float)
    e = t[cfg.exposure].to_numpy(float) if cfg.exposure else np.ones(len(t))
    inner = inner_folds(np.arange(len(t)), result.blocks, cfg.gbm.inner_folds, cfg.seed)
    model = with_inner_folds(make_estimator(tc.model, feats, cfg, result.embedding_columns), inner).fit(t, y)
    effect = spatial_effect(model, t, cols, cfg.exposure)
    lon, lat = t[cfg.lon_col].to_numpy(float), t[cfg.lat_col].to_numpy(float)
    geometry = table_geometry(cfg, len(t))
    graph = neighbour_graph(lon, lat, geometry, tc.neighbours) if tc.contiguous else None
    labels = make_territories(effect, tc.k, e, tc.contiguous, graph)
    terr = territory_table(labels, effect, y, e)
    files, notes = [], []
    terr.to_csv(out / "territories.csv", index=False)
    pd.DataFrame({"row": np.arange(len(t)), "territory": labels + 1, "effect": effect}).to_csv(
        out / "territory_rows.csv", index=False)
    lines = ["## Territories", "",
             f"{tc.model} on {feats} (refitted on all rows); spatial effect = log-relativity of the spatial terms "
             f"({', '.join(cols[:4])}{', ...' if len(cols) > 4 else ''}) against their exposure-weighted means. "
             f"{len(terr)} territories by " + ("contiguous Ward clustering on the " +
                                              ("touching-polygon" if geometry is not None else
                                               f"{tc.neighbours}-nearest-neighbour") + " graph"
                                              if tc.contiguous else "1-D optimal (exposure-weighted Jenks) binning")
             + "; relativities to the exposure-weighted portfolio (observed, fitted) and to the base territory "
             "(most exposure) = 1.", "",
             _md(terr), ""]
    summary = {"model": tc.model, "features": feats, "k": int(len(terr)), "contiguous": tc.contiguous,
               "territories": json.loads(terr.to_json(orient="records"))}
    if tc.region_col:
        base = region_baseline(t, result.folds, cfg, tc.region_col, tuple(tc.credibility_alphas))
        pooled = base[base["fold"].astype(str) == "pooled"].iloc[0]
        summ = summary_table(result.records)
        comp = pd.concat([pd.DataFrame([{"model": "region (credibility GLM)", "features": tc.region_col,
                                         "deviance_ratio": pooled["deviance_ratio"], "gini": pooled["gini"]}]),
                          summ[["model", "features", "deviance_ratio", "gini"]]], ignore_index=True)
        lines += ["### Region factor with credibility vs the spatial features (same folds)", "",
                  f"`{tc.region_col}` as a one-hot factor with a ridge penalty (credibility shrinkage towards "
                  f"relativity 1), penalty chosen by inner 5-fold CV on each training fold (median alpha "
                  f"{pooled['alpha']:.3g}); held-out deviance ratio against the exposure-only model.", "",
                  _md(comp), ""]
        summary["region_baseline"] = json.loads(base.to_json(orient="records"))
    if tc.smooth_plots and tc.model == "gam":
        note = figure_gam_smooths(model, t, out / "gam_smooths.png")
        if note:
            notes.append(note)
        if (out / "gam_smooths.png").exists():
            files.append("gam_smooths.png")
    if tc.map:
        eff_fc, terr_fc = territory_features(labels, effect, lon, lat, terr, geometry)
        write_map(out / "territories.html", eff_fc, terr_fc, lon, lat)
        lines += ["Interactive map: [territories.html](territories.html) (spatial effect and territories).", ""]
    (out / "territories.json").write_text(json.dumps(summary, indent=2) + "\n")
    return "\n".join(lines), files, notes


def _md(df: pd.DataFrame) -> str:
    from geoembed.evaluate.report import markdown_table

    return markdown_table(df)
