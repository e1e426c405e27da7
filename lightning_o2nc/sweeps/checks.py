"""Checks of YAML values shared by the sweep file and its search space.

Each raises :class:`SweepConfigError` whose message starts with the key that holds the value
(``space.model.lr.low``, ``storage.grace_period``), so the user knows which line to fix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .errors import SweepConfigError

__all__ = [
    "Scalar",
    "bounds",
    "check_keys",
    "grid_values",
    "mapping",
    "number",
    "positive_int",
    "scalar_list",
]

Scalar = str | int | float | bool | None


def check_keys(spec: Mapping[str, Any], allowed: set[str] | frozenset[str], key: str) -> None:
    """Refuse keys of ``spec`` outside ``allowed``; ``key`` is empty at the file's top level."""
    unknown = sorted(set(spec) - allowed)
    if unknown:
        where = f"{key}: unknown key(s)" if key else "unknown top-level key(s)"
        raise SweepConfigError(f"{where} {unknown}; allowed here: {sorted(allowed)}")


def mapping(value: Any, key: str) -> dict[str, Any]:
    """A YAML mapping; a missing or ``null`` value is an empty one."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SweepConfigError(f"{key} must be a mapping, got {value!r}")
    return dict(value)


def number(value: Any, key: str, *, integer: bool = False) -> float | int:
    """A YAML number; also accepts ``"1e-3"``, which YAML 1.1 (PyYAML) reads as a string."""
    if isinstance(value, bool):
        raise SweepConfigError(f"{key} must be a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise SweepConfigError(f"{key} must be a number, got {value!r}") from None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SweepConfigError(f"{key} must be a finite number, got {value!r}")
    if integer:
        if float(value) != int(value):
            raise SweepConfigError(f"{key} must be an integer, got {value!r}")
        return int(value)
    return float(value)


def positive_int(value: Any, key: str) -> int:
    """A YAML integer greater than zero (``true`` is not one)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SweepConfigError(f"{key} must be a positive integer, got {value!r}")
    return value


def scalar_list(values: Any, key: str) -> list[Scalar]:
    """A non-empty list of distinct strings, numbers, booleans or nulls."""
    if not isinstance(values, list) or not values:
        raise SweepConfigError(f"{key} must be a non-empty list, got {values!r}")
    for value in values:
        if not isinstance(value, (str, int, float, bool)) and value is not None:
            raise SweepConfigError(
                f"{key}: choices must be strings, numbers, booleans or null, got {value!r}"
            )
    if len(set(map(repr, values))) != len(values):
        raise SweepConfigError(f"{key} lists a value twice: {values!r}")
    return list(values)


def grid_values(values: Any, key: str) -> tuple[Scalar, ...]:
    """A ``grid`` list; its YAML 1.1 number strings (``"1e-3"``) are read as numbers."""
    return tuple(
        number(v, key) if isinstance(v, str) and _looks_numeric(v) else v
        for v in scalar_list(values, key)
    )


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def bounds(spec: Mapping[str, Any], key: str, *, integer: bool = False) -> tuple[Any, Any, bool]:
    """``low <= high`` (numbers, integers with ``integer``) and ``log`` (default false)."""
    for bound in ("low", "high"):
        if bound not in spec:
            raise SweepConfigError(f"{key}: missing `{bound}`")
    low = number(spec["low"], f"{key}.low", integer=integer)
    high = number(spec["high"], f"{key}.high", integer=integer)
    if low > high:
        raise SweepConfigError(f"{key}: low ({low}) > high ({high})")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SweepConfigError(f"{key}.log must be true or false, got {log!r}")
    return low, high, log
