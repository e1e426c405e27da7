"""What the Lightning layer assumes about Lightning beyond its documented API, in one place.

Everything else in ``lightning_o2nc.lightning`` uses public hooks and attributes only. The two
assumptions below are behaviour of Lightning's public API that its documentation does not pin
down; ``tests/lightning/test_compat.py`` checks both on every supported package and version
(``CHECKED_ON``) and names this file when a release changes them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: The releases of ``lightning`` and ``pytorch-lightning`` on which these assumptions were checked
#: (the lower bound of pyproject.toml and the newest release at the time of writing).
CHECKED_ON = ("2.6.0", "2.6.6")


class LoggingStepAxis:
    """The step that Lightning gives the training metrics logged at a batch, without its privates.

    Lightning writes training metrics with ``step`` = the number of training batches on which
    the optimizers stepped before this one (under manual optimization: every batch), counted over
    the whole fit and restored on resume. It writes them at a batch when ``step + 1`` is a multiple
    of ``log_every_n_steps``, when the run is stopping, and at every batch of ``fast_dev_run``.
    A callback that logs on that axis counts the same batches through public attributes:
    ``trainer.global_step`` moves at an optimizer step, ``pl_module.automatic_optimization``
    says which rule applies. Call :meth:`start` in ``on_train_start`` and :meth:`batch_end` in
    ``on_train_batch_end``; keep :attr:`batches_that_stepped` in the callback's state.
    """

    def __init__(self) -> None:
        self.batches_that_stepped = 0
        self._global_step = -1

    def start(self, trainer: Any, restored: int | None = None) -> None:
        """Sets the count at the start of fit: ``restored`` from a checkpoint of this callback,
        else ``trainer.global_step`` (equal for a single optimizer)."""
        self._global_step = trainer.global_step
        self.batches_that_stepped = trainer.global_step if restored is None else restored

    def batch_end(self, trainer: Any, pl_module: Any) -> tuple[bool, int | None]:
        """Counts the batch that just ended.

        Returns:
            ``(stepped, step)``: whether the batch counts on the axis (an optimizer step, or any
            batch under manual optimization), and the step Lightning writes this batch's training
            metrics at, or ``None`` when it writes none at this batch.
        """
        stepped = not pl_module.automatic_optimization or trainer.global_step != self._global_step
        self._global_step = trainer.global_step
        if not stepped:
            return False, None
        step = self.batches_that_stepped
        self.batches_that_stepped += 1
        return True, step if writes_training_metrics(trainer, step) else None


def writes_training_metrics(trainer: Any, step: int) -> bool:
    """Whether Lightning writes the training metrics logged at axis step ``step``."""
    every = trainer.log_every_n_steps
    return bool(trainer.fast_dev_run) or (
        every > 0 and ((step + 1) % every == 0 or trainer.should_stop)
    )


@contextmanager
def logging_with_suffix(pl_module: Any, suffix: str) -> Iterator[None]:
    """Within the block, ``pl_module.log(name, ...)`` logs ``name + suffix``.

    The module's own ``log`` is shadowed by an instance attribute that forwards to it; Lightning's
    ``log_dict`` calls ``self.log`` for each entry, so it is covered too. Lightning keeps track of
    the hook that logs (a callback hook here), the batch and the dataloader itself.
    """
    original = pl_module.log

    def log(name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        original(name + suffix, value, *args, **kwargs)

    pl_module.log = log
    try:
        yield
    finally:
        del pl_module.log
