"""CallbackGroup: its members see exactly the hook calls Lightning would make to each of them."""

from __future__ import annotations

import logging
import pickle

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_o2nc.sweeps.callbacks import CallbackGroup, NonFiniteLossGuard
from tests.train_configs import QUIET_CPU


class Tiny(LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.layer(batch[0]).pow(2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Recorder(Callback):
    """Appends ``(name, hook, global_step)`` to a shared list on the hooks its subclass picks."""

    def __init__(self, name: str, calls: list):
        self.name, self.calls = name, calls

    def _record(self, hook: str, trainer: Trainer) -> None:
        self.calls.append((self.name, hook, trainer.global_step))


class OnBatches(Recorder):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._record(f"on_train_batch_end:{batch_idx}", trainer)

    def on_validation_end(self, trainer, pl_module):
        self._record("on_validation_end", trainer)

    def on_exception(self, trainer, pl_module, exception):
        self._record(f"on_exception:{type(exception).__name__}", trainer)


class OnEpochs(OnBatches):
    def on_fit_start(self, trainer, pl_module):
        self._record("on_fit_start", trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if trainer.global_step == 5:
            raise RuntimeError("stop here")

    def on_train_epoch_end(self, trainer, pl_module):
        self._record("on_train_epoch_end", trainer)


def _fit(callbacks: list) -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    data = DataLoader(TensorDataset(torch.randn(12, 4)), batch_size=4)  # 3 steps per epoch
    trainer = Trainer(max_epochs=3, callbacks=callbacks, **QUIET_CPU)
    with pytest.raises(RuntimeError, match="stop here"):
        trainer.fit(Tiny(), train_dataloaders=data, val_dataloaders=data)


@pytest.mark.filterwarnings("ignore:.*does not have many workers.*")
def test_members_get_the_calls_lightning_makes_to_separate_callbacks_in_the_same_order():
    separate: list = []
    _fit([OnBatches("a", separate), OnEpochs("b", separate)])
    grouped: list = []
    _fit([CallbackGroup(OnBatches("a", grouped), OnEpochs("b", grouped))])
    assert grouped == separate
    hooks = {hook.split(":")[0] for _, hook, _ in grouped}
    assert hooks == {
        "on_fit_start", "on_train_batch_end", "on_validation_end", "on_train_epoch_end",
        "on_exception",
    }  # fmt: skip
    assert ("b", "on_exception:RuntimeError", 5) in grouped


def test_a_hook_calls_only_the_members_that_define_it():
    calls: list = []
    group = CallbackGroup(OnBatches("a", calls), OnEpochs("b", calls))
    assert [m.__self__.name for m in group._calls["on_train_batch_end"]] == ["a", "b"]
    assert [m.__self__.name for m in group._calls["on_fit_start"]] == ["b"]
    assert group._calls["on_before_backward"] == []


def test_a_member_with_checkpoint_state_is_refused_by_name():
    class Stateful(Callback):
        def state_dict(self):
            return {"count": 1}

    with pytest.raises(ValueError, match="Stateful keeps state in checkpoints"):
        CallbackGroup(NonFiniteLossGuard(), Stateful())


def test_a_pickled_group_dispatches_to_its_own_members():
    """A ddp_spawn rank gets the group pickled: its hooks call the unpickled members."""
    group = CallbackGroup(OnBatches("a", []))
    assert group._calls["on_validation_end"]  # built here; bound methods are not pickled
    copy = pickle.loads(pickle.dumps(group))
    copy.on_validation_end(type("T", (), {"global_step": 7})(), None)
    assert copy.members[0].calls == [("a", "on_validation_end", 7)]
    assert group.members[0].calls == []
