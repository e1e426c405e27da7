"""What the Lightning layer assumes about Lightning beyond its documented API, in one place.

Everything else in ``lightning_o2nc.lightning`` uses public hooks and attributes only. The
assumptions below are behaviour of Lightning's public API that its documentation does not pin
down; ``tests/lightning/test_compat.py`` checks each on every supported package and version
(``CHECKED_ON``) and names this file when a release changes them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

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

    log.suffix = suffix  # type: ignore[attr-defined]  # EpochMeans keeps these values apart
    pl_module.log = log
    try:
        yield
    finally:
        del pl_module.log


class EpochMeans:
    """Per-batch scalars of an evaluation loop, logged once, at its last batch, as their mean.

    One ``self.log`` costs about 0.3 ms on a CPU (Lightning's result collection), as much as the
    validation step of a small model. Lightning's epoch value of a scalar logged at every batch
    with ``on_epoch=True`` is the batch-size-weighted mean ``sum(v_i * n_i) / sum(n_i)``, and its
    ``sync_dist`` reduction sums the weighted values and the batch sizes over the ranks before
    dividing. So logging that mean once with ``batch_size=sum(n_i)`` gives the same epoch value
    on one process and under DDP; :meth:`log` does so, keeping the sums on the device. Values
    logged within :func:`logging_with_suffix` (AveragedIterate's pass at x_bar) are summed apart
    and logged under the suffix.

    Where the loop's length is unknown (an iterable without ``len``), with several dataloaders,
    or when something else replaced the module's ``log``, every batch is logged as usual.
    """

    def __init__(self) -> None:
        # per suffix: name -> (sum of value * batch size, sum of batch sizes)
        self._sums: dict[str, dict[str, tuple[torch.Tensor, int]]] = {}

    def log(
        self,
        pl_module: Any,
        metrics: Mapping[str, torch.Tensor],
        batch_idx: int,
        batch_size: int,
        **kwargs: Any,
    ) -> None:
        """Adds this batch's ``metrics`` (0-d tensors); at the last batch of the loop, logs their
        means with ``pl_module.log_dict(..., on_step=False, on_epoch=True, **kwargs)``."""
        last = _last_batch(pl_module)
        suffix = getattr(pl_module.log, "suffix", None if "log" in vars(pl_module) else "")
        if last is None or suffix is None:
            pl_module.log_dict(
                dict(metrics), on_step=False, on_epoch=True, batch_size=batch_size, **kwargs
            )
            return
        sums = self._sums.setdefault(suffix, {})
        if batch_idx == 0:
            sums.clear()  # a new loop (or one that an exception ended early)
        dtype = torch.get_default_dtype()  # Lightning's accumulator dtype
        for name, value in metrics.items():
            weighted = value.detach().to(dtype) * batch_size
            total, count = sums.get(name, (None, 0))
            sums[name] = (weighted if total is None else total + weighted, count + batch_size)
        if batch_idx < last:
            return
        for name, (total, count) in sums.items():
            pl_module.log(
                name, total / count, on_step=False, on_epoch=True, batch_size=count, **kwargs
            )
        sums.clear()


def _last_batch(pl_module: Any) -> int | None:
    """The index of the last batch of the evaluation loop that runs, or ``None`` where the loop
    has several dataloaders or an unknown length."""
    try:
        trainer = pl_module.trainer
    except RuntimeError:  # not attached to a Trainer
        return None
    if trainer.sanity_checking:
        counts = trainer.num_sanity_val_batches
    elif trainer.validating:
        counts = trainer.num_val_batches
    elif trainer.testing:
        counts = trainer.num_test_batches
    else:
        return None
    if len(counts) != 1 or not math.isfinite(counts[0]) or counts[0] < 1:
        return None
    return int(counts[0]) - 1
