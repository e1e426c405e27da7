"""AveragedIterate: validate and test at the current weights and at the averaged iterate x_bar."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer
from torch.utils.data import DataLoader, RandomSampler
from typing_extensions import override

from ..optim.factory import AVERAGING_OPTIMIZERS
from .checkpointed_optimizers import rebuild_optimizer, rebuild_recipe
from .compat import logging_with_suffix
from .distributed_checkpoint import is_distributed_checkpoint, metadata, read_optimizers
from .packages import MisconfigurationException, twins
from .process_group import EndsProcessGroupAtExit

_HOW_TO_FIX = (
    "Build the optimizer with average=True: ExponentiatedO2NC(params, lr, average=True), "
    "RandomScaling(base, average=True) (scaling='none' for the plain base), "
    "O2NCAdamW(params, average=True), build_optimizer(model, name, average=True), or "
    "`model.average: true` for O2NCModule; or remove the AveragedIterate callback."
)


ForwardBatch = Callable[[nn.Module, Any], Any]


class AveragedIterate(EndsProcessGroupAtExit):
    """Evaluates at both the training weights x and the averaged iterate x_bar of the optimizer.

    x_bar comes from an ``ExponentiatedO2NC`` or a ``RandomScaling`` (``O2NCAdamW``, or any base
    wrapped with ``scaling="none"`` for a baseline's x_bar) built with ``average=True``.

    One validation (or test) loop gives both: after the step at x of each batch, the weights are
    swapped to x_bar with ``optimizer.eval()``, the module's ``validation_step`` (``test_step``)
    runs again on the same batch with every metric it logs renamed ``name + suffix``
    (``val/acc`` -> ``val/acc_avg``), and ``optimizer.train()`` swaps the training weights back
    bit for bit. Lightning reduces, syncs and writes the ``_avg`` metrics like any other. The
    swap never outlives the hook, so a checkpoint is never written at x_bar (its optimizer state
    holds x_bar anyway). The pass runs under ``torch.random.fork_rng``, so it does not change the
    global RNG stream of training. Works with a Trainer of either Lightning package.

    When the model has BatchNorm layers, their statistics at x_bar are recomputed once per
    validation on ``bn_update_batches`` fixed training batches (as ``torch.optim.swa_utils.update_bn``
    does) and stored in the callback's state, so validating or testing a checkpoint later reuses
    them. A batch goes through the model with :meth:`forward_batch`.

    Outside fit (``trainer.validate`` / ``trainer.test`` with a ``ckpt_path``), x_bar comes from
    the checkpoint's optimizer state: the callback's own state records which optimizer class
    (and, for a ``RandomScaling``, which base class) kept it, and the optimizer is rebuilt from
    the class and loaded from the checkpoint.

    In a multi-process run every rank destroys its process group at exit, gloo's too
    (:mod:`lightning_o2nc.lightning.process_group` says why).

    Args:
        suffix: Appended to the names of metrics logged at x_bar.
        bn_update_batches: Training batches used to recompute BatchNorm statistics at x_bar.
        leave_averaged_in_model: At the end of fit, leave the weights at x_bar (the optimizer
            keeps the training weights, and a later fit resumed from a checkpoint of this state
            swaps them back).
        forward_batch: ``forward_batch(module, batch)`` runs one training batch through the
            module for the BatchNorm statistics; ``None``: ``module(batch[0])`` for
            ``(inputs, targets, ...)`` batches and ``module(batch)`` otherwise, which needs a
            ``forward``. Or override :meth:`forward_batch` in a subclass.
    """

    def __init__(
        self,
        suffix: str = "_avg",
        bn_update_batches: int = 8,
        leave_averaged_in_model: bool = False,
        forward_batch: ForwardBatch | None = None,
    ):
        if not suffix:
            raise ValueError(
                "suffix must be a non-empty string, or the metrics at x and x_bar collide"
            )
        if bn_update_batches < 1:
            raise ValueError(f"bn_update_batches must be >= 1, got {bn_update_batches}")
        if forward_batch is not None and not callable(forward_batch):
            raise ValueError(
                f"forward_batch must be callable(module, batch), got {forward_batch!r}"
            )
        self.suffix = suffix
        self.bn_update_batches = bn_update_batches
        self.leave_averaged_in_model = leave_averaged_in_model
        self._forward_batch = forward_batch
        self._checkpoint_optimizers: list[Optimizer] = []
        self._checkpoint_path: str | None = None
        self._layout: list[dict[str, Any]] = []
        self._averaged_bn_state: dict[str, torch.Tensor] | None = None
        self._evaluating: list[Optimizer] = []
        self._swapped = False
        self._warned_no_source = False

    def forward_batch(self, module: nn.Module, batch: Any) -> Any:
        """Runs one training batch through ``module`` (in train mode) to collect BatchNorm statistics.

        Override it, or pass ``forward_batch=``, when batches are not ``(inputs, targets, ...)``
        or the module has no ``forward``.
        """
        if self._forward_batch is not None:
            return self._forward_batch(module, batch)
        return module(batch[0] if isinstance(batch, (list, tuple)) else batch)

    # ------------------------------------------------------------------ where x_bar comes from
    @staticmethod
    def _averaging_optimizers(trainer: Any) -> list[tuple[int, Any]]:
        return [
            (i, opt)
            for i, opt in enumerate(trainer.optimizers)
            if isinstance(opt, AVERAGING_OPTIMIZERS) and opt.average
        ]

    def _sources(self, trainer: Any, pl_module: Any) -> list[Any]:
        """The checkpoint's optimizer state when one was loaded outside fit, else the Trainer's
        optimizers (they outlive fit, so ``trainer.test`` after ``trainer.fit`` finds them)."""
        if self._checkpoint_optimizers:
            return self._checkpoint_optimizers
        own = {id(p) for p in pl_module.parameters()}
        return [
            opt
            for _, opt in self._averaging_optimizers(trainer)
            if all(id(p) in own for group in opt.param_groups for p in group["params"])
        ]

    @override
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        found = self._averaging_optimizers(trainer)
        if not found:
            described = [
                f"{type(opt).__name__}(average={opt.average})"
                if isinstance(opt, AVERAGING_OPTIMIZERS)
                else type(opt).__name__
                for opt in trainer.optimizers
            ]
            raise MisconfigurationException(
                "AveragedIterate evaluates the averaged iterate x_bar, which ExponentiatedO2NC and "
                "RandomScaling keep when built with average=True; the optimizers are "
                f"{described}. {_HOW_TO_FIX}"
            )
        self._check_batch_norm_can_run(pl_module)
        names = {id(p): name for name, p in pl_module.named_parameters()}
        self._layout = [
            {
                "optimizer_index": i,
                "param_groups": [
                    [names[id(p)] for p in group["params"]] for group in opt.param_groups
                ],
                **rebuild_recipe(opt),
            }
            for i, opt in found
        ]
        self._checkpoint_optimizers, self._checkpoint_path = [], None

    def _check_batch_norm_can_run(self, pl_module: nn.Module) -> None:
        """Before training: the BatchNorm recompute needs a way to run a batch through the module."""
        if not _batch_norm_buffers(pl_module) or self._forward_batch is not None:
            return
        if type(self).forward_batch is not AveragedIterate.forward_batch:
            return
        inherited = {nn.Module.forward, *(cls.forward for cls in twins("LightningModule"))}
        if type(pl_module).forward in inherited:
            raise MisconfigurationException(
                f"AveragedIterate recomputes the BatchNorm statistics of {type(pl_module).__name__} at "
                "x_bar by running training batches through it, but the module has no forward(). Define "
                "forward(inputs), or pass AveragedIterate(forward_batch=lambda module, batch: ...) "
                "that runs one batch, e.g. module.net(batch[0])."
            )

    @override
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        for _, opt in self._averaging_optimizers(trainer):
            if not opt.training:  # resumed from a state saved with x_bar left in the model
                rank_zero_info(
                    "AveragedIterate: the checkpoint holds x_bar in the model; swapping the training weights back"
                )
                opt.train()

    # ------------------------------------------------------------------ evaluation at x_bar
    @override
    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._evaluating = [] if trainer.sanity_checking else self._prepare(trainer, pl_module)

    @override
    def on_test_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._evaluating = self._prepare(trainer, pl_module)

    def _on_evaluation_batch_end(
        self,
        trainer: Any,
        pl_module: Any,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Run the batch's validation (or test) step again at x_bar, logging under the suffix."""
        if not self._evaluating:
            return
        if trainer.testing:
            step, num_batches = trainer.strategy.test_step, trainer.num_test_batches
        else:
            step, num_batches = trainer.strategy.validation_step, trainer.num_val_batches
        extra = {"dataloader_idx": dataloader_idx} if len(num_batches) > 1 else {}
        with (
            self._averaged_weights(pl_module, self._evaluating, self._averaged_bn_state),
            logging_with_suffix(pl_module, self.suffix),
        ):
            step(batch, batch_idx, **extra)

    on_validation_batch_end = override(_on_evaluation_batch_end)
    on_test_batch_end = override(_on_evaluation_batch_end)

    @override
    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._evaluating = []

    @override
    def on_test_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._evaluating = []

    def _prepare(self, trainer: Any, pl_module: Any) -> list[Any]:
        """The optimizers holding x_bar for this loop, with BatchNorm statistics at x_bar ready."""
        self._load_checkpoint(trainer, pl_module)
        sources = self._sources(trainer, pl_module)
        if not sources:
            if not self._warned_no_source:
                rank_zero_warn(
                    "AveragedIterate has no averaged iterate to evaluate (no ExponentiatedO2NC or "
                    "RandomScaling with average=True in this run and no optimizer state in the loaded "
                    "checkpoint): only the current weights are evaluated."
                )
                self._warned_no_source = True
            return []
        train_loader = trainer.train_dataloader if trainer.state.fn == "fit" else None
        if _batch_norm_buffers(pl_module) and isinstance(train_loader, DataLoader):
            # normal tensors, not inference tensors: the statistics go into checkpoints
            with torch.inference_mode(False), self._averaged_weights(pl_module, sources):
                _recompute_batch_norm(
                    pl_module, trainer, train_loader, self.bn_update_batches, self.forward_batch
                )
                self._averaged_bn_state = {
                    name: buffer.detach().clone()
                    for name, buffer in _batch_norm_buffers(pl_module).items()
                }
        elif _batch_norm_buffers(pl_module) and self._averaged_bn_state is None:
            rank_zero_warn(
                "AveragedIterate: no training batches to recompute the BatchNorm statistics at x_bar and none "
                "stored in the checkpoint; x_bar is evaluated with the training weights' statistics."
            )
        return sources

    @contextmanager
    def _averaged_weights(
        self,
        pl_module: nn.Module,
        sources: list[Any],
        batch_norm_state: dict[str, torch.Tensor] | None = None,
    ) -> Iterator[None]:
        """x_bar in the weights (and ``batch_norm_state`` in the BatchNorm buffers) within the
        block; the training weights, buffers and RNG state come back bit for bit after it.

        The swap makes normal tensors even when the loop runs in inference mode; the block
        itself runs in the loop's own grad mode.
        """
        buffers = _batch_norm_buffers(pl_module)
        saved_buffers = {name: buffer.clone() for name, buffer in buffers.items()}
        was_training = [opt.training for opt in sources]
        cuda = [pl_module.device] if pl_module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            self._swapped = True
            try:
                with torch.inference_mode(False):
                    for opt in sources:
                        opt.eval()
                    if batch_norm_state is not None:
                        for name, buffer in buffers.items():
                            buffer.copy_(batch_norm_state[name])
                yield
            finally:
                with torch.inference_mode(False):
                    for opt, training in zip(sources, was_training, strict=True):
                        if training:
                            opt.train()
                    for name, buffer in buffers.items():
                        buffer.copy_(saved_buffers[name])
                self._swapped = False

    # ------------------------------------------------------------------ end of fit, checkpoints
    @override
    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if not self.leave_averaged_in_model:
            return
        sources = [opt for _, opt in self._averaging_optimizers(trainer)]
        train_loader = trainer.train_dataloader
        with torch.no_grad():
            for opt in sources:
                opt.eval()
            buffers = _batch_norm_buffers(pl_module)
            if buffers and isinstance(train_loader, DataLoader):
                cuda = [pl_module.device] if pl_module.device.type == "cuda" else []
                with torch.random.fork_rng(devices=cuda):
                    _recompute_batch_norm(
                        pl_module, trainer, train_loader, self.bn_update_batches, self.forward_batch
                    )
                self._averaged_bn_state = {n: b.detach().clone() for n, b in buffers.items()}
        rank_zero_info(
            "AveragedIterate: the model now holds the averaged iterate x_bar (leave_averaged_in_model=True)"
        )

    @override
    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        if self._swapped:
            raise RuntimeError(
                "A checkpoint was requested while AveragedIterate had swapped the weights to x_bar; "
                "save checkpoints outside the validation/test step hooks"
            )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"layout": self._layout, "averaged_bn_state": self._averaged_bn_state}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._layout = state_dict.get("layout", [])
        self._averaged_bn_state = state_dict.get("averaged_bn_state")

    def _load_checkpoint(self, trainer: Any, pl_module: Any) -> None:
        """Outside fit, x_bar (and the BatchNorm statistics at it) from the checkpoint the loop runs.

        Reads ``trainer.ckpt_path`` itself: Lightning before 2.5 calls neither a callback's
        ``on_load_checkpoint`` nor its ``load_state_dict`` outside fit.
        """
        path = trainer.ckpt_path
        if trainer.state.fn == "fit" or not path or path == self._checkpoint_path:
            return
        self._checkpoint_path, self._checkpoint_optimizers = path, []
        sharded = is_distributed_checkpoint(path)  # ModelParallelStrategy's directory
        if sharded:
            checkpoint = metadata(path)
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        state = checkpoint.get("callbacks", {}).get(self.state_key, {})
        layout = state.get("layout", [])
        if state.get("averaged_bn_state") is not None:
            self._averaged_bn_state = state["averaged_bn_state"]
        if sharded:
            self._checkpoint_optimizers = read_optimizers(path, pl_module, layout)
            return
        optimizer_states = checkpoint.get("optimizer_states", [])
        if not layout or len(optimizer_states) <= max(entry["optimizer_index"] for entry in layout):
            return
        parameters = dict(pl_module.named_parameters())
        for entry in layout:
            groups = [
                {"params": [parameters[name] for name in names]} for names in entry["param_groups"]
            ]
            opt = rebuild_optimizer(entry, groups, optimizer_states[entry["optimizer_index"]])
            if opt is not None:
                self._checkpoint_optimizers.append(opt)

    @override
    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._checkpoint_optimizers, self._checkpoint_path = [], None
        self._evaluating = []


def _batch_norm_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        f"{module_name}.{buffer_name}" if module_name else buffer_name: buffer
        for module_name, module in model.named_modules()
        if isinstance(module, _BatchNorm) and module.track_running_stats
        for buffer_name, buffer in module.named_buffers(recurse=False)
        if buffer is not None
    }


def _recompute_batch_norm(
    model: nn.Module,
    trainer: Any,
    loader: DataLoader,
    num_batches: int,
    forward_batch: ForwardBatch,
) -> None:
    """Running BatchNorm statistics as the plain average over ``num_batches`` fixed training batches.

    The batches come from a fresh loader over the training set with its own seeded sampler, so
    they are the same on every call and every DDP rank, and the training iterator is untouched.
    """
    fixed = DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=RandomSampler(loader.dataset, generator=torch.Generator().manual_seed(0)),
        collate_fn=loader.collate_fn,
    )
    batch_norms = [
        m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats
    ]
    momenta = {}
    for module in batch_norms:
        module.reset_running_stats()
        momenta[module] = module.momentum
        module.momentum = None  # cumulative average
    was_training = model.training
    model.train()
    try:
        for i, batch in enumerate(fixed):
            if i >= num_batches:
                break
            forward_batch(model, trainer.strategy.batch_to_device(batch))
    finally:
        for module, momentum in momenta.items():
            module.momentum = momentum
        model.train(was_training)
