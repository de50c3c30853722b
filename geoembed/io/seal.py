"""The bundle seal: hashes that tie ``geoembed.json`` and ``weights.safetensors`` together.

:func:`geoembed.io.bundle.save_bundle` records in ``geoembed.json``::

    "seal": {"algorithm": "sha256",
             "geoembed.json": {"encoder": "<hex>", "embedding_dim": "<hex>", ...},
             "weights.safetensors": "<hex>"}

one SHA-256 per field of ``geoembed.json`` (over the field's canonical JSON: sorted keys, no
whitespace; every field but the seal, so the spec, dimensions, normalisation, footprint, support
distance, model card and reduction description are all covered) and one over the bytes of the weights
file (the encoder's tensors and the reduction's arrays). :func:`verify_seal` recomputes them on every
load: an edited field, an added or removed one, or other weights are an error naming the file and the
field. Re-indenting ``geoembed.json`` changes nothing.

:func:`seal_fingerprint` derives the bundle fingerprint (``sha256:...``) from the seal: what enrich
metadata, evaluation reports, reduction files and teacher views record. Bundles written before the
seal (schema 1) have none: they load with a warning (once per folder and process) and keep their
earlier fingerprint, the SHA-256 of the weights file's bytes followed by geoembed.json's bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from geoembed.errors import InputError

__all__ = ["ALGORITHM", "canonical_json", "legacy_fingerprint", "make_seal", "seal_fingerprint", "verify_seal"]

log = logging.getLogger(__name__)

ALGORITHM = "sha256"
META = "geoembed.json"
WEIGHTS = "weights.safetensors"
_WARNED: set[str] = set()
_REBUILD = "rebuild the bundle (`geoembed train --overwrite`, or `geoembed import ... --overwrite`)"


def canonical_json(value: Any) -> bytes:
    """The canonical JSON bytes of ``value``: sorted keys, no whitespace, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_seal(meta: dict, weights: bytes) -> dict:
    """The seal of ``meta`` (geoembed.json without its seal) and the weights file's bytes."""
    fields = {k: _sha(canonical_json(v)) for k, v in sorted(meta.items()) if k != "seal"}
    return {"algorithm": ALGORITHM, META: fields, WEIGHTS: _sha(weights)}


def seal_fingerprint(seal: dict) -> str:
    """The bundle fingerprint derived from a seal."""
    return "sha256:" + _sha(canonical_json({META: seal[META], WEIGHTS: seal[WEIGHTS]}))


def legacy_fingerprint(weights: bytes, meta_bytes: bytes) -> str:
    """The fingerprint of a bundle written before the seal (unchanged from those versions)."""
    return "sha256:" + _sha(weights + meta_bytes)


def _check_shape(seal: Any, origin: str) -> dict:
    def bad(problem: str) -> InputError:
        return InputError(f"{origin}: seal: {problem}; the seal is written by geoembed, never by hand: "
                          f"{_REBUILD}")

    if not isinstance(seal, dict):
        raise bad("expected a JSON object")
    if seal.get("algorithm") != ALGORITHM:
        raise bad(f"unknown algorithm {seal.get('algorithm')!r} (expected {ALGORITHM!r})")
    if set(seal) != {"algorithm", META, WEIGHTS}:
        raise bad(f"expected the keys algorithm, {META}, {WEIGHTS}; got {', '.join(map(str, seal))}")
    fields = seal[META]
    ok = isinstance(fields, dict) and all(isinstance(v, str) and len(v) == 64 for v in fields.values())
    if not ok or not (isinstance(seal[WEIGHTS], str) and len(seal[WEIGHTS]) == 64):
        raise bad("expected SHA-256 hex digests")
    return seal


def verify_seal(meta: dict, weights: bytes, meta_bytes: bytes, origin: str, folder: str) -> str:
    """Check ``meta``'s seal against its fields and the weights file's bytes; return the bundle
    fingerprint. ``origin`` names geoembed.json in messages, ``folder`` the bundle.

    Without a seal: schema 1 (written before the seal) loads with a warning and its earlier
    fingerprint; a later schema without a seal is an error (the seal was removed).
    """
    if "seal" not in meta:
        if meta.get("schema_version") == 1:
            if folder not in _WARNED:
                _WARNED.add(folder)
                log.warning("bundle %s was written before bundles were sealed (schema 1): loaded without the "
                            "check that geoembed.json and %s are unchanged; %s to seal it",
                            folder, WEIGHTS, _REBUILD)
            return legacy_fingerprint(weights, meta_bytes)
        raise InputError(f"{origin}: seal: missing (schema {meta.get('schema_version')} bundles are sealed); "
                         f"restore the original file, or {_REBUILD}")
    seal = _check_shape(meta["seal"], origin)
    want, have = seal[META], make_seal(meta, weights)
    edited = sorted(k for k in set(want) & set(have[META]) if want[k] != have[META][k])
    added = sorted(set(have[META]) - set(want))
    removed = sorted(set(want) - set(have[META]))
    if edited or added or removed:
        what = "; ".join(part for part in (
            f"edited: {', '.join(edited)}" if edited else "",
            f"added: {', '.join(added)}" if added else "",
            f"removed: {', '.join(removed)}" if removed else "") if part)
        raise InputError(f"{origin} was changed after the bundle was sealed ({what}); its embeddings would no "
                         f"longer be the ones it was made with. Restore the original file, or {_REBUILD}")
    if seal[WEIGHTS] != have[WEIGHTS]:
        raise InputError(f"bundle {folder}: {WEIGHTS} is not the weights file this bundle was sealed with "
                         f"(SHA-256 {have[WEIGHTS][:12]}..., sealed {seal[WEIGHTS][:12]}...): swapped or "
                         f"edited weights. Restore the original file, or {_REBUILD}")
    return seal_fingerprint(seal)
