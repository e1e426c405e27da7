"""Stopping a sweep when asked: SIGINT and SIGTERM become a flag read at safe points.

Python turns SIGINT into a ``KeyboardInterrupt`` raised wherever the main thread happens to be,
which may be a garbage-collection callback that swallows it, a database call, or a rank of a DDP
trial that then exits without its results. So a worker never lets that happen:

- :class:`StopRequest` installs handlers that only record the signal. The sweep reads the flag at
  its safe points: before a trial starts, between trials (an Optuna callback) and, inside a
  trial, after every training and validation batch (:class:`lightning_o2nc.sweeps.callbacks.StopAtNextBatch`).
  The interrupted trial is recorded as failed, its parameters are queued again, and the command
  exits with ``128 + signum`` (130 for SIGINT, 143 for SIGTERM).
- A second signal exits at once (``os._exit``), after killing the trial's DDP rank processes.
- Before the study is opened (``immediate=True``) there is nothing to record, so the first
  signal already exits at once.
- The rank processes of a ``ddp_spawn`` trial keep the default action (the kernel ends them at
  once, even inside a collective) and the worker forwards its signal to them: they hold nothing
  that the worker does not record itself, and their non-zero exit ends ``trainer.fit`` in the
  worker at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = [
    "INTERRUPTED_BY",
    "RETRY_OF",
    "STOP_SIGNALS",
    "StopRequest",
    "TrialInterrupted",
]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: Trial user attribute: the signal that interrupted the trial (it then does not count).
INTERRUPTED_BY = "interrupted_by"
#: Trial user attribute of a queued retry: the number of the interrupted trial it repeats.
RETRY_OF = "retry_of"


class TrialInterrupted(Exception):
    """Raised at a safe point once a stop was requested; ends the trial and the worker's loop."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(f"interrupted by {signal_name}")
        self.signal_name = signal_name


class StopRequest:
    """Records SIGINT/SIGTERM instead of raising; a second signal exits at once.

    Use :meth:`installed` around the work; the previous handlers come back afterwards.

    Args:
        immediate: exit at once on the first signal too (nothing to record yet); switch it off
            with :meth:`deferred` once there is.
    """

    def __init__(self, *, immediate: bool = False) -> None:
        self.signum: int | None = None
        self.immediate = immediate
        self.last_words: Callable[[], str] = lambda: ""
        self._rank_processes: Callable[[], Iterable[Any]] = tuple

    @property
    def requested(self) -> bool:
        """Whether a stop signal arrived."""
        return self.signum is not None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    @property
    def exit_status(self) -> int:
        """``128 + signum``, the shell's convention (130 for SIGINT, 143 for SIGTERM); else 0."""
        return 0 if self.signum is None else 128 + self.signum

    def raise_if_requested(self) -> None:
        """The safe-point check: raise :class:`TrialInterrupted` when a stop was requested."""
        if self.signum is not None:
            raise TrialInterrupted(self.signal_name)

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        """Handle SIGINT and SIGTERM while the block runs (main thread only; a no-op elsewhere)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[StopRequest]:
        """Record the first signal instead of exiting (there is a study to leave in order)."""
        before, self.immediate = self.immediate, False
        try:
            self.raise_if_requested()  # a signal during the immediate phase's last moments
            yield self
        finally:
            self.immediate = before

    @contextlib.contextmanager
    def forwarding_to(self, processes: Callable[[], Iterable[Any]]) -> Iterator[None]:
        """Forward signals to ``processes()`` (objects with ``pid``) while the block runs."""
        self._rank_processes = processes
        try:
            yield
        finally:
            self._rank_processes = tuple

    def _handle(self, signum: int, _frame: object) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
        self._signal_ranks(signum if first else signal.SIGKILL)
        if first and not self.immediate:
            _say(
                f"o2nc-sweep: {signal.Signals(signum).name} received: stopping at the next safe "
                "point (a batch end or a trial end); send it again to exit at once\n"
            )
            return
        words = "" if first else self.last_words()
        _say(f"o2nc-sweep: {signal.Signals(signum).name}: exiting now{words}\n")
        os._exit(128 + (self.signum or signum))

    def _signal_ranks(self, signum: int) -> None:
        for process in list(self._rank_processes() or ()):
            pid = getattr(process, "pid", None)
            if pid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signum)


def _say(text: str) -> None:
    """Write from a signal handler: unbuffered, so it never re-enters a print in progress."""
    with contextlib.suppress(OSError):
        sys.stdout.flush()
        os.write(sys.stderr.fileno(), text.encode())
