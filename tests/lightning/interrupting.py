"""A callback that presses Ctrl-C at the start of an epoch, for tests that interrupt a real run."""

from __future__ import annotations

import signal

from lightning_o2nc.lightning.packages import Callback


class CtrlCAtEpoch(Callback):
    """Sends the process SIGINT, as Ctrl-C would, when epoch ``epoch`` starts.

    The end-of-epoch checkpoint of the epoch before is written by then, so the fit stops the way an
    interrupted one does, leaving ``last.ckpt`` at an epoch end.

    Args:
        epoch: The epoch (0-based) at whose start the interrupt comes.
    """

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            # A shell starts background jobs with SIGINT ignored, and Python keeps it so; a
            # terminal's Ctrl-C reaches a foreground process, whose handler is Python's default.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.raise_signal(signal.SIGINT)
