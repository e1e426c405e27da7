"""Where ``--ckpt_path last`` finds the fit to resume: the run's newest version holding ``last.ckpt``.

Lightning resolves ``ckpt_path="last"`` against the checkpoint folder of the logger's *new* version
(``version_<n+1>``), which never holds one, so a second ``o2nc-train fit ... --ckpt_path last``
would start from scratch. A run is named by its logger (``save_dir/name``); each fit of it writes
``version_<n>/checkpoints/last.ckpt``. Resuming means: pick the newest version folder that holds a
``last.ckpt`` (a ``test`` run's version folder holds none), restore it, and keep logging into that
same version, so TensorBoard shows one continuous run and the checkpoints stay in one place.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["LAST_CHECKPOINT", "latest_resumable_version", "logger_run_folder"]

LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
_VERSION_FOLDER = re.compile(r"version_(\d+)")


def logger_run_folder(logger: Any) -> tuple[Path, Any] | None:
    """``(save_dir/name, version)`` of a logger config in the form a LightningCLI config holds.

    Args:
        logger: The value of ``trainer.logger``: a mapping with ``class_path`` and ``init_args``
            (``save_dir``, ``name``, ``version``), a list of such (the first one counts), or
            ``None``/``False``/``True``.

    Returns:
        ``None`` for a logger without ``save_dir`` and ``name`` (e.g. no logger at all).
    """
    if isinstance(logger, list):
        logger = logger[0] if logger else None
    init_args = _get(logger, "init_args")
    save_dir, name = _get(init_args, "save_dir"), _get(init_args, "name")
    if save_dir is None or name is None:
        return None
    return Path(save_dir) / (name or ""), _get(init_args, "version")


def latest_resumable_version(run_folder: Path, version: Any = None) -> tuple[Any, Path] | None:
    """The newest ``version_<n>`` under ``run_folder`` holding ``checkpoints/last.ckpt``.

    Args:
        run_folder: ``save_dir/name`` of the logger.
        version: The logger's fixed version (an int or a folder name); ``None`` searches them all.

    Returns:
        ``(version, path of last.ckpt)``, or ``None`` when no version holds one.
    """
    if version is not None:
        folder = run_folder / (f"version_{version}" if isinstance(version, int) else str(version))
        return (version, folder / LAST_CHECKPOINT) if (folder / LAST_CHECKPOINT).is_file() else None
    numbered = []
    if run_folder.is_dir():
        for folder in run_folder.iterdir():
            match = _VERSION_FOLDER.fullmatch(folder.name)
            if match and (folder / LAST_CHECKPOINT).is_file():
                numbered.append((int(match.group(1)), folder / LAST_CHECKPOINT))
    return max(numbered) if numbered else None


def _get(config: Any, key: str) -> Any:
    """A key of a jsonargparse ``Namespace`` or of a plain mapping; ``None`` when absent."""
    if isinstance(config, Mapping):
        return config.get(key)
    return getattr(config, key, None) if config is not None else None
