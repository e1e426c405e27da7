import warnings

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_o2nc import ExponentiatedO2NC
from lightning_o2nc.lightning import AveragedIterate, O2NCModule, SmallCNN


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _loss_sum_at_x_bar(trainer, model, stored_bn_state, loader, logits):
    """Summed loss over ``loader`` with the optimizer's x_bar swapped in and the stored BatchNorm
    statistics loaded; then the training weights come back (optimizer ``train()``) and the
    training BatchNorm buffers are put back."""
    training = _state(model)
    trainer.optimizers[0].eval()
    model.load_state_dict({**model.state_dict(), **stored_bn_state})
    model.eval()
    with torch.no_grad():
        total = sum(
            torch.nn.functional.cross_entropy(logits(x), y, reduction="sum") for x, y in loader
        )
    trainer.optimizers[0].train()
    model.load_state_dict({**model.state_dict(), **{k: training[k] for k in stored_bn_state}})
    return float(total)


def _fit(make_model, make_data, trainer_kwargs, callbacks=(), **model_kwargs):
    torch.manual_seed(0)
    model = make_model(**model_kwargs)
    trainer = Trainer(**{**trainer_kwargs, "max_epochs": 3, "callbacks": list(callbacks)})
    trainer.fit(model, datamodule=make_data())
    return trainer, model


@pytest.mark.parametrize("backbone", ["mlp", "small_cnn"])
def test_evaluating_at_x_bar_leaves_training_weights_and_buffers_bit_identical(
    backbone, make_model, make_data, trainer_kwargs
):
    _, plain = _fit(
        make_model,
        make_data,
        trainer_kwargs,
        backbone=backbone,
        monitor=False,
        average=True,
        bn_update_batches=2,
    )

    # the same run without evaluation at x_bar: O2NCModule(average=True) but callbacks disabled
    class NoCallbacks(O2NCModule):
        def configure_callbacks(self):
            return []

    torch.manual_seed(0)
    reference = NoCallbacks(
        backbone, input_shape=(1, 8, 8), num_classes=4, lr=0.1, seed=0, average=True
    )
    trainer = Trainer(**{**trainer_kwargs, "max_epochs": 3})
    trainer.fit(reference, datamodule=make_data())
    assert "val/acc_avg" not in trainer.callback_metrics
    for name, tensor in _state(reference).items():
        assert torch.equal(tensor, plain.state_dict()[name]), name


def test_val_metrics_at_x_bar_equal_an_evaluation_of_x_bar_by_hand(
    make_model, make_data, trainer_kwargs
):
    trainer, model = _fit(make_model, make_data, trainer_kwargs, monitor=False)
    logged = trainer.callback_metrics["val/loss_avg"]
    dm = make_data()
    dm.setup("fit")
    opt = trainer.optimizers[0]
    opt.eval()
    with torch.no_grad():
        losses = [
            torch.nn.functional.cross_entropy(model(x), y, reduction="sum")
            for x, y in dm.val_dataloader()
        ]
    opt.train()
    assert logged == pytest.approx(float(sum(losses) / len(dm.val_set)), rel=1e-5)
    assert trainer.callback_metrics["val/loss"] != pytest.approx(float(logged))


@pytest.mark.parametrize("optimizer", ["o2nc", "sgdm"])
def test_checkpoints_hold_training_weights_and_x_bar_and_test_from_a_checkpoint_uses_x_bar(
    optimizer, make_model, make_data, trainer_kwargs, tmp_path
):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer, model = _fit(
        make_model,
        make_data,
        {**trainer_kwargs, "enable_checkpointing": True},
        callbacks=[checkpoint],
        monitor=False,
        optimizer=optimizer,
    )
    saved = torch.load(checkpoint.last_model_path, weights_only=True)
    for name, tensor in model.state_dict().items():
        assert torch.equal(saved["state_dict"][name], tensor), name
    optimizer_state = saved["optimizer_states"][0]
    assert optimizer_state["param_groups"][0]["o2nc"]["training"] is True
    live = trainer.optimizers[0]
    for index, param in enumerate(p for g in live.param_groups for p in g["params"]):
        assert torch.equal(
            optimizer_state["state"][index]["iterate_deviation"],
            live.state[param]["iterate_deviation"],
        )

    live.eval()
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    live.train()
    fresh = O2NCModule("mlp", input_shape=(1, 8, 8), num_classes=4)
    tester = Trainer(**trainer_kwargs)
    result = tester.test(
        fresh, datamodule=make_data(), ckpt_path=checkpoint.last_model_path, verbose=False
    )[0]
    direct = Trainer(**trainer_kwargs).test(
        O2NCModule("mlp", input_shape=(1, 8, 8), num_classes=4),
        datamodule=make_data(),
        verbose=False,
    )
    at_x_bar = O2NCModule("mlp", input_shape=(1, 8, 8), num_classes=4, average=False)
    at_x_bar.load_state_dict(expected)
    reference = Trainer(**trainer_kwargs).test(at_x_bar, datamodule=make_data(), verbose=False)[0]
    assert result["test/loss_avg"] == pytest.approx(reference["test/loss"], rel=1e-6)
    assert result["test/loss"] != pytest.approx(reference["test/loss"])
    assert (
        "test/loss_avg" not in direct[0]
    )  # no optimizer state, no checkpoint: only current weights


def test_leave_averaged_in_model_ends_fit_at_x_bar(make_model, make_data, trainer_kwargs):
    trainer, model = _fit(make_model, make_data, trainer_kwargs, monitor=False)
    opt = trainer.optimizers[0]
    opt.eval()
    x_bar = _state(model)
    opt.train()
    _, left = _fit(
        make_model, make_data, trainer_kwargs, monitor=False, leave_averaged_in_model=True
    )
    for name, tensor in x_bar.items():
        assert torch.equal(left.state_dict()[name], tensor), name


def test_batch_norm_statistics_at_x_bar_are_recomputed_stored_and_used(make_data, trainer_kwargs):
    torch.manual_seed(0)
    model = O2NCModule(SmallCNN(1, 4, width=4), lr=0.1, seed=0, monitor=False, bn_update_batches=2)
    trainer = Trainer(**{**trainer_kwargs, "max_epochs": 2})
    trainer.fit(model, datamodule=make_data())
    callback = next(c for c in trainer.callbacks if isinstance(c, AveragedIterate))
    stored = callback.state_dict()["averaged_bn_state"]
    buffers = dict(model.named_buffers())
    assert set(stored) == set(buffers)
    running_means = [name for name in stored if name.endswith("running_mean")]
    assert all(not torch.equal(stored[name], buffers[name]) for name in running_means)

    dm = make_data()
    dm.setup("fit")
    training_state = _state(model)
    total = _loss_sum_at_x_bar(trainer, model, stored, dm.val_dataloader(), model)
    assert trainer.callback_metrics["val/loss_avg"] == pytest.approx(
        total / len(dm.val_set), rel=1e-5
    )
    assert all(torch.equal(v, training_state[k]) for k, v in model.state_dict().items())


def test_testing_after_fit_uses_the_batch_norm_statistics_at_x_bar_recomputed_in_fit(
    make_data, trainer_kwargs
):
    """Lightning calls configure_callbacks again for trainer.test: the module hands back the same
    AveragedIterate, so the statistics at x_bar recomputed during fit are not lost."""
    torch.manual_seed(0)
    model = O2NCModule(SmallCNN(1, 4, width=4), lr=0.1, seed=0, monitor=False, bn_update_batches=2)
    trainer = Trainer(**{**trainer_kwargs, "max_epochs": 2})
    dm = make_data()
    trainer.fit(model, datamodule=dm)
    callback = next(c for c in trainer.callbacks if isinstance(c, AveragedIterate))
    stored = callback.state_dict()["averaged_bn_state"]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*no training batches.*")
        trainer.test(model, datamodule=dm, verbose=False)
    assert next(c for c in trainer.callbacks if isinstance(c, AveragedIterate)) is callback
    dm.setup("test")
    total = _loss_sum_at_x_bar(trainer, model, stored, dm.test_dataloader(), model)
    assert trainer.callback_metrics["test/loss_avg"] == pytest.approx(
        float(total) / len(dm.test_set), rel=1e-5
    )


def test_averaged_iterate_without_average_true_explains_the_fix(make_data, trainer_kwargs):
    model = O2NCModule("mlp", input_shape=(1, 8, 8), num_classes=4, average=False)
    trainer = Trainer(**{**trainer_kwargs, "callbacks": [AveragedIterate()]})
    with pytest.raises(MisconfigurationException, match=r"average=True.*model.average: true"):
        trainer.fit(model, datamodule=make_data())


class BatchNormWithoutForward(LightningModule):
    """A user's module whose batches go through ``features``/``head`` directly: no ``forward``."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU()
        )
        self.head = torch.nn.Linear(16, 4)

    def logits(self, x):
        return self.head(self.features(x))

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.cross_entropy(self.logits(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log(
            "val/loss",
            torch.nn.functional.cross_entropy(self.logits(x), y, reduction="sum"),
            reduce_fx="sum",
        )

    def configure_optimizers(self):
        return ExponentiatedO2NC(self.parameters(), lr=0.1, seed=0, average=True)


class AveragedIterateForLogits(AveragedIterate):
    def forward_batch(self, module, batch):
        return module.logits(batch[0])


def test_batch_norm_without_forward_is_refused_before_training_and_says_what_to_provide(
    make_data, trainer_kwargs
):
    model = BatchNormWithoutForward()
    trainer = Trainer(**{**trainer_kwargs, "callbacks": [AveragedIterate()]})
    with pytest.raises(MisconfigurationException, match=r"no forward\(\).*forward_batch="):
        trainer.fit(model, datamodule=make_data())
    assert trainer.global_step == 0


@pytest.mark.parametrize(
    "callback",
    [
        lambda: AveragedIterate(forward_batch=lambda module, batch: module.logits(batch[0])),
        AveragedIterateForLogits,
    ],
    ids=["forward_batch argument", "forward_batch override"],
)
def test_batch_norm_statistics_at_x_bar_come_from_forward_batch(
    callback, make_data, trainer_kwargs
):
    torch.manual_seed(0)
    model = BatchNormWithoutForward()
    averaged = callback()
    trainer = Trainer(**{**trainer_kwargs, "callbacks": [averaged]})
    trainer.fit(model, datamodule=make_data())
    stored = averaged.state_dict()["averaged_bn_state"]
    assert not torch.equal(stored["features.2.running_mean"], model.features[2].running_mean)

    dm = make_data()
    dm.setup("fit")
    total = _loss_sum_at_x_bar(trainer, model, stored, dm.val_dataloader(), model.logits)
    assert float(trainer.callback_metrics["val/loss_avg"]) == pytest.approx(total, rel=1e-5)
