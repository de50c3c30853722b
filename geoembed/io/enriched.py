"""The enriched-table artefact (what ``geoembed enrich`` writes): its columns, metadata and sidecars.

An enriched table holds every input row, in order, with every input column, plus

* ``emb_0 .. emb_{d-1}`` (float32; ``emb_pc_0 ..`` with a reduction), null for invalid rows,
* ``geoembed_invalid``: null for valid rows, else the reason (``missing``, ``non_numeric``, ...),
* ``geoembed_support_km``: distance to the training footprint in km (0 inside),
* ``geoembed_out_of_support``: ``geoembed_support_km > bundle.out_of_support_km``.

A table of polygons (one embedding per polygon, the mean over points sampled in it) also has

* ``geoembed_points``: the number of points averaged (with a positive weight, when weighted),
* ``geoembed_out_of_support_share``: the (weighted) share of them beyond ``out_of_support_km``;

there ``geoembed_support_km`` is the smallest distance of its points to the footprint, and
``geoembed_out_of_support`` says that every point is beyond the threshold.

Its format follows the file name (:func:`table_format`). A Parquet table keeps the run's metadata (package
version, bundle fingerprint and path, input, column names, reduction; see :func:`table_metadata`) as JSON
in the schema's key-value metadata under ``geoembed`` and the run's totals under ``geoembed.summary`` in
the footer, written last. A CSV table has the same dict, with ``summary`` and ``output``, in the sidecar
``OUT.meta.json`` (:func:`sidecar_path`), written after the CSV is complete. A folder of enriched Parquet
parts also holds ``_geoembed.json`` with the run's totals (:func:`write_directory_summary`).
:func:`read_enrich_metadata` and :func:`read_directory_summary` read them back.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

from geoembed.errors import InputError
from geoembed.io.atomic import atomic_write_json
from geoembed.version import __version__

INVALID_COL = "geoembed_invalid"
SUPPORT_COL = "geoembed_support_km"
OOS_COL = "geoembed_out_of_support"
QA_COLUMNS = (INVALID_COL, SUPPORT_COL, OOS_COL)
POINTS_COL = "geoembed_points"
SHARE_COL = "geoembed_out_of_support_share"
POLYGON_COLUMNS = (POINTS_COL, SHARE_COL)
META_KEY = b"geoembed"
SUMMARY_KEY = b"geoembed.summary"
SUMMARY_FILE = "_geoembed.json"
PARQUET_SUFFIXES = (".parquet", ".pq", ".geoparquet", ".parq")
CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zst", ".csv.lz4", ".txt")
#: The reduction's fields recorded in a table's metadata (its arrays stay in the reduction file).
REDUCTION_FIELDS = ("method", "n_components", "bundle_fingerprint", "n_samples", "info")


def table_format(path: str | os.PathLike) -> str:
    """'csv' or 'parquet' from a file name; InputError for anything else."""
    name = Path(path).name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    raise InputError(f"{path}: unknown table format; use a .csv (optionally .gz/.bz2/.zst) or "
                     f".parquet/.geoparquet file, or a folder of .parquet parts")


def created_utc() -> str:
    """Now in UTC (ISO, seconds), or the time in ``SOURCE_DATE_EPOCH`` when set (the reproducible-builds
    convention), so that two runs can give byte-identical files."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        try:
            return _dt.datetime.fromtimestamp(int(epoch), _dt.UTC).isoformat(timespec="seconds")
        except (ValueError, OverflowError):
            raise InputError(f"SOURCE_DATE_EPOCH={epoch!r} is not a number of seconds") from None
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def embedding_names(dim: int) -> list[str]:
    """Stable embedding column names ``emb_0 .. emb_{dim-1}``."""
    return [f"emb_{i}" for i in range(dim)]


def bundle_info(bundle) -> dict:
    """What the output metadata records about the bundle."""
    return {
        "path": str(Path(bundle.path).resolve()) if getattr(bundle, "path", None) else None,
        "fingerprint": bundle.fingerprint,
        "embedding_dim": int(bundle.embedding_dim),
        "out_of_support_km": float(bundle.out_of_support_km),
    }


def table_metadata(*, bundle, input_path: Path, input_format: str, coordinates: dict, on_invalid: str,
                   embedding_columns: list[str], reduction: dict | None, extra: dict) -> dict:
    """The metadata of one enriched table. ``coordinates`` names the coordinate columns or geometry,
    ``reduction`` is the reduction's dict (or None), ``extra`` is merged in last."""
    return {
        "geoembed_version": __version__,
        "created_utc": created_utc(),
        "bundle": bundle_info(bundle),
        "input": {"path": str(Path(input_path).resolve()), "format": input_format, **coordinates},
        "coordinate_order": ["lon", "lat"],
        "on_invalid": on_invalid,
        "columns": {"embedding": embedding_columns, "invalid": INVALID_COL, "support_km": SUPPORT_COL,
                    "out_of_support": OOS_COL},
        "reduction": (None if reduction is None else
                      {k: v for k, v in reduction.items() if k in REDUCTION_FIELDS}),
        **extra,
    }


def schema_metadata(meta: dict) -> dict[bytes, bytes]:
    """The schema key-value entry recording ``meta`` (:func:`table_metadata`) in a Parquet table."""
    return {META_KEY: json.dumps(meta, default=str).encode()}


def summary_metadata(totals: dict) -> dict[bytes, bytes]:
    """The footer entry recording a finished run's totals in a Parquet table."""
    return {SUMMARY_KEY: json.dumps(totals).encode()}


def sidecar_path(output: str | os.PathLike) -> Path:
    """The metadata sidecar of a CSV table: ``OUT.meta.json``."""
    output = Path(output)
    return output.with_name(output.name + ".meta.json")


def remove_sidecar(output: str | os.PathLike) -> None:
    """Delete an earlier sidecar (never leave an old one next to a new CSV)."""
    side = sidecar_path(output)
    if side.exists():
        side.unlink()


def write_sidecar(output: str | os.PathLike, meta: dict, totals: dict) -> Path:
    """Write the sidecar of the complete CSV table ``output`` (atomically)."""
    output = Path(output)
    return atomic_write_json(sidecar_path(output), {
        **meta, "summary": totals, "output": {"path": str(output.resolve()), "bytes": output.stat().st_size}})


def read_enrich_metadata(path: str | os.PathLike) -> dict:
    """The geoembed metadata of an enriched file (Parquet footer, or the CSV's ``.meta.json``)."""
    p = Path(path)
    if table_format(p) == "csv":
        side = sidecar_path(p)
        if not side.is_file():
            raise InputError(f"{p} has no metadata sidecar {side.name}")
        return json.loads(side.read_text())
    import pyarrow.parquet as pq

    kv = pq.ParquetFile(p).metadata.metadata or {}
    if META_KEY not in kv:
        raise InputError(f"{p} has no geoembed metadata: not written by `geoembed enrich`")
    meta = json.loads(kv[META_KEY])
    if SUMMARY_KEY in kv:
        meta["summary"] = json.loads(kv[SUMMARY_KEY])
    return meta


def write_directory_summary(folder: str | os.PathLike, *, bundle, job: dict, parts: list[str], totals: dict,
                            input_dir: str | os.PathLike) -> Path:
    """Write ``_geoembed.json`` into a finished folder of enriched parts. ``totals`` holds rows, invalid,
    by_reason, out_of_support and out_of_support_km; ``job`` the settings that decide a part's content."""
    return atomic_write_json(Path(folder) / SUMMARY_FILE, {
        "geoembed_version": __version__, "bundle": bundle_info(bundle), "job": job, "parts": parts,
        "rows": totals["rows"], "invalid": totals["invalid"], "by_reason": totals["by_reason"],
        "out_of_support": totals["out_of_support"], "out_of_support_km": totals["out_of_support_km"],
        "complete": True, "input": str(Path(input_dir).resolve()),
    })


def read_directory_summary(output_dir: str | os.PathLike) -> dict:
    """The ``_geoembed.json`` of an enriched folder."""
    p = Path(output_dir) / SUMMARY_FILE
    if not p.is_file():
        raise InputError(f"{output_dir} is not a complete `geoembed enrich` output (no {SUMMARY_FILE})")
    return json.loads(p.read_text())
