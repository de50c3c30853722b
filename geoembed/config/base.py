"""Base model for all configuration sections: unknown keys are errors and types are strict.

Strict means a value must already have the type the key takes: ``true`` is no number and ``"400"`` is no
integer (each an error naming the key), while an integer is accepted where a float is expected. A YAML
sequence is accepted where a fixed-length tuple is expected (YAML has no tuples).
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


def _takes_tuple(annotation: Any) -> bool:
    """True when the annotation is a tuple type, or an optional/union that contains one."""
    origin = typing.get_origin(annotation)
    if origin is tuple or annotation is tuple:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_takes_tuple(a) for a in typing.get_args(annotation))
    return False


class Section(BaseModel):
    """A configuration section. Unknown keys are rejected so that typos never pass silently."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _yaml_sequences_as_tuples(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                key = field.alias or name
                if isinstance(data.get(key), list) and _takes_tuple(field.annotation):
                    data = {**data, key: tuple(data[key])}
        return data
