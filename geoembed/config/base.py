"""Base model for all configuration sections: unknown keys are errors, types are strict-ish."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A configuration section. Unknown keys are rejected so that typos never pass silently."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)
