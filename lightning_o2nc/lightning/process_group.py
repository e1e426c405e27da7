"""Ending the default process group before the interpreter does, for every backend.

Lightning registers ``torch.distributed.destroy_process_group`` at exit for NCCL only. A CPU run
(gloo) whose processes exit with the group alive can abort while the interpreter finalizes: gloo's
worker threads still hold work objects whose tensors need the interpreter, and a rank that has
finished its run dies with "terminate called without an active exception" (SIGABRT; see
pytorch/pytorch#190489). It happens rarely and at random, and it fails the run: torchrun stops
the other ranks and exits with an error, and ``torch.multiprocessing`` (a sweep's ``ddp_spawn``
trial) raises in the parent.

:class:`EndsProcessGroupAtExit` is the base of :class:`O2NCMonitor` and :class:`AveragedIterate`,
and the one callback of an ``O2NCModule`` that has neither: when a Trainer sets it up in a process
whose default group is initialized, that process destroys the group at exit, while the
interpreter is whole. A process in which a Trainer raised (the callbacks' ``on_exception``, Ctrl-C
included) leaves its group alone, as before: the group may still hold work waiting on another
rank, and destroying it can wait for that work (up to gloo's timeout, 30 minutes by default)
where the failed process should end at once.
"""

from __future__ import annotations

import atexit
from typing import Any

import torch.distributed as dist
from typing_extensions import override

from .packages import Callback

_registered = False
_a_run_failed = False


def destroy_process_group_at_exit() -> None:
    """Destroy the default process group when this process exits, unless a run failed in it.

    Does nothing where no group is initialized (one process) and registers the exit handler once
    per process, however many Trainers call it.
    """
    global _registered
    if _registered or not (dist.is_available() and dist.is_initialized()):
        return
    atexit.register(_destroy_unless_a_run_failed)
    _registered = True


def note_failed_run() -> None:
    """Keep this process's group alive at exit: a Trainer of this process raised."""
    global _a_run_failed
    _a_run_failed = True


def _destroy_unless_a_run_failed() -> None:
    if not _a_run_failed and dist.is_initialized():
        dist.destroy_process_group()


class EndsProcessGroupAtExit(Callback):
    """A callback whose runs destroy the default process group at exit (see the module)."""

    @override
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        destroy_process_group_at_exit()

    @override
    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        note_failed_run()
