"""``geoembed inspect PATH``: print what any geoembed artefact or table holds.

Recognises a run folder (workdir), a locations GeoParquet, a view store, a model bundle, an enriched
table (Parquet with geoembed metadata, or CSV with its ``.meta.json`` sidecar), an evaluation report
folder, and any table that ``enrich`` and ``evaluate`` read (CSV, Parquet, GeoParquet, shapefile,
GeoPackage, ...: :mod:`geoembed.io.tables`), with its rows, columns and geometry.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from geoembed.errors import InputError


def _locations(path: Path) -> dict:
    from geoembed.io.locations import read_locations, read_locations_meta

    gdf = read_locations(path)
    meta = read_locations_meta(path)
    return {
        "artefact": "locations",
        "path": str(path),
        "rows": len(gdf),
        "crs": str(gdf.crs),
        "lon": [float(gdf["lon"].min()), float(gdf["lon"].max())],
        "lat": [float(gdf["lat"].min()), float(gdf["lat"].max())],
        "blocks": int(gdf["block_id"].nunique()) if "block_id" in gdf else None,
        "metadata": meta,
    }


def _parquet_table(path: Path) -> dict:
    import pyarrow.parquet as pq

    from geoembed.io.tables import describe_table

    info = describe_table(path)
    try:
        pf = pq.ParquetFile(path)
        kv = pf.schema_arrow.metadata or {}
    except Exception as err:  # noqa: BLE001 - describe_table opened it; any later failure is a bad file
        raise InputError(f"cannot read Parquet file {path}: {err}") from None
    md = {k.decode(): v.decode()[:2000] for k, v in kv.items() if k not in (b"pandas", b"ARROW:schema")}
    for k, v in list(md.items()):
        try:
            md[k] = json.loads(v)
        except ValueError:
            pass
    return {**info, "metadata": md}


def _other_table(path: Path, layer: str | None) -> dict:
    """A CSV or vector table; a CSV with a ``.meta.json`` sidecar is an enriched table."""
    from geoembed.io.enriched import sidecar_path
    from geoembed.io.tables import describe_table

    info = describe_table(path, layer=layer)
    side = sidecar_path(path)
    if info["format"] == "csv" and side.is_file():
        try:
            meta = json.loads(side.read_text())
        except ValueError as err:
            raise InputError(f"{side}: not valid JSON ({err})") from None
        if isinstance(meta, dict) and "bundle" in meta:
            info["artefact"] = "enriched table"
            info["metadata"] = {"geoembed": meta}
    return info


def describe(path: str | Path, layer: str | None = None, *, diagnostics: bool = True) -> dict | list:
    """A JSON-able description of the artefact or table at ``path`` (``layer``: of a GeoPackage). A model
    bundle's includes its training diagnostics (:mod:`geoembed.train.diagnostics`): those stored after
    training, or, with ``diagnostics`` (the default), computed now for a bundle without them."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p} does not exist")
    if p.is_dir():
        if (p / "meta.json").exists() and (p / "store.zarr").exists():
            from geoembed.io.viewstore import ViewStore

            return {"artefact": "view store", **ViewStore.open(p, require_complete=False).describe()}
        if (p / "geoembed.json").exists():
            from geoembed.io.bundle import load_bundle

            b = load_bundle(p)
            meta = dict(b.meta)
            meta.pop("footprint", None)
            sealed = meta.pop("seal", None) is not None  # checked by load_bundle; the hashes are noise here
            out = {"artefact": "model bundle", "path": str(p), "fingerprint": b.fingerprint, "sealed": sealed,
                   "embedding_dim": b.embedding_dim, "footprint_bounds": list(b.footprint.bounds)}
            if "model_card" in meta:
                out["model_card"] = meta.pop("model_card")
            if "reduction" in meta:
                red = meta.pop("reduction")
                out["reduction"] = {k: red.get(k) for k in ("method", "n_components", "raw_embedding_dim",
                                                           "n_samples", "explained_variance_ratio")}
                out["reduction"]["reference"] = (red.get("info") or {}).get("reference")
            from geoembed.train.diagnostics import bundle_diagnostics

            out = {**out, "meta": meta}
            try:
                found = bundle_diagnostics(b, compute=diagnostics)
            except (InputError, ValueError) as err:  # the description stands without them
                found = {"computed": "on demand", "error": str(err)}
            if found is not None:  # last: what the reader sees at the end
                out["training_diagnostics"] = found
            return out
        if (p / "evaluation.json").exists():
            recs = json.loads((p / "evaluation.json").read_text())
            pooled = [r for r in recs if r.get("fold") in (None, "pooled")]
            return {"artefact": "evaluation report", "path": str(p), "records": len(recs),
                    "pooled": [{k: r.get(k) for k in ("model", "features", "split", "deviance_ratio", "gini")}
                               for r in pooled]}
        out = []
        if (p / "locations.parquet").exists():
            out.append(_locations(p / "locations.parquet"))
        for sub in sorted((p / "views").glob("*")) if (p / "views").exists() else []:
            out.append(describe(sub, diagnostics=diagnostics))
        for name in ("bundle", "report"):
            if (p / name).exists():
                out.append(describe(p / name, diagnostics=diagnostics))
        if not out:
            raise InputError(f"{p} holds no geoembed artefact")
        return out
    if p.name in ("geoembed.json", "weights.safetensors"):
        from geoembed.io.bundle import check_bundle_path

        check_bundle_path(p)  # an error: a file, not a bundle folder (naming the folder to pass)
    from geoembed.io.tables import FORMATS_TEXT, input_format

    try:
        fmt = input_format(p)
    except InputError:
        raise InputError(f"{p}: not a geoembed artefact (expected a run folder, view store, bundle, report) "
                         f"nor a table ({FORMATS_TEXT})") from None
    if fmt != "parquet":
        return _other_table(p, layer)
    if layer is not None:
        raise InputError(f"--layer applies to vector files (GeoPackage, ...), not to {p}")
    from geoembed.io.enriched import META_KEY as ENRICHED_META_KEY
    from geoembed.io.locations import LOCATION_META_KEY_STR

    info = _parquet_table(p)
    meta = info["metadata"].get(LOCATION_META_KEY_STR)
    if isinstance(meta, dict) and "sampling" in meta and "location_id" in info["columns"]:
        return _locations(p)
    enriched = info["metadata"].get(ENRICHED_META_KEY.decode())
    if isinstance(enriched, dict) and "bundle" in enriched:
        info["artefact"] = "enriched table"
    return info


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="run folder, locations.parquet, views/<name>, bundle, report, or a table "
                                     "(CSV, Parquet, GeoParquet, shapefile, GeoPackage, ...)")
    parser.add_argument("--layer", default=None, help="layer of a GeoPackage with several layers")
    parser.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    parser.add_argument("--no-diagnostics", action="store_true",
                        help="do not compute training diagnostics for a bundle that has none stored")


def run(args: argparse.Namespace) -> int:
    info = describe(args.path, layer=args.layer, diagnostics=not args.no_diagnostics)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        print(yaml.safe_dump(json.loads(json.dumps(info, default=str)), sort_keys=False, width=120).rstrip())
    return 0
