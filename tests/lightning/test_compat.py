"""What lightning_o2nc/lightning/compat.py assumes about Lightning, checked on each package.

Checked on lightning and pytorch-lightning 2.6.0 (``make test-min``) and 2.6.6 (``make test``):
``compat.CHECKED_ON``. A failure here means a Lightning release changed behaviour that the
monitor or AveragedIterate relies on; the message says what to update.
"""

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from lightning_o2nc import ExponentiatedO2NC
from lightning_o2nc.lightning.compat import (
    CHECKED_ON,
    EpochMeans,
    LoggingStepAxis,
    logging_with_suffix,
)
from lightning_o2nc.lightning.packages import Callback, for_package
from tests.train_configs import QUIET_CPU

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["lightning.pytorch", "pytorch_lightning"]
UPDATE = f"(checked on {', '.join(CHECKED_ON)}): update lightning_o2nc/lightning/compat.py"


class PredictSteps(Callback):
    """Where LoggingStepAxis says Lightning writes the training metrics of each batch."""

    def __init__(self):
        self.axis = LoggingStepAxis()
        self.predicted = []

    def on_train_start(self, trainer, pl_module):
        self.axis.start(trainer, getattr(self, "restored", None))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        _, step = self.axis.batch_end(trainer, pl_module)
        if step is not None:
            self.predicted.append(step)

    def state_dict(self):
        return {"batches_that_stepped": self.axis.batches_that_stepped}

    def load_state_dict(self, state_dict):
        self.restored = state_dict["batches_that_stepped"]


def _recording_logger(package):
    class Recording(package.loggers.Logger):
        """Keeps the steps at which Lightning writes ``train/loss``."""

        name, version = "recording", 0
        steps: list[int]

        def __init__(self):
            super().__init__()
            self.steps = []

        def log_metrics(self, metrics, step=None):
            if "train/loss" in metrics:
                self.steps.append(step)

        def log_hyperparams(self, params, *args, **kwargs):
            pass

    return Recording()


def _module(package, manual):
    class Model(package.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(4, 2)
            self.automatic_optimization = not manual

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.cross_entropy(self.net(x), y)
            self.log("train/loss", loss)
            if manual:
                optimizer = self.optimizers()
                optimizer.zero_grad()
                self.manual_backward(loss)
                if batch_idx % 2 == 0:  # steps on every other batch: the axis still counts each
                    optimizer.step()
            return None if manual else loss

        def configure_optimizers(self):
            return ExponentiatedO2NC(self.parameters(), lr=0.1, seed=0)

    return Model()


def _fit(package, tmp_path, manual, accumulate, max_epochs, ckpt_path=None):
    data = TensorDataset(torch.randn(70, 4), torch.randint(0, 2, (70,)))  # 7 batches per epoch
    predictor, logger = PredictSteps(), _recording_logger(package)
    checkpoint = package.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = package.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        log_every_n_steps=3,
        accumulate_grad_batches=accumulate,
        logger=logger,
        callbacks=[predictor, checkpoint],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(_module(package, manual), DataLoader(data, batch_size=10), ckpt_path=ckpt_path)
    return predictor.predicted, logger.steps


@pytest.mark.parametrize("package_name", PACKAGES)
@pytest.mark.parametrize(
    "manual, accumulate", [(False, 1), (False, 2), (True, 1)], ids=["plain", "accumulate", "manual"]
)
def test_logging_step_axis_predicts_where_lightning_writes_training_metrics(
    tmp_path, package_name, manual, accumulate
):
    package = importlib.import_module(package_name)
    predicted, written = _fit(package, tmp_path, manual, accumulate, max_epochs=2)
    resumed_predicted, resumed_written = _fit(
        package, tmp_path, manual, accumulate, max_epochs=3, ckpt_path="last"
    )
    assert written and resumed_written
    assert (predicted, resumed_predicted) == (written, resumed_written), (
        f"{package_name} {package.__version__} writes training metrics at steps {written} and, "
        f"resumed, {resumed_written}; LoggingStepAxis predicts {predicted} and {resumed_predicted} "
        f"{UPDATE}"
    )


@pytest.mark.parametrize("package_name", PACKAGES)
def test_log_dict_logs_through_log_so_the_suffix_reaches_every_metric(package_name):
    package = importlib.import_module(package_name)
    source = inspect.getsource(package.LightningModule.log_dict)
    assert "self.log(" in source, (
        f"{package_name} {package.__version__}: LightningModule.log_dict no longer calls self.log, "
        f"so AveragedIterate's _avg names miss metrics logged with log_dict {UPDATE}"
    )


class _Stream(IterableDataset):
    def __init__(self, data):
        self.data = data

    def __iter__(self):
        yield from self.data


def _evaluating_module(package, once):
    """Logs each batch's mean loss and a batch-size-dependent score at every batch (``once``:
    through EpochMeans), and again under ``_avg`` with other values, as AveragedIterate does."""

    class Model(package.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(4, 2)
            self.means = EpochMeans()
            self.calls = 0

        def log(self, *args, **kwargs):
            self.calls += 1
            super().log(*args, **kwargs)

        def _log(self, metrics, batch_idx, batch_size):
            if once:
                self.means.log(self, metrics, batch_idx, batch_size, sync_dist=True, prog_bar=True)
            else:
                self.log_dict(metrics, batch_size=batch_size, sync_dist=True, prog_bar=True)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.cross_entropy(self.net(x), y)
            self._log(
                {"val/loss": loss, "val/size": torch.tensor(float(len(y)))}, batch_idx, len(y)
            )
            with logging_with_suffix(self, "_avg"):
                self._log({"val/loss": 2 * loss}, batch_idx, len(y))

    return Model()


@pytest.mark.parametrize("package_name", PACKAGES)
@pytest.mark.parametrize("iterable", [False, True], ids=["sized", "no_len"])
def test_one_log_of_the_weighted_mean_is_what_lightning_makes_of_a_log_per_batch(
    package_name, iterable
):
    package = importlib.import_module(package_name)
    data = TensorDataset(torch.randn(70, 4), torch.randint(0, 2, (70,)))  # batches 16, 16, ..., 6
    if iterable:  # no len, so no last batch to wait for: EpochMeans logs every batch instead
        data = _Stream(data)
    metrics, calls = [], []
    for once in (False, True):
        torch.manual_seed(0)
        model = _evaluating_module(package, once)
        trainer = package.Trainer(**QUIET_CPU)
        trainer.validate(model, DataLoader(data, batch_size=16), verbose=False)
        metrics.append({k: float(v) for k, v in trainer.callback_metrics.items()})
        calls.append(model.calls)
    per_batch, once = metrics
    assert calls == [15, 15 if iterable else 3]  # 5 batches, 3 metrics
    assert set(per_batch) == {"val/loss", "val/size", "val/loss_avg"}
    assert per_batch["val/size"] == pytest.approx((4 * 16**2 + 6**2) / 70)  # batch-size weighted
    assert once == pytest.approx(per_batch, rel=1e-6), (
        f"{package_name} {package.__version__}: the epoch value of a metric logged once with "
        f"batch_size=N is no longer the batch-size-weighted mean Lightning makes of a log per "
        f"batch {UPDATE}"
    )


def _lightning_layer_sources():
    return [
        *sorted((ROOT / "lightning_o2nc" / "lightning").glob("*.py")),
        ROOT / "lightning_o2nc" / "pytorch_lightning.py",
        ROOT / "lightning_o2nc" / "sweeps" / "callbacks.py",
    ]


OUR_OWN_PRIVATE_NAMES = {"_lightning_base", "_lightning_body"}  # set by packages.lightning_class
#: The Lightning classes our classes derive from; their private names must not appear on ``self``.
BASES = ("LightningModule", "LightningDataModule", "Callback", "cli.LightningCLI", "loggers.Logger")


def _private_names_of_lightning_bases():
    names = set()
    for package_name in PACKAGES:
        for path in BASES:
            *modules, name = path.split(".")
            base = getattr(importlib.import_module(".".join([package_name, *modules])), name)
            for klass in base.__mro__:
                if not klass.__module__.startswith(("lightning", "pytorch_lightning")):
                    continue
                names |= {n for n in vars(klass) if n.startswith("_") and not n.startswith("__")}
                names |= set(re.findall(r"self\.(_[A-Za-z]\w*)", inspect.getsource(klass)))
    return names


def test_the_lightning_layer_touches_no_private_lightning_name():
    lightning_privates = _private_names_of_lightning_bases()
    found = []
    for path in _lightning_layer_sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                private = node.attr.startswith("_") and not node.attr.startswith("__")
                on_self = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
                inherited = on_self and node.attr in lightning_privates
                if (
                    private
                    and (inherited or not on_self)
                    and node.attr not in OUR_OWN_PRIVATE_NAMES
                ):
                    found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                ("lightning", "pytorch_lightning")
            ):
                found += [
                    f"{path.name}:{node.lineno} from {node.module} import {alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_")
                ]
    assert not found, f"private Lightning names outside compat.py: {found}"


def test_for_package_leaves_classes_that_serve_both_packages_alone():
    from lightning_o2nc.lightning import AveragedIterate, DigitsDataModule

    assert for_package(AveragedIterate, "pytorch_lightning") is AveragedIterate
    assert for_package(DigitsDataModule, "pytorch_lightning") is DigitsDataModule
