"""What an experiment is, where its results live, and how one runs.

An experiment is one module of :mod:`benchmarks.experiments` holding :class:`Experiment` records.
:func:`run_experiment` resolves the settings (the committed run's, or ``quick`` ones), runs it,
records the environment (torch, CPU, threads, commit) and the command, draws the figures from the
result alone and writes ``<name>.json`` to ``benchmarks/results/`` (a quick run: to the work folder,
never touching what is committed), from which :mod:`benchmarks.render` builds RESULTS.md.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
RESULTS_PATH = BENCH_DIR / "RESULTS.md"
WORK_DIR = BENCH_DIR / "_work"  # git-ignored: studies, logs, checkpoints, job caches

#: What ``scaling="uniform"`` meant when a result was written: since issue 19, U(0, 2) with the
#: authors' importance weight 2 - s on the next gradient. Results without this entry predate it.
UNIFORM_SCALING = "importance-weighted"

Result = dict[str, Any]


def work_dir() -> Path:
    """Scratch folder of benchmark runs: ``$O2NC_BENCH_WORK_DIR`` (read at call time, so tests and
    the processes they spawn can redirect it) or ``benchmarks/_work``."""
    return Path(os.environ.get("O2NC_BENCH_WORK_DIR") or WORK_DIR)


@dataclass(frozen=True)
class Experiment:
    """One experiment: what it measures (shown by ``python -m benchmarks list``) and how."""

    name: str  # results/<name>.json and `python -m benchmarks run <name>`
    title: str  # its RESULTS.md section
    workload: str  # what is trained or timed
    arms: tuple[str, ...]  # what is compared
    measurement: str  # which number is taken, and how
    run: Callable[[dict[str, Any], Path], Result]  # (settings, work folder) -> result
    render: Callable[[Result], str]  # result -> the section's Markdown
    settings: dict[str, Any] = field(default_factory=dict)  # the committed run's
    quick: dict[str, Any] = field(default_factory=dict)  # overrides of a smoke run (minutes)
    figure: Callable[[Result, Path], list[str]] | None = None  # draws PNGs, returns their names
    targets: Callable[[Result], list[tuple[str, str, str]]] | None = None  # targets table rows
    command: str | None = None  # how it runs when not through `run` (the GPU check)

    @property
    def how_to_run(self) -> str:
        return self.command or f"python -m benchmarks run {self.name}"

    def resolve(self, quick: bool = False, overrides: dict[str, Any] | None = None) -> dict:
        """The settings of a run: the full ones, then ``quick``'s, then ``overrides``, each of the
        type of the setting it replaces (a number for a float; anything for a None default)."""
        overrides, valid = overrides or {}, ", ".join(self.settings) or "none"
        for key, value in overrides.items():
            if key not in self.settings:
                raise ValueError(f"{self.name}: unknown setting {key}; valid: {valid}")
            default = self.settings[key]
            kinds = (int, float) if isinstance(default, float) else (type(default),)
            if default is not None and not isinstance(value, kinds):
                names = " or ".join(kind.__name__ for kind in kinds)
                raise ValueError(f"{self.name}: setting {key} takes {names}, got {value!r}")
        return {**self.settings, **(self.quick if quick else {}), **overrides}


def environment() -> dict[str, Any]:
    """What a result was measured on: torch, CPU, threads, GPU, commit, read at run time."""
    import torch

    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    cpus = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    cpus.append(platform.processor() or "unknown CPU")  # where /proc/cpuinfo names none
    try:
        git = ["git", "rev-parse", "--short", "HEAD"]
        commit = subprocess.run(git, cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:  # no git: the result says so
        commit = None
    return {
        "date (UTC)": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "torch": torch.__version__,
        "lightning": importlib.metadata.version("lightning"),
        "CPU": f"{cpus[0]}, {len(os.sched_getaffinity(0))} usable cores",
        "threads": torch.get_num_threads(),
        "GPU": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "python": sys.version.split()[0],
        "host": f"{platform.system()} {platform.release()} {platform.machine()}",
        "commit": commit or None,
    }


def write_result(name: str, result: Result, folder: Path = RESULTS_DIR) -> Path:
    """Write ``result`` as ``<folder>/<name>.json`` atomically (NaN/inf as null: JSON has neither),
    recording what uniform scaling meant (:data:`UNIFORM_SCALING`)."""
    result = {**result, "uniform_scaling": UNIFORM_SCALING}
    finite = json.loads(json.dumps(result), parse_constant=lambda nan_or_infinity: None)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(finite, indent=1) + "\n")
    partial.replace(path)
    return path


def read_result(name: str, folder: Path = RESULTS_DIR) -> Result | None:
    """The stored result ``<folder>/<name>.json``, or None when that experiment has not run."""
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def quick_dir() -> Path:
    """Where a quick run writes its JSON, figures and RESULTS.md: under the work folder."""
    return work_dir() / "quick" / "results"


def run_experiment(
    experiment: Experiment,
    quick: bool = False,
    overrides: dict[str, Any] | None = None,
    results_dir: Path | None = None,
) -> Path:
    """Run ``experiment`` and store its result (see the module docstring); return the JSON path."""
    overrides = overrides or {}
    settings = experiment.resolve(quick, overrides)
    folder = results_dir or (quick_dir() if quick else RESULTS_DIR)
    work = work_dir() / ("quick" if quick else "") / experiment.name
    work.mkdir(parents=True, exist_ok=True)
    command = ["python -m benchmarks run", experiment.name, *(["--quick"] if quick else [])]
    command += [f"--set {key}={json.dumps(value)}" for key, value in overrides.items()]
    started = time.perf_counter()
    result = {**experiment.run(settings, work), "settings": settings, "command": " ".join(command)}
    result |= {"seconds": time.perf_counter() - started, "env": environment()}
    if experiment.figure is not None:
        folder.mkdir(parents=True, exist_ok=True)
        result["figures"] = experiment.figure(result, folder)
    return write_result(experiment.name, result, folder)


def run_jobs(function: Callable, tasks: Sequence, workers: int, cache: Path | None = None) -> list:
    """``[function(*args) for args in tasks]`` on ``workers`` single-threaded processes (joblib's
    loky pool), in the order of ``tasks``; ``workers=0`` runs them here.

    With ``cache``, :class:`joblib.Memory` keeps every finished job, keyed on the function's code
    and its arguments, so a rerun after a crash or a Ctrl-C reads them back instead of training.
    """
    import joblib

    call = joblib.Memory(cache, verbose=0).cache(function) if cache else function
    if not workers:
        return [call(*args) for args in tasks]
    with joblib.parallel_config(backend="loky", inner_max_num_threads=1):  # torch: 1 thread
        return joblib.Parallel(n_jobs=workers)(joblib.delayed(call)(*args) for args in tasks)
