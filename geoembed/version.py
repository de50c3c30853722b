"""The package version, written once: ``version`` in pyproject.toml, read back through the installed
distribution's metadata (:func:`importlib.metadata.version`).

Every writer of a version string (the bundle's ``package_version``, the enriched table's
``geoembed_version``) takes :data:`__version__` from here; ``geoembed.__version__`` is the same value.
A source checkout that is not installed reads pyproject.toml beside the package instead.
"""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

DISTRIBUTION = "geoembed"


def package_version() -> str:
    """The installed distribution's version; else pyproject.toml's; else ``0+unknown``."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        pass
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    try:
        project = tomllib.loads(pyproject.read_text()).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        return "0+unknown"
    if project.get("name") != DISTRIBUTION or not isinstance(project.get("version"), str):
        return "0+unknown"
    return project["version"]


__version__ = package_version()
