"""The raw results of the benchmarks: one JSON file per benchmark under ``benchmarks/results/``.

A benchmark script writes ``<name>.json`` (and its figures) there; :mod:`benchmarks.render`
builds RESULTS.md from these files alone. The files are committed, so the rendered Markdown can
always be rebuilt and diffed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: store them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


#: What ``scaling="uniform"`` meant when a result was written: since issue 19, U(0, 2) with the
#: authors' importance weight 2 - s on the next gradient. Results without this entry predate it.
UNIFORM_SCALING = "importance-weighted"


def write_result(name: str, result: dict[str, Any], folder: Path = RESULTS_DIR) -> Path:
    """Write ``result`` as ``<folder>/<name>.json`` (atomically, NaN/inf as null), recording what
    uniform scaling meant (:data:`UNIFORM_SCALING`)."""
    result = {**result, "uniform_scaling": UNIFORM_SCALING}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(_finite(result), indent=1, sort_keys=False) + "\n")
    partial.replace(path)
    return path


def read_result(name: str, folder: Path = RESULTS_DIR) -> dict[str, Any] | None:
    """The stored result ``<folder>/<name>.json``, or None when that benchmark has not run."""
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None
