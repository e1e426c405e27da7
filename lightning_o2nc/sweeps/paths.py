"""Dotted paths into a LightningCLI config dict (``model.lr``, ``data.init_args.batch_size``).

A sweep names every field it changes by a dotted path. :func:`check_path` refuses a path that does
not lead anywhere *before* any trial runs; :func:`set_path` writes a value into a copy of the train
config for one trial.

A path is valid when it exists in the train config, or when its first missing key is a constructor
argument of the class that section configures (``Trainer`` for ``trainer``, the LightningModule for
``model``, the data module for ``data``). Below such an argument (for example the free-form
``model.schedules`` mapping) the remaining keys are created on write.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, MutableMapping
from typing import Any

from .errors import SweepConfigError

__all__ = ["check_path", "flatten_paths", "get_path", "set_path", "split_path"]

#: The LightningModule used when a train config's ``model`` section has no ``class_path`` and
#: its data module is a classification one (a text data module trains a language model: the
#: CLI's :func:`~lightning_o2nc.lightning.tasks.task_classes` decides).
DEFAULT_MODEL_CLASS = "lightning_o2nc.O2NCModule"

_MISSING = object()


def split_path(path: str) -> list[str]:
    """Split ``"model.schedules.lr"`` into its keys, refusing empty segments."""
    if not isinstance(path, str) or not path:
        raise SweepConfigError(f"a config path must be a non-empty string, got {path!r}")
    keys = path.split(".")
    if any(not key for key in keys):
        raise SweepConfigError(f"config path {path!r} has an empty segment")
    return keys


def get_path(config: Mapping[str, Any], path: str, default: Any = _MISSING) -> Any:
    """Return the value at ``path``; ``default`` (or ``KeyError``) when any key is missing."""
    node: Any = config
    for key in split_path(path):
        if not isinstance(node, Mapping) or key not in node:
            if default is _MISSING:
                raise KeyError(path)
            return default
        node = node[key]
    return node


def set_path(config: MutableMapping[str, Any], path: str, value: Any) -> None:
    """Write ``value`` at ``path``, creating missing intermediate mappings."""
    keys = split_path(path)
    node: Any = config
    for depth, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        elif not isinstance(child, MutableMapping):
            where = ".".join(keys[: depth + 1])
            raise SweepConfigError(
                f"cannot set {path!r}: {where!r} holds {type(child).__name__} {child!r}, not a mapping"
            )
        node = child
    node[keys[-1]] = value


def flatten_paths(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"lr": 0.1}}`` -> ``{"model.lr": 0.1}``: nested mappings to dotted paths."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(flatten_paths(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _import_class(class_path: str) -> type | None:
    module_name, _, name = class_path.rpartition(".")
    if not module_name:
        return None
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        return None


def _task_model_class(config: Mapping[str, Any]) -> type | None:
    """The LightningModule that ``o2nc-train`` builds for ``config`` (it follows the data module)."""
    from lightning_o2nc.lightning.tasks import task_classes

    data = config.get("data")
    data_class_path = data.get("class_path") if isinstance(data, Mapping) else None
    return (
        task_classes(data_class_path)[0] if data_class_path else _import_class(DEFAULT_MODEL_CLASS)
    )


def _constructor_arguments(cls: type | None) -> set[str] | None:
    """The arguments LightningCLI accepts for ``cls``, read by jsonargparse as LightningCLI reads them.

    jsonargparse follows ``**kwargs`` into the parent classes' constructors, so a subclass that
    forwards its keyword arguments still offers its parents' ones.
    """
    if cls is None:
        return None
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    try:
        parser.add_class_arguments(cls, "init_args", fail_untyped=False)
    except (TypeError, ValueError):
        return None
    defaults = parser.get_defaults()  # a jsonargparse Namespace: dotted keys, not iterable
    return {key.split(".")[1] for key in defaults.keys()}  # noqa: SIM118


def _section_arguments(config: Mapping[str, Any], keys: list[str]) -> tuple[int, set[str]] | None:
    """For a path into a class-configuring section, where its arguments start and their names.

    Returns ``(depth, names)``: ``keys[depth]`` must be one of ``names``. ``None`` when the
    section configures no known class (then only existing keys are valid).
    """
    section = keys[0]
    if section == "trainer":
        from lightning.pytorch import Trainer

        return 1, _constructor_arguments(Trainer) or set()
    if section in ("model", "data"):
        node = config.get(section)
        if isinstance(node, Mapping) and "class_path" in node:
            if len(keys) < 2 or keys[1] != "init_args":
                return None
            names = _constructor_arguments(_import_class(str(node["class_path"])))
            return None if names is None else (2, names)
        if section == "model":
            names = _constructor_arguments(_task_model_class(config))
            return None if names is None else (1, names)
    return None


def check_path(config: Mapping[str, Any], path: str, *, key: str) -> None:
    """Refuse ``path`` unless it leads to a field of the train config.

    Args:
        config: the train config (as loaded from YAML).
        path: dotted path such as ``"model.lr"``.
        key: where the path was written in the sweep file, for the error message
            (for example ``"space.model.lr"``).

    Raises:
        SweepConfigError: naming ``key`` and the first missing segment.
    """
    keys = split_path(path)
    node: Any = config
    for depth, name in enumerate(keys):
        if isinstance(node, Mapping) and name in node:
            node = node[name]
            continue
        missing = ".".join(keys[: depth + 1])
        if not isinstance(node, Mapping) and node is not None:
            raise SweepConfigError(
                f"{key}: {path!r} goes through {'.'.join(keys[:depth])!r}, which holds "
                f"{type(node).__name__} {node!r}, not a mapping"
            )
        arguments = _section_arguments(config, keys)
        if arguments is not None:
            arg_depth, names = arguments
            if depth > arg_depth or (depth == arg_depth and name in names):
                return
            if depth == arg_depth:
                close = sorted(n for n in names if n.startswith(name[:3]))[:5]
                hint = f" (did you mean one of {close}?)" if close else ""
                raise SweepConfigError(
                    f"{key}: {path!r} does not exist in the train config: {missing!r} is not an "
                    f"argument of the class this section configures{hint}"
                )
        raise SweepConfigError(
            f"{key}: {path!r} does not exist in the train config (no {missing!r})"
        )
