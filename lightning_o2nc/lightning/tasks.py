"""Which LightningModule a config trains: the task follows the data module.

``o2nc-train`` and sweep trials build one CLI per config. A :class:`~.text_data.CharTextDataModule`
(or a subclass) in ``data.class_path`` means character-level language modelling with
:class:`~.language_module.CharLanguageModule`; every other data module means classification with
:class:`~.module.O2NCModule`. The model stays out of subclass mode, so its options sit directly
under ``model:`` (``model.lr``, ``model.schedules``, ...) for both tasks.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from importlib import import_module
from typing import Any

import yaml

from .data import ClassificationDataModule
from .language_module import CharLanguageModule
from .module import O2NCModule
from .text_data import CharTextDataModule

__all__ = ["TASKS", "data_class_path", "task_classes"]

#: ``(data module base, the LightningModule that trains on it)``, the first match wins.
TASKS = ((CharTextDataModule, CharLanguageModule), (ClassificationDataModule, O2NCModule))


def task_classes(data_class_path: str | None) -> tuple[type, type]:
    """``(model class, data module base)`` of the task whose data module ``data_class_path`` names.

    Args:
        data_class_path: ``data.class_path`` of a config: a dotted path or a class name of
            :mod:`lightning_o2nc.lightning`; ``None`` or an unknown name: classification.
    """
    data_class = _import_class(data_class_path) if data_class_path else None
    for data_base, model_class in TASKS:
        if isinstance(data_class, type) and issubclass(data_class, data_base):
            return model_class, data_base
    return O2NCModule, ClassificationDataModule


def _import_class(path: str) -> Any:
    module_name, _, name = path.rpartition(".")
    try:
        module = import_module(module_name or "lightning_o2nc.lightning")
        return getattr(module, name, None)
    except ImportError:
        return None


def data_class_path(args: Any) -> str | None:
    """``data.class_path`` as the CLI will see it: from a config dict, or from the command line's
    ``--config`` files and ``--data`` / ``--data.class_path`` flags (the last one wins)."""
    if isinstance(args, Mapping):
        data = args.get("data")
        return data.get("class_path") if isinstance(data, Mapping) else None
    argv = list(sys.argv[1:] if args is None else args)
    found = None
    for index, arg in enumerate(argv):
        flag, equals, value = arg.partition("=")
        if not equals:
            value = argv[index + 1] if index + 1 < len(argv) else ""
        if flag in ("--config", "-c"):
            try:
                with open(value) as file:
                    config = yaml.safe_load(file)
            except (OSError, yaml.YAMLError):
                continue  # LightningCLI reports it
            data = config.get("data") if isinstance(config, Mapping) else None
            if isinstance(data, Mapping) and data.get("class_path"):
                found = data["class_path"]
        elif flag in ("--data", "--data.class_path") and value and not value.startswith("-"):
            found = value
    return found
