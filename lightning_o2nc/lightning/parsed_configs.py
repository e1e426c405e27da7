"""Parsed configs kept for reuse: a config that differs from one parsed before only in numbers.

A sweep worker builds one run per trial from the same train config, and the trials differ only
in the searched values. jsonargparse parses and type-checks the whole config every time (~27 ms
of a ~35 ms build on the digits demo: defaults, every Trainer argument, the logger's and data
module's subclass specs), although the result differs from an earlier one only in those values.
jsonargparse has no incremental parse (``parse_object(obj, namespace=...)`` still parses the
defaults and the whole merged config), so :class:`ParsedConfigs` keeps, per parser, the result of
one full parse per *shape* of config: its keys, its strings, and the types of its numbers. A
config of a shape already parsed is the kept result with its numbers replaced. The parser then
validates the sections that hold a replaced number (``parser.validate``, the check a parse ends
with, given those sections alone): the others are the kept parse's own, validated when it was
made, and a section's check does not depend on another's (links apply at instantiation). On the
digits demo that is ~1 ms for ``model`` against ~7 ms for the whole config, most of it
``trainer``.

A number is replaced only where the kept result holds it exactly as the config gave it (same
type, same value): where jsonargparse converted it (a ``Path``, an ``Enum``, a link target),
the config is parsed in full. Strings never vary within a shape, so a class path, a choice of
schedule or anything jsonargparse resolves from a string is always parsed for real. A link that
jsonargparse applies while parsing would not be applied again to a replaced number: the one CLI
that reuses parses (:func:`~.cli.build_run`'s) links arguments only when it instantiates them.
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Mapping
from typing import Any, NamedTuple

from jsonargparse import Namespace

__all__ = ["ParsedConfigs", "Reused", "config_shape"]

#: Leaf values that may vary within a shape.
_NUMBERS = (bool, int, float)
#: Shapes kept per parser (one per choice of a categorical dimension, typically).
MAX_SHAPES = 32

Path = tuple[str, ...]


def config_shape(config: Any) -> Hashable:
    """What two configs must share for one to be the other with some numbers replaced."""
    if isinstance(config, Mapping):
        return ("dict", tuple((str(key), config_shape(value)) for key, value in config.items()))
    if isinstance(config, (list, tuple)):
        return (type(config).__name__, tuple(config_shape(value) for value in config))
    if isinstance(config, _NUMBERS):
        return ("number", type(config).__name__)
    return ("value", type(config).__name__, repr(config))


def _changed_numbers(old: Any, new: Any, path: Path = ()) -> list[tuple[Path, Any, Any]]:
    """``(path, old, new)`` for every number that differs between two configs of one shape."""
    if isinstance(old, Mapping):
        return [
            change
            for key in old
            for change in _changed_numbers(old[key], new[key], (*path, str(key)))
        ]
    if isinstance(old, (list, tuple)):
        return [
            change
            for i, (a, b) in enumerate(zip(old, new, strict=True))
            for change in _changed_numbers(a, b, (*path, str(i)))
        ]
    return [] if old == new else [(path, old, new)]


def _locate(namespace: Namespace, path: Path) -> tuple[str, Path] | None:
    """``(key, rest)``: the longest dotted prefix of ``path`` that ``namespace`` holds, and the
    keys that lead from its value (a dict) to the leaf; ``None`` when no prefix is held."""
    for end in range(len(path), 0, -1):
        key = ".".join(path[:end])
        if key in namespace:
            return key, path[end:]
    return None


def _read(value: Any, rest: Path) -> Any:
    for key in rest:
        if not isinstance(value, Mapping) or key not in value:
            raise KeyError(key)
        value = value[key]
    return value


class Reused(NamedTuple):
    """A kept parse with a config's numbers put in, and where they went."""

    #: The kept parse (a clone) holding the config's numbers; not yet validated.
    parsed: Namespace
    #: The top-level keys (sections) of ``parsed`` that hold a replaced number.
    sections: tuple[str, ...]

    def changed_sections(self) -> Namespace:
        """``parsed`` restricted to :attr:`sections`: what is left to validate."""
        partial = Namespace()
        for section in self.sections:
            partial[section] = self.parsed[section]
        return partial


class ParsedConfigs:
    """Full parses kept per parser and config shape; see the module docstring."""

    def __init__(self) -> None:
        self._kept: dict[tuple[Hashable, Hashable], tuple[dict[str, Any], Namespace]] = {}

    def keep(self, parser_key: Hashable, config: Mapping[str, Any], parsed: Namespace) -> None:
        """Keep ``parsed``, the full parse of ``config`` by the parser of ``parser_key``."""
        if len(self._kept) >= MAX_SHAPES:
            self._kept.pop(next(iter(self._kept)))
        shape = config_shape(config)
        self._kept[parser_key, shape] = (copy.deepcopy(dict(config)), parsed.clone())

    def reuse(self, parser_key: Hashable, config: Mapping[str, Any]) -> Reused | None:
        """The parse of ``config`` made from a kept one of its shape (not yet validated), or
        ``None`` when there is none or a changed number was converted by the parse."""
        kept = self._kept.get((parser_key, config_shape(config)))
        if kept is None:
            return None
        kept_config, kept_parsed = kept
        parsed = kept_parsed.clone()
        sections: dict[str, None] = {}
        for path, old, new in _changed_numbers(kept_config, config):
            located = _locate(parsed, path)
            if located is None:
                return None
            key, rest = located
            try:
                held = _read(parsed[key], rest)
            except KeyError:
                return None
            if type(held) is not type(old) or held != old:
                return None  # jsonargparse converted it: only a parse knows what to
            if rest:  # a number inside a dict-typed argument (the clone's own dict)
                _read(parsed[key], rest[:-1])[rest[-1]] = new
            else:
                parsed[key] = new
            sections[key.split(".", 1)[0]] = None
        return Reused(parsed, tuple(sections))
