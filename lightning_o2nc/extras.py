"""The optional parts of the install, and the one line that names the extra a feature is missing.

The core install (``pip install lightning-o2nc``) carries what training, the CLIs, sweeps and
TensorBoard need. A feature outside it imports its modules through :func:`require`, which turns
an ``ImportError`` into :class:`MissingExtra`: one line that says which extra to install, e.g.

    the sweep report's plots: the [report] extra is not installed (no module named
    'matplotlib'); pip install 'lightning-o2nc[report]'

This module imports nothing beyond the standard library, so every layer may use it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "MissingExtra", "require"]

#: extra -> the modules its features import (the distributions are listed in pyproject.toml).
EXTRAS: dict[str, tuple[str, ...]] = {
    "report": ("matplotlib", "plotly", "pandas"),
    "cmaes": ("cmaes",),
    "postgres": ("psycopg2",),
    "grpc": ("grpc",),
    "dashboard": ("optuna_dashboard",),
}


class MissingExtra(ImportError):
    """A feature's optional dependency is not installed; the message names the extra."""

    def __init__(self, feature: str, extra: str, missing: str) -> None:
        super().__init__(
            f"{feature}: the [{extra}] extra is not installed (no module named {missing!r}); "
            f"pip install 'lightning-o2nc[{extra}]'"
        )
        self.extra = extra
        self.missing = missing


def require(extra: str, feature: str, *modules: str) -> list[ModuleType]:
    """Import the modules of ``extra`` (or the named subset) and return them in order.

    Args:
        extra: a key of :data:`EXTRAS`.
        feature: what needs them, as the user knows it (e.g. ``"sampler.name: cmaes"``).
        *modules: the modules to import; default: all of the extra's.

    Raises:
        MissingExtra: one of them cannot be imported.
    """
    if extra not in EXTRAS:
        raise ValueError(f"extra must be one of {sorted(EXTRAS)}, got {extra!r}")
    imported = []
    for name in modules or EXTRAS[extra]:
        try:
            imported.append(importlib.import_module(name))
        except ImportError as error:
            raise MissingExtra(feature, extra, error.name or name) from None
    return imported
