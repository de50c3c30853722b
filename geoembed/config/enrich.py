"""Configuration of the enrich stage of ``geoembed run``: the ``enrich:`` section of a config.

::

    enrich:
      input: policies.parquet        # CSV / Parquet / GeoParquet file, relative to the config file
      output: runs/x/policies_enriched.parquet   # default <workdir>/enriched/<input file name>
      lon_col: lon                   # default lon / lat (GeoParquet: its point geometry)
      lat_col: lat
      on_invalid: error              # or null: invalid coordinates get empty embeddings
      bundle: runs/x/bundle          # default: the run's own bundle (<workdir>/bundle)

``geoembed enrich`` takes the same settings as options; an ``evaluate:`` section without a ``table``
evaluates the enriched output.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from geoembed.config.base import Section

__all__ = ["EnrichConfig"]


class EnrichConfig(Section):
    """A table to enrich with the run's embeddings (see the module docstring)."""

    input: str = Field(min_length=1, description="CSV / Parquet / GeoParquet file with coordinates")
    output: str | None = Field(default=None, description="enriched table (default <workdir>/enriched/<input name>)")
    lon_col: str | None = Field(default=None, description="longitude column (default lon; GeoParquet: geometry)")
    lat_col: str | None = Field(default=None, description="latitude column (default lat)")
    on_invalid: Literal["error", "null"] = Field(
        default="error", description="invalid coordinates: an error listing the first bad rows, or null embeddings")
    bundle: str | None = Field(default=None, description="model bundle (default the run's <workdir>/bundle)")
