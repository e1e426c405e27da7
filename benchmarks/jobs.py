"""Run many independent benchmark jobs on a few processes, keeping each finished job's result.

Each job is ``function(*args)`` returning a JSON-able dict. Jobs run in ``workers`` spawned
processes with one torch thread each (on 2 cores, two single-threaded runs side by side are both
the fastest and the most robust layout against other load), or in this process with
``workers=0``. With ``cache``, every finished job's result is written to its own JSON file, named
by a hash of the function and its arguments, and a rerun after a crash or an interruption reads it
back instead of training again.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any


def _job_key(function: Callable, args: Sequence[Any]) -> str:
    # not the module: under ``python -m`` it is __main__ here and __mp_main__ in the workers
    text = json.dumps([function.__qualname__, list(args)], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _single_threaded() -> None:
    import torch

    torch.set_num_threads(1)


def _cached(function: Callable, cache: Path | None, *args: Any) -> dict[str, Any]:
    if cache is None:
        return function(*args)
    path = cache / f"{function.__name__}-{_job_key(function, args)}.json"
    if path.is_file():
        return json.loads(path.read_text())
    result = function(*args)
    cache.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(result))
    partial.replace(path)
    return result


def run_jobs(
    function: Callable[..., dict[str, Any]],
    tasks: Sequence[Sequence[Any]],
    workers: int,
    cache: Path | None = None,
) -> list[dict[str, Any]]:
    """``[function(*args) for args in tasks]``, on ``workers`` processes, in the order of ``tasks``."""
    if not workers:
        return [_cached(function, cache, *args) for args in tasks]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_single_threaded) as pool:
        futures = [pool.submit(_cached, function, cache, *args) for args in tasks]
        return [future.result() for future in futures]
