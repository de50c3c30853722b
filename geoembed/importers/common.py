"""What every importer shares: loading PyTorch files without running pickled code, checking state
dicts, and writing the imported encoder as an ordinary bundle (with its model card and an optional
reduction).

Loading: ``torch.load(weights_only=True)`` accepts tensors and plain containers only. The allowlist
adds exactly one thing: Lightning's ``AttributeDict`` (the dict subclass Lightning may store
hyper-parameters in), rebuilt as a plain ``dict`` (the name is mapped to ``dict``; Lightning is never
imported). Anything else (a pickled class, a function) is refused with an error naming the file and the
object; nothing is run.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from geoembed.errors import InputError

log = logging.getLogger(__name__)

#: Module paths under which Lightning versions define ``AttributeDict`` (a ``dict`` subclass).
_ATTRIBUTE_DICTS = (
    "lightning.fabric.utilities.data.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
    "pytorch_lightning.utilities.parsing.AttributeDict",
    "lightning.pytorch.utilities.parsing.AttributeDict",
)

#: A global footprint: a model trained on the whole Earth has no "outside".
GLOBAL_BBOX = (-180.0, -90.0, 180.0, 90.0)


def load_torch_file(path: str | os.PathLike, what: str = "PyTorch file") -> Any:
    """``torch.load(path, weights_only=True)`` on CPU with the small allowlist above.

    Raises InputError naming the file when it is missing, not a PyTorch file, or holds a pickled
    object other than tensors and plain containers (naming that object).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} {p} does not exist")
    allow = [(dict, name) for name in _ATTRIBUTE_DICTS]  # rebuilt as a plain dict; Lightning is not imported
    try:
        with torch.serialization.safe_globals(allow):
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every failure is a bad file; say which kind
        text = str(err)
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if isinstance(err, pickle.UnpicklingError) and found:
            raise InputError(f"{what} {p} holds a pickled object ({found.group(1)}) where tensors and plain "
                             f"containers are expected; geoembed never runs pickled code (torch.load "
                             f"weights_only). Re-save it as a plain dict of tensors") from None
        detail = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
        first = detail.group(1) if detail else (text.strip().splitlines() or [type(err).__name__])[0]
        raise InputError(f"{what} {p} is not a readable PyTorch file: {first}") from None
    return obj


def tensor_dict(obj: Any, origin: str) -> dict[str, torch.Tensor]:
    """Check that ``obj`` is a mapping of names to tensors; InputError names ``origin`` and the key."""
    if not isinstance(obj, Mapping):
        raise InputError(f"{origin} is a {type(obj).__name__}, not a mapping of parameter names to tensors")
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise InputError(f"{origin}: key {key!r} is not a parameter name")
        if not isinstance(value, torch.Tensor):
            raise InputError(f"{origin}: {key!r} holds a {type(value).__name__}, not a tensor")
        out[key] = value
    return out


def check_shapes(state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], origin: str) -> None:
    """Every expected key present with its shape and a floating dtype, and no other key."""
    missing = [k for k in expected if k not in state]
    if missing:
        raise InputError(f"{origin} lacks {len(missing)} expected tensor(s), e.g. {missing[:4]}")
    extra = [k for k in state if k not in expected]
    if extra:
        raise InputError(f"{origin} holds {len(extra)} unexpected tensor(s), e.g. {extra[:4]}")
    for key, shape in expected.items():
        t = state[key]
        if tuple(t.shape) != tuple(shape):
            raise InputError(f"{origin}: tensor {key!r} has shape {tuple(t.shape)}, expected {tuple(shape)}")
        if not t.is_floating_point():
            raise InputError(f"{origin}: tensor {key!r} has dtype {t.dtype}, expected floating point")
        if not bool(torch.isfinite(t).all()):
            raise InputError(f"{origin}: tensor {key!r} holds NaN or infinite values")


def global_footprint():
    """The whole Earth as a footprint (nothing is out of support)."""
    import shapely

    return shapely.box(*GLOBAL_BBOX)


def write_imported_bundle(output: str | os.PathLike, encoder: torch.nn.Module, *, card: dict, config: dict,
                          footprint=None, out_of_support_km: float = 0.0, reduction_request=None,
                          overwrite: bool = False, data_fingerprint: str) -> Path:
    """Write an imported encoder as a bundle (atomically: nothing that looks complete on failure).

    ``reduction_request`` (a :class:`geoembed.importers.reduce.ReductionRequest`) fits a PCA on the
    encoder's embeddings of its reference locations and ships it inside the bundle.
    """
    from geoembed.importers.reduce import check_card
    from geoembed.io.bundle import save_bundle

    out = Path(output)
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} already exists; choose another --output or pass --overwrite")
    card = check_card(card, int(encoder.embedding_dim))
    encoder.eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    reduction = None
    if reduction_request is not None:
        from geoembed.importers.reduce import fit_encoder_reduction

        reduction = fit_encoder_reduction(encoder, reduction_request)
    footprint = global_footprint() if footprint is None else footprint
    path = save_bundle(out, encoder, encoder.spec, footprint=footprint, out_of_support_km=out_of_support_km,
                       config=config, metrics={}, data_fingerprint=data_fingerprint, card=card,
                       reduction=reduction)
    log.info("wrote %s", path)
    return path
