"""What ``o2nc-train`` and the sweeps' runs do not print of Lightning's output: its "💡 Tip"
advertisements for its cloud products and warnings nobody running the command can act on.

This list changes with Lightning's releases, not with the CLI: it is kept here, on its own, so
that a new Lightning message is one line in one place. A Trainer of the user's own keeps all of
Lightning's output; only this project's entry points call :func:`silence_unactionable_output`.
"""

from __future__ import annotations

import functools
import logging
import warnings

from typing_extensions import override

__all__ = ["silence_unactionable_output"]

# Messages nobody running o2nc-train can act on: Lightning's advertisements for its cloud
# products, a torch deprecation inside Lightning's own code, and the checkpoint folder of a
# finished fit being "changed" when that checkpoint is tested from a new version folder.
_TIP_PREFIX = "💡 Tip:"
_UNACTIONABLE_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
    r"The dirpath has changed from .* won't be reloaded.*",
)
_LIGHTNING_LOGGERS = (
    "lightning.pytorch",
    "pytorch_lightning",
    "lightning.fabric",
    "lightning_fabric",
    "lightning_utilities",
)


class _DropTips(logging.Filter):
    @override
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_TIP_PREFIX)


@functools.cache
def silence_unactionable_output() -> None:
    """Drops Lightning's "💡 Tip" lines and the warnings in ``_UNACTIONABLE_WARNINGS``.

    Called by the entry points of :mod:`.cli` only (``o2nc-train``, ``build_run``); a Trainer of the
    user's own keeps Lightning's output.
    """
    for pattern in _UNACTIONABLE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in _LIGHTNING_LOGGERS:  # rank_zero_info logs through a child of one of these
        for logger_name in (name, f"{name}.utilities.rank_zero", f"{name}.core.rank_zero"):
            logging.getLogger(logger_name).addFilter(_DropTips())
