"""One measured fit of a train config, as the accuracy experiments run it.

:func:`train_config` builds the run as ``o2nc-sweep`` builds a trial
(:func:`lightning_o2nc.lightning.cli.build_run`) and measures:

- test accuracy (the first ``trainer.limit_test_batches`` of the test set) at the final weights x
  and, with ``model.average: true``, at the optimizer's own x̄ (``averaged_iterate()``);
- test accuracy at x̄ with longer horizons: :class:`HorizonAverages` keeps, for each discount b,
  the bias-corrected b-EMA of the iterates with the optimizer's own recursion
  (``A_n = b A_{n-1} + 1``, ``x̄_n = x̄_{n-1} + (x_n - x̄_{n-1}) / A_n``). It is what
  ``average_beta = b`` keeps inside the optimizer; since the averaging never changes the trajectory,
  one run gives every horizon. BatchNorm statistics are recomputed at each x̄ on the same
  training batches, with ``torch.optim.swa_utils.update_bn``;
- per step, the training loss and the scalar s (``optimizer.last_scale``), for the stability
  analysis; a run whose loss becomes non-finite stops there (``diverged_at``).
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch import Callback
from torch import nn

from .harness import WORK_DIR

# A benchmark fit writes no checkpoint, draws no progress bar and prints no model summary.
QUIET_TRAINER: dict[str, Any] = {
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}


def fashion_mnist_data() -> dict[str, Any]:
    """Where a :class:`~lightning_o2nc.FashionMNISTDataModule` looks for the idx files: the work
    folder, ``$O2NC_FASHION_MNIST_DIR`` (the GPU check's copy) and Debian's package."""
    dirs = [os.environ.get("O2NC_FASHION_MNIST_DIR"), "/usr/share/datasets/fashion-mnist"]
    return {"root": str(WORK_DIR / "data"), "system_dirs": [d for d in dirs if d]}


#: Training batches that recompute BatchNorm at each longer-horizon x̄ (AveragedIterate's default).
BN_UPDATE_BATCHES = 8


class HorizonAverages(Callback):
    """Bias-corrected b-EMAs of the trainable parameters, one per discount in ``betas``.

    Updated after every optimizer step whose loss was finite (the optimizer's x̄ skips nothing else
    in these runs: ``skip_nonfinite`` is off).
    """

    def __init__(self, betas: Sequence[float]) -> None:
        self.betas = [float(b) for b in betas]
        self.averages: dict[float, list[torch.Tensor]] = {}
        self.weight_sums = dict.fromkeys(self.betas, 0.0)

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        params = [p for p in pl_module.parameters() if p.requires_grad]
        for b in self.betas:
            self.weight_sums[b] = b * self.weight_sums[b] + 1.0
            if b not in self.averages:
                self.averages[b] = [p.detach().clone() for p in params]
                continue
            newest = 1.0 / self.weight_sums[b]
            for average, p in zip(self.averages[b], params, strict=True):
                average.lerp_(p, newest)

    def averaged(self, beta: float) -> list[torch.Tensor]:
        """x̄ at discount ``beta`` for every trainable parameter, in ``module.parameters()`` order."""
        return self.averages[beta]


class StepTrace(Callback):
    """The training loss and the scalar s of every step; stops fit at the first non-finite loss."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.scales: list[float] = []
        self.diverged_at: int | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = float(outputs["loss"])
        self.losses.append(loss)
        self.scales.append(float(trainer.optimizers[0].last_scale))
        if not math.isfinite(loss) and self.diverged_at is None:
            self.diverged_at = len(self.losses)
            trainer.should_stop = True


@torch.no_grad()
def accuracy(model: nn.Module, batches: list) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) over ``batches``."""
    was_training = model.training
    model.eval()
    correct = sum(int((model(x).argmax(dim=-1) == y).sum()) for x, y in batches)
    model.train(was_training)
    return correct / max(sum(len(y) for _, y in batches), 1)


@torch.no_grad()
def accuracy_at(
    model: nn.Module, weights: list[torch.Tensor], train_batches: list, test_batches: list
) -> float:
    """Test accuracy with ``weights`` in the trainable parameters and BatchNorm recomputed there
    (the model's parameters and buffers are restored afterwards)."""
    params = [p for p in model.parameters() if p.requires_grad]
    saved = copy.deepcopy(model.state_dict())
    for p, w in zip(params, weights, strict=True):
        p.copy_(w)
    torch.optim.swa_utils.update_bn(train_batches, model)
    value = accuracy(model, test_batches)
    model.load_state_dict(saved)
    return value


def optimizer_average(model: nn.Module, optimizer: Any) -> list[torch.Tensor]:
    """The optimizer's own x̄ (``averaged_iterate()``) in ``model.parameters()`` order."""
    grouped = [p for group in optimizer.param_groups for p in group["params"]]
    by_param = dict(zip(map(id, grouped), optimizer.averaged_iterate(), strict=True))
    return [by_param[id(p)] for p in model.parameters() if p.requires_grad]


def train_config(
    config: Mapping[str, Any], *, horizons: Sequence[float] = (), threads: int = 1, label: str = ""
) -> dict[str, Any]:
    """Fit and test one train config; returns accuracies, the step trace and the wall time.

    Args:
        config: a LightningCLI config dict (a sweep's trial config).
        horizons: discounts b of the longer-horizon x̄ to evaluate as well (empty: none).
        threads: torch threads of this process.
        label: printed with the result line.

    Returns:
        ``test_acc`` (x), ``test_acc_avg`` (the optimizer's x̄, or None without averaging),
        ``test_acc_horizon`` ({b: accuracy}), ``diverged_at`` (1-based step of the first
        non-finite loss, or None), ``steps``, ``max_scale``, ``losses``/``scales`` per step,
        ``seconds``.
    """
    from lightning_o2nc.lightning.cli import build_run

    torch.set_num_threads(threads)
    started, trace, averages = time.perf_counter(), StepTrace(), HorizonAverages(horizons)
    quiet = {"enable_progress_bar": False, "enable_model_summary": False}
    trainer, model, datamodule = build_run(
        config, extra_callbacks=[trace, averages], logger=False, trainer_overrides=quiet
    )
    trainer.fit(model, datamodule=datamodule)
    result = {"diverged_at": trace.diverged_at, "steps": len(trace.losses), "losses": trace.losses}
    result |= {"max_scale": max(trace.scales, default=1.0), "scales": trace.scales}
    averaged = {str(b): averages.averaged(b) for b in averages.betas}  # x̄ per horizon
    optimizer = trainer.optimizers[0]
    if getattr(optimizer, "average", False):
        averaged["optimizer"] = optimizer_average(model, optimizer)
    if trace.diverged_at is None:
        datamodule.setup("test")
        limit = trainer.limit_test_batches if isinstance(trainer.limit_test_batches, int) else None
        test_batches = list(itertools.islice(datamodule.test_dataloader(), limit))
        train_batches = list(itertools.islice(datamodule.train_dataloader(), BN_UPDATE_BATCHES))
        at_x = accuracy(model, test_batches)
        at = {k: accuracy_at(model, w, train_batches, test_batches) for k, w in averaged.items()}
    else:  # a diverged run predicts one class at best: score it as chance, not as an error
        at_x = 1.0 / datamodule.num_classes
        at = dict.fromkeys(averaged, at_x)
    result |= {"test_acc": at_x, "test_acc_avg": at.pop("optimizer", None), "test_acc_horizon": at}
    result["seconds"] = time.perf_counter() - started
    found = {"x": at_x, "x̄": result["test_acc_avg"]} | {f"x̄({b})": acc for b, acc in at.items()}
    text = ", ".join(f"{name} {acc:.4f}" for name, acc in found.items() if acc is not None)
    diverged = f", diverged at step {trace.diverged_at}" if trace.diverged_at else ""
    print(f"{label}: test acc {text}{diverged} ({result['seconds']:.0f} s)", flush=True)
    return result
