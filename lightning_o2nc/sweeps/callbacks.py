"""Lightning callbacks a sweep adds to every trial's Trainer."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Mapping
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from typing_extensions import override

# a Callback of both Lightning packages: a trial runs under either (``$O2NC_LIGHTNING_PACKAGE``)
from lightning_o2nc.lightning.packages import Callback, twins

from .signals import STOP_SIGNALS, StopRequest

__all__ = ["CallbackGroup", "EpochReporter", "NonFiniteLossGuard", "StopAtNextBatch"]


class NonFiniteLossGuard(Callback):
    """Stop a trial whose training loss became NaN or infinite, and say why.

    Every training step only keeps its detached loss; every ``WINDOW`` steps the kept losses are
    folded, on the device and without a host sync, into the index of the first non-finite one
    (checking each loss as it comes costs a handful of tiny kernels per step, a measurable share
    of a small model's step). The flags are read, and agreed across DDP ranks, once before each
    validation and at each epoch end; when one is set the Trainer stops and :attr:`reason` names
    the first bad step.

    Register it before the pruning callback, so a NaN validation metric of the same epoch is
    recognised as a divergence rather than an ordinary pruning.
    """

    #: Set in ``trainer.callback_metrics`` (the first bad step) when the guard stops a run, so
    #: the main process of a ``ddp_spawn`` run learns it too.
    METRIC = "sweep/nonfinite_step"
    #: Losses kept on the device before they are folded into one flag.
    WINDOW = 64

    def __init__(self) -> None:
        super().__init__()
        self.reason: str | None = None
        self._losses: list[torch.Tensor] = []  # this window's losses, one value per step
        self._steps: list[int] = []  # their global steps
        # per folded window: the index of its first non-finite loss (-1: none), and its steps
        self._windows: list[tuple[torch.Tensor, list[int]]] = []

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        loss = loss.detach()
        if loss.numel() != 1:  # one value per step: NaN when any element is not finite
            loss = torch.where(torch.isfinite(loss).all(), 0.0, float("nan"))
        self._losses.append(loss.reshape(()))
        self._steps.append(trainer.global_step)
        if len(self._losses) >= self.WINDOW:
            self._fold()

    def _fold(self) -> None:
        if not self._losses:
            return
        bad = ~torch.isfinite(torch.stack(self._losses))
        first = torch.where(bad.any(), bad.int().argmax(), -1)
        self._windows.append((first, self._steps))
        self._losses, self._steps = [], []

    def _first_bad_step(self) -> int:
        """The first global step with a non-finite loss since the last check, or -1."""
        self._fold()
        windows, self._windows = self._windows, []
        if not windows:
            return -1
        firsts = torch.stack([first for first, _ in windows]).tolist()  # the one host sync
        return next((steps[i] for i, (_, steps) in zip(firsts, windows, strict=True) if i >= 0), -1)

    def _check(self, trainer: Trainer) -> None:
        if self.reason is not None or trainer.sanity_checking:
            return
        step = self._first_bad_step()
        if not trainer.strategy.reduce_boolean_decision(step >= 0, all=False):
            return
        where = f"step {step}" if step >= 0 else "a step on another rank"
        self.reason = (
            f"non-finite training loss (NaN or inf) at {where}, epoch {trainer.current_epoch}"
        )
        trainer.should_stop = True
        trainer.callback_metrics[self.METRIC] = torch.tensor(float(step))

    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._check(trainer)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._check(trainer)


class EpochReporter(Callback):
    """Calls ``report(epoch, metrics)`` on global rank 0 after each training epoch.

    ``metrics`` holds the Trainer's latest logged scalars as Python floats.
    """

    def __init__(self, report: Callable[[int, dict[str, float]], None]) -> None:
        super().__init__()
        self._report = report

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        metrics = {
            name: float(value)
            for name, value in trainer.callback_metrics.items()
            if isinstance(value, torch.Tensor) and value.numel() == 1
        }
        self._report(trainer.current_epoch + 1, metrics)


class StopAtNextBatch(Callback):
    """Ends ``trainer.fit`` at the next batch once the worker's :class:`StopRequest` is set.

    In the worker's own process it raises :class:`TrialInterrupted` after any training or
    validation batch, and at the start of fit, so a trial stops within one batch. In the rank
    processes of a ``ddp_spawn`` trial (this object arrives there pickled) it restores the
    default action of SIGINT and SIGTERM: the worker forwards its signal to the ranks, and the
    kernel ends them at once, even inside a collective, so none can hang waiting for the others.

    Args:
        stop: the worker's stop request.
    """

    def __init__(self, stop: StopRequest) -> None:
        super().__init__()
        self.stop = stop
        self._worker_pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        return {"_worker_pid": self._worker_pid}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.stop = StopRequest()
        # Unpickled in a spawned rank process: take the default action before anything else runs
        # (Python's KeyboardInterrupt would make the rank exit 0 without results, and the worker
        # would wait for them forever).
        self._default_action_in_rank()

    def _in_rank_process(self) -> bool:
        return os.getpid() != self._worker_pid

    def _default_action_in_rank(self) -> None:
        if self._in_rank_process() and threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                signal.signal(signum, signal.SIG_DFL)

    def _check(self) -> None:
        if not self._in_rank_process():
            self.stop.raise_if_requested()

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._check()

    @override
    def on_sanity_check_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Lightning registers its own SIGTERM handler in each rank just before: undo it there.
        self._default_action_in_rank()

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._default_action_in_rank()
        self._check()

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._check()

    @override
    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._check()

    @override
    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        # Lightning's own SIGTERM path ends a rank with SystemExit, whose status is 0: the worker
        # would then wait for the rank's results forever. Make it an error exit instead.
        if self._in_rank_process() and isinstance(exception, SystemExit):
            raise RuntimeError(f"rank stopped by a signal ({type(exception).__name__})")


#: The hooks Lightning calls on a callback (``state_dict`` and ``load_state_dict`` aside).
_HOOKS = tuple(
    name
    for name, member in vars(twins("callbacks.Callback")[0]).items()
    if callable(member) and (name.startswith("on_") or name in ("setup", "teardown"))
)


class CallbackGroup(Callback):
    """Several callbacks that Lightning sees as one: each hook calls the members that define it.

    Lightning calls every hook of every callback at every batch, each call inside a profiler
    context, whether the callback defines the hook or not: about 6 ms per callback in a digits
    trial of 10 epochs (190 steps, 6 hooks a step), a quarter of what its pruning reports cost. A
    trial's own callbacks are grouped so that they cost that once; a hook of the group calls, in
    the members' order, only the members whose class overrides it. Lightning keeps nothing like
    it. The members keep no state in checkpoints (``state_dict`` is empty): the group refuses one
    that does.

    Args:
        *members: callbacks of either Lightning package, called in this order.
    """

    def __init__(self, *members: Any) -> None:
        super().__init__()
        for member in members:
            if member.state_dict():
                raise ValueError(
                    f"CallbackGroup: {type(member).__name__} keeps state in checkpoints; "
                    "pass it to the Trainer on its own"
                )
        self.members = list(members)

    @property
    def _calls(self) -> dict[str, list[Callable[..., Any]]]:
        # built on first use, and again in a ddp_spawn rank (not pickled: bound methods)
        calls = self.__dict__.get("_bound_hooks")
        if calls is None:
            calls = {
                name: [getattr(m, name) for m in self.members if _overrides(m, name)]
                for name in _HOOKS
            }
            self.__dict__["_bound_hooks"] = calls
        return calls

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_bound_hooks"}


def _fan_out(name: str) -> Callable[..., None]:
    def hook(self: CallbackGroup, *args: Any, **kwargs: Any) -> None:
        for call in self._calls[name]:
            call(*args, **kwargs)

    hook.__name__ = hook.__qualname__ = name
    hook.__doc__ = f"Calls ``{name}`` of the members that define it."
    return hook


for _name in _HOOKS:
    setattr(CallbackGroup, _name, _fan_out(_name))


def _overrides(callback: Any, name: str) -> bool:
    """Whether ``callback``'s class defines hook ``name`` itself (not only Lightning's no-op)."""
    bases = {*twins("callbacks.Callback"), Callback, object}
    owner = next((k for k in type(callback).__mro__ if name in vars(k)), object)
    return owner not in bases
