"""Strict checks of JSON module specs (encodings, networks) against the constructors that build them.

A spec such as ``{"type": "local_multiscale", "n_scales": 4, ...}`` is a set of keyword arguments of
one constructor. :func:`check_spec_args` compares it with that constructor's signature and type hints
before anything is built: an unknown or missing key, a text ``"4"`` where an integer is expected, a
``true`` where a number is, an infinite float or a string where a list is, is a :class:`SpecError`
naming the key path (``hidden[1]``) and the problem. Nothing is coerced (``int("4")`` would hide a
hand-edited spec). Ranges stay with the constructors (they raise ConfigError).
"""

from __future__ import annotations

import collections.abc
import inspect
import json
import math
import types
import typing
from collections.abc import Callable, Mapping

from geoembed.errors import ConfigError

__all__ = ["SpecError", "check_spec_args", "describe_value", "within"]


class SpecError(ConfigError):
    """A spec value at ``key`` (a path such as ``encodings[0].n_scales``; may be empty) is wrong."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}" if key else problem)


def within(prefix: str, err: ConfigError) -> SpecError:
    """``err`` moved under the key path ``prefix`` (``encodings[0]`` + ``n_scales``)."""
    if isinstance(err, SpecError):
        key = err.key
        joined = prefix if not key else f"{prefix}{key}" if key.startswith("[") else f"{prefix}.{key}"
        return SpecError(joined, err.problem)
    return SpecError(prefix, str(err))


def describe_value(value: object) -> str:
    """A value as it reads in JSON (``"8"`` for text, ``[1, 2]``, ``true``), shortened."""
    try:
        text = json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_NAMES = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}


def _problem(value: object, hint: object) -> tuple[str, str] | None:
    """``(sub-key, problem)`` when ``value`` does not have the type ``hint``, else None."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        found = [_problem(value, a) for a in args if a is not type(None)]
        return None if any(f is None for f in found) else found[0]
    if origin in (collections.abc.Sequence, list, tuple):
        (item,) = typing.get_args(hint)[:1] or (object,)
        if not isinstance(value, list | tuple):
            return "", f"expected a list, got {describe_value(value)}"
        for i, v in enumerate(value):
            sub = _problem(v, item)
            if sub is not None:
                return f"[{i}]{sub[0]}", sub[1]
        return None
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and _finite(value)
    elif hint is str:
        ok = isinstance(value, str)
    else:  # a type this checker does not know: the constructor checks it
        return None
    return None if ok else ("", f"expected {_NAMES[hint]}, got {describe_value(value)}")


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond float range
        return False


def check_spec_args(what: str, build: Callable, spec: Mapping, *, supplied: tuple[str, ...] = ()) -> None:
    """Raise :class:`SpecError` unless ``spec`` holds exactly keyword arguments of ``build`` (a class
    or function) of the annotated types. ``supplied`` are arguments the caller passes itself (not
    allowed in the spec); ``what`` names the spec in messages (``"local_multiscale encoding"``)."""
    fn = build.__init__ if inspect.isclass(build) else build
    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn)
    params = {n: p for n, p in sig.parameters.items()
              if n != "self" and n not in supplied
              and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}
    for key in spec:
        if key not in params:
            raise SpecError(str(key), f"unknown setting of the {what} (it takes {', '.join(params) or 'none'})")
    for name, p in params.items():
        if name not in spec:
            if p.default is inspect.Parameter.empty:
                raise SpecError(name, f"missing: the {what} needs it")
            continue
        found = _problem(spec[name], hints.get(name))
        if found is not None:
            raise SpecError(name + found[0], found[1])
