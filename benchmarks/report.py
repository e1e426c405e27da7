"""Markdown pieces shared by the benchmarks: tables, number formats, command lines and the machine
description that every results file records.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_PATH = BENCH_DIR / "RESULTS.md"
WORK_DIR = BENCH_DIR / "_work"  # gitignored: logs, checkpoints, downloaded or copied data


def work_dir() -> Path:
    """Scratch folder of a benchmark run: ``$O2NC_BENCH_WORK_DIR`` or ``benchmarks/_work``.

    Read at call time, so tests (and the worker processes they spawn) can redirect it.
    """
    return Path(os.environ.get("O2NC_BENCH_WORK_DIR") or WORK_DIR)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells are formatted with ``str``."""
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def command_line(module: str, *args: str) -> str:
    """How to rerun one benchmark, as a code span."""
    return "`" + " ".join(["python -m", module, *args]) + "`"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _memory_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return f"{int(line.split()[1]) / 2**20:.0f} GiB"
    except OSError:
        pass
    return "unknown memory"


def machine_description() -> dict[str, str]:
    """What the numbers were measured on, read from the machine itself."""
    import torch

    info = {
        "date (UTC)": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "host": f"{platform.system()} {platform.release()} {platform.machine()}",
        "CPU": f"{_cpu_model()}, {len(os.sched_getaffinity(0))} usable cores, "
        f"torch threads {torch.get_num_threads()}",
        "memory": _memory_gib(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
    }
    try:
        import lightning
        import torchvision

        info["torchvision / lightning"] = f"{torchvision.__version__} / {lightning.__version__}"
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["GPU"] = f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    else:
        info["GPU"] = "none"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        info["commit"] = commit
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def machine_markdown(info: dict[str, str] | None = None) -> str:
    info = machine_description() if info is None else info
    return "\n".join(f"- **{key}**: {value}" for key, value in info.items())


def mean_std(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± std`` (sample std, ddof=1) of ``values * scale``."""
    import statistics

    scaled = [v * scale for v in values]
    if len(scaled) == 1:
        return f"{scaled[0]:.{digits}f}"
    return f"{statistics.fmean(scaled):.{digits}f} ± {statistics.stdev(scaled):.{digits}f}"


def add_config_flags(parser: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
    """One ``--flag`` per field of a benchmark's config (``defaults``: ``asdict`` of its defaults).

    Lists take one or more integers; booleans read 1/true/yes; a None default (a training
    hyper-parameter taken from lightning_o2nc/configs/train) is a float, except ``batch_size``, an integer.
    """
    for name, value in defaults.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, list):
            parser.add_argument(flag, type=int, nargs="+", default=value)
        elif isinstance(value, bool):
            parser.add_argument(
                flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=value
            )
        else:
            kind = int if name == "batch_size" else float if value is None else type(value)
            parser.add_argument(flag, type=kind, default=value)


def config_command(module: str, config: dict[str, Any], defaults: dict[str, Any]) -> str:
    """The command line that reruns ``module`` with ``config``: every value that is not a default."""
    args: list[str] = []
    for key, value in config.items():
        if key in defaults and defaults[key] == value:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, (list, tuple)):
            args += [flag, *(str(v) for v in value)]
        else:
            args += [flag, str(value)]
    return command_line(module, *args)
