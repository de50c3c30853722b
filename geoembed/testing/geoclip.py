"""GeoCLIP's own ``LocationEncoder`` from the installed wheel, loaded without transformers (tests, benchmarks).

``import geoclip`` (or anything under it) runs ``geoclip/__init__.py``, which imports the image encoder and
so transformers. Here the wheel's ``geoclip`` folder is registered under a private package name whose
``__init__`` is never executed, and ``model/location_encoder.py`` (with its relative imports ``.misc`` and
``.rff``) is loaded from it by path. Nothing of the installed package's own ``__init__`` files runs.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

ALIAS = "_geoembed_geoclip_reference"


def geoclip_root() -> Path | None:
    """The installed wheel's ``geoclip`` folder, or None when the wheel is not installed."""
    from importlib import metadata

    try:
        dist = metadata.distribution("geoclip")
    except metadata.PackageNotFoundError:
        return None
    root = Path(dist.locate_file("geoclip"))
    return root if (root / "model" / "location_encoder.py").is_file() else None


def load_location_encoder_module() -> types.ModuleType:
    """GeoCLIP's ``geoclip/model/location_encoder.py`` as a module (its package ``__init__`` files skipped)."""
    root = geoclip_root()
    if root is None:
        raise ModuleNotFoundError("the geoclip wheel is not installed (make install: pip install --no-deps "
                                  "geoclip==1.3.0)")
    for name, folder in ((ALIAS, root), (f"{ALIAS}.model", root / "model")):
        if name not in sys.modules:
            pkg = types.ModuleType(name)
            pkg.__path__ = [str(folder)]  # a namespace-like package: submodules load, no __init__ runs
            sys.modules[name] = pkg
    return importlib.import_module(f"{ALIAS}.model.location_encoder")


def geoclip_location_encoder():
    """GeoCLIP's own ``LocationEncoder`` with the wheel's pretrained weights, in eval mode."""
    return load_location_encoder_module().LocationEncoder().eval()
