"""A bad value in a run's config, found before any training step, reported as one line.

``o2nc-train`` prints a :class:`RunConfigError` as ``o2nc-train: error: <message> (<path>)`` and
exits with status 2, as argparse does for a bad flag; ``o2nc-sweep`` does the same for the train
config a sweep builds. With the environment variable ``O2NC_TRACEBACK=1`` the error is raised
with its full traceback instead, for debugging.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

__all__ = [
    "TRACEBACK_VARIABLE",
    "DatasetNotFoundError",
    "RunConfigError",
    "exit_with_one_line",
    "wants_traceback",
]

#: Set to 1 to see the full traceback of a config error instead of one line.
TRACEBACK_VARIABLE = "O2NC_TRACEBACK"


class RunConfigError(ValueError):
    """A value of a run's config (model, data module, optimizer, schedule, Trainer) is invalid.

    Args:
        message: What is wrong and what is expected, e.g. ``Invalid beta: 1.5; expected 0 <= beta < 1``.
        path: Where the value lives in the config, e.g. ``model.beta`` (``None``: unknown).
    """

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.message = message
        self.path = path

    def __str__(self) -> str:
        return f"{self.message} ({self.path})" if self.path else self.message


class DatasetNotFoundError(RunConfigError, FileNotFoundError):
    """A data module's files are missing; the message names the paths and how to get them."""


def wants_traceback() -> bool:
    """Whether ``O2NC_TRACEBACK`` asks for full tracebacks (any value but empty or ``0``)."""
    return os.environ.get(TRACEBACK_VARIABLE, "") not in ("", "0")


def exit_with_one_line(program: str, error: BaseException) -> NoReturn:
    """Print ``<program>: error: <message>`` on one line to stderr and exit with status 2."""
    message = " ".join(str(error).split())
    print(f"{program}: error: {message}", file=sys.stderr)
    sys.exit(2)
