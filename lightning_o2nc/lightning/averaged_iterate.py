"""AveragedIterate: validate and test at the current weights and at the averaged iterate x_bar."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, RandomSampler
from typing_extensions import override

from ..optim import ExponentiatedO2NC

_HOW_TO_FIX = (
    "Build the optimizer with average=True: ExponentiatedO2NC(params, lr, average=True), "
    "build_optimizer(model, 'o2nc', average=True), or `model.average: true` for O2NCModule; "
    "or remove the AveragedIterate callback."
)


class AveragedIterate(Callback):
    """Evaluates at both the training weights x and the averaged iterate x_bar of ExponentiatedO2NC.

    After the regular validation (or test) epoch at the current weights, the weights are swapped
    to x_bar with ``optimizer.eval()``, the validation (test) step runs again over the same
    batches with every metric logged under ``name + suffix`` (``val/acc`` -> ``val/acc_avg``),
    and ``optimizer.train()`` swaps the training weights back bit for bit. The swap lives inside
    ``on_validation_epoch_end`` (before ``ModelCheckpoint`` runs), so a checkpoint is never
    written at x_bar; its optimizer state already holds x_bar. The pass runs under
    ``torch.random.fork_rng``, so it does not change the global RNG stream of training.

    When the model has BatchNorm layers, their statistics at x_bar are recomputed on
    ``bn_update_batches`` fixed training batches (as ``torch.optim.swa_utils.update_bn`` does)
    and stored in the callback's state, so validating or testing a checkpoint later reuses them.

    Outside fit (``trainer.validate`` / ``trainer.test`` with a ``ckpt_path``), x_bar comes from
    the checkpoint's optimizer state.

    Args:
        suffix: Appended to the names of metrics logged at x_bar.
        bn_update_batches: Training batches used to recompute BatchNorm statistics at x_bar.
        leave_averaged_in_model: At the end of fit, leave the weights at x_bar (the optimizer
            keeps the training weights, and a later fit resumed from a checkpoint of this state
            swaps them back).
    """

    def __init__(
        self,
        suffix: str = "_avg",
        bn_update_batches: int = 8,
        leave_averaged_in_model: bool = False,
    ):
        if not suffix:
            raise ValueError(
                "suffix must be a non-empty string, or the metrics at x and x_bar collide"
            )
        if bn_update_batches < 1:
            raise ValueError(f"bn_update_batches must be >= 1, got {bn_update_batches}")
        self.suffix = suffix
        self.bn_update_batches = bn_update_batches
        self.leave_averaged_in_model = leave_averaged_in_model
        self._checkpoint_optimizers: list[ExponentiatedO2NC] = []
        self._layout: list[dict[str, Any]] = []
        self._averaged_bn_state: dict[str, torch.Tensor] | None = None
        self._swapped = False
        self._warned_no_source = False

    # ------------------------------------------------------------------ where x_bar comes from
    @staticmethod
    def _averaging_optimizers(trainer: pl.Trainer) -> list[tuple[int, ExponentiatedO2NC]]:
        return [
            (i, opt)
            for i, opt in enumerate(trainer.optimizers)
            if isinstance(opt, ExponentiatedO2NC) and opt.average
        ]

    def _sources(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> list[ExponentiatedO2NC]:
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
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        found = self._averaging_optimizers(trainer)
        if not found:
            described = [
                f"{type(opt).__name__}(average={opt.average})"
                if isinstance(opt, ExponentiatedO2NC)
                else type(opt).__name__
                for opt in trainer.optimizers
            ]
            raise MisconfigurationException(
                "AveragedIterate evaluates the averaged iterate x_bar, which only ExponentiatedO2NC keeps "
                f"when built with average=True; the optimizers are {described}. {_HOW_TO_FIX}"
            )
        names = {id(p): name for name, p in pl_module.named_parameters()}
        self._layout = [
            {
                "optimizer_index": i,
                "param_groups": [
                    [names[id(p)] for p in group["params"]] for group in opt.param_groups
                ],
            }
            for i, opt in found
        ]
        self._checkpoint_optimizers = []

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for _, opt in self._averaging_optimizers(trainer):
            if not opt.training:  # resumed from a state saved with x_bar left in the model
                rank_zero_info(
                    "AveragedIterate: the checkpoint holds x_bar in the model; swapping the training weights back"
                )
                opt.train()

    # ------------------------------------------------------------------ evaluation at x_bar
    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._evaluate_averaged(trainer, pl_module, "validation")

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._evaluate_averaged(trainer, pl_module, "test")

    def _evaluate_averaged(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str
    ) -> None:
        sources = self._sources(trainer, pl_module)
        if not sources:
            if not self._warned_no_source:
                rank_zero_warn(
                    "AveragedIterate has no averaged iterate to evaluate (no ExponentiatedO2NC(average=True) "
                    "in this run and no optimizer state in the loaded checkpoint): only the current weights "
                    "are evaluated."
                )
                self._warned_no_source = True
            return
        loaders = trainer.val_dataloaders if stage == "validation" else trainer.test_dataloaders
        limits = trainer.num_val_batches if stage == "validation" else trainer.num_test_batches
        loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
        step = (
            trainer.strategy.validation_step
            if stage == "validation"
            else trainer.strategy.test_step
        )
        with (
            self._at_averaged_iterate(trainer, pl_module, sources),
            _logged_with_suffix(pl_module, self.suffix, f"{stage}_step"),
        ):
            for dataloader_idx, (loader, limit) in enumerate(zip(loaders, limits, strict=True)):
                extra = {"dataloader_idx": dataloader_idx} if len(loaders) > 1 else {}
                for batch_idx, batch in enumerate(loader):
                    if batch_idx >= limit:
                        break
                    batch = trainer.strategy.batch_to_device(batch, dataloader_idx=dataloader_idx)
                    _attach_batch_to_results(trainer, batch, extra.get("dataloader_idx"))
                    step(batch, batch_idx, **extra)
            _attach_batch_to_results(trainer, None, None)

    @contextmanager
    def _at_averaged_iterate(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, sources: list[ExponentiatedO2NC]
    ) -> Iterator[None]:
        batch_norms = _batch_norm_buffers(pl_module)
        saved_buffers = {name: buffer.clone() for name, buffer in batch_norms.items()}
        was_training = [opt.training for opt in sources]
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        # the swap and the BatchNorm pass make normal tensors; the evaluation runs in the loop's own
        # grad mode (inference mode, or no_grad where Lightning avoids it, e.g. with gloo)
        normal_tensors = torch.inference_mode(False)
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            self._swapped = True
            try:
                with normal_tensors:
                    for opt in sources:
                        opt.eval()
                    if batch_norms:
                        self._set_averaged_bn_statistics(trainer, pl_module, batch_norms)
                yield
            finally:
                with torch.inference_mode(False):
                    for opt, training in zip(sources, was_training, strict=True):
                        if training:
                            opt.train()
                    for name, buffer in batch_norms.items():
                        buffer.copy_(saved_buffers[name])
                self._swapped = False

    def _set_averaged_bn_statistics(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, buffers: dict[str, torch.Tensor]
    ) -> None:
        train_loader = trainer.train_dataloader if trainer.state.fn == "fit" else None
        if isinstance(train_loader, DataLoader):
            _recompute_batch_norm(pl_module, trainer, train_loader, self.bn_update_batches)
            self._averaged_bn_state = {
                name: buffer.detach().clone() for name, buffer in buffers.items()
            }
        elif self._averaged_bn_state is not None:
            for name, buffer in buffers.items():
                buffer.copy_(self._averaged_bn_state[name])
        else:
            rank_zero_warn(
                "AveragedIterate: no training batches to recompute the BatchNorm statistics at x_bar and none "
                "stored in the checkpoint; x_bar is evaluated with the training weights' statistics."
            )

    # ------------------------------------------------------------------ end of fit, checkpoints
    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.leave_averaged_in_model:
            return
        with torch.no_grad():
            for _, opt in self._averaging_optimizers(trainer):
                opt.eval()
            batch_norms = _batch_norm_buffers(pl_module)
            if batch_norms:
                with torch.random.fork_rng(
                    devices=[pl_module.device] if pl_module.device.type == "cuda" else []
                ):
                    self._set_averaged_bn_statistics(trainer, pl_module, batch_norms)
        rank_zero_info(
            "AveragedIterate: the model now holds the averaged iterate x_bar (leave_averaged_in_model=True)"
        )

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
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

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._checkpoint_optimizers = []
        if trainer.state.fn == "fit":
            return  # the Trainer restores the optimizers themselves
        state = checkpoint.get("callbacks", {}).get(self.state_key, {})
        layout = state.get("layout", [])
        optimizer_states = checkpoint.get("optimizer_states", [])
        if not layout or len(optimizer_states) <= max(entry["optimizer_index"] for entry in layout):
            return
        parameters = dict(pl_module.named_parameters())
        for entry in layout:
            groups = [
                {"params": [parameters[name] for name in names]} for names in entry["param_groups"]
            ]
            saved = optimizer_states[entry["optimizer_index"]]
            scaling = saved.get("o2nc", {}).get("scaling", {}).get("kind", "exponential")
            opt = ExponentiatedO2NC(groups, lr=1.0, scaling=scaling, average=True)
            opt.load_state_dict(saved)
            for param_state in opt.state.values():
                param_state.pop("momentum_buffer", None)
            self._checkpoint_optimizers.append(opt)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._checkpoint_optimizers = []


@contextmanager
def _logged_with_suffix(pl_module: pl.LightningModule, suffix: str, fx_name: str) -> Iterator[None]:
    """Within the block, ``pl_module.log(name, ...)`` (and ``log_dict``) log ``name + suffix`` as if
    called from the hook ``fx_name``."""
    original_log = pl_module.log
    previous_fx = pl_module._current_fx_name

    def log(name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        original_log(name + suffix, value, *args, **kwargs)

    pl_module.log = log
    pl_module._current_fx_name = fx_name
    try:
        yield
    finally:
        del pl_module.log
        pl_module._current_fx_name = previous_fx


def _attach_batch_to_results(trainer: pl.Trainer, batch: Any, dataloader_idx: int | None) -> None:
    """What the evaluation loop does before each batch, so ``self.log`` infers the batch size and
    keys metrics per dataloader as in the regular pass."""
    results = trainer._results
    if results is not None:
        results.batch = batch
        results.batch_size = None
        results.dataloader_idx = dataloader_idx


def _batch_norm_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        f"{module_name}.{buffer_name}" if module_name else buffer_name: buffer
        for module_name, module in model.named_modules()
        if isinstance(module, _BatchNorm) and module.track_running_stats
        for buffer_name, buffer in module.named_buffers(recurse=False)
        if buffer is not None
    }


def _recompute_batch_norm(
    model: pl.LightningModule, trainer: pl.Trainer, loader: DataLoader, num_batches: int
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
            batch = trainer.strategy.batch_to_device(batch)
            model(batch[0] if isinstance(batch, (list, tuple)) else batch)
    finally:
        for module, momentum in momenta.items():
            module.momentum = momentum
        model.train(was_training)
