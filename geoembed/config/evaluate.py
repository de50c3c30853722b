"""Configuration of the evaluation stage (placeholder until it lands)."""

from __future__ import annotations

from geoembed.config.base import Section


class EvaluateConfig(Section):
    """Placeholder: replaced by the evaluation stage's full section."""
