"""Configuration of the training stage (owned by the trainer; placeholder until it lands)."""

from __future__ import annotations

from geoembed.config.base import Section


class TrainConfig(Section):
    """Placeholder: replaced by the trainer's full section."""
