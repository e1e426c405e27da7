import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_o2nc.lightning import O2NCModule, SmallCNN, SyntheticDataModule

SCHEDULES = {
    "lr": {"shape": "warmup_cosine", "warmup_steps": 3},
    "beta": {"shape": "linear", "start_factor": 1.0, "end_factor": 0.5},
}


class Interrupted(Exception):
    pass


class InterruptAfter(Callback):
    def __init__(self, steps):
        self.steps = steps

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.steps:
            raise Interrupted(f"stopped after {self.steps} steps")


class RecordScales(Callback):
    def __init__(self):
        self.scales = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        optimizer = trainer.optimizers[0]
        self.scales[trainer.global_step] = (
            optimizer.last_scale,
            optimizer.param_groups[0]["lr"],
            optimizer.param_groups[0]["beta"],
        )


def _trainer(tmp_path, *callbacks):
    return Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        max_epochs=4,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True), *callbacks],
    )


def _model():
    seed_everything(
        0
    )  # the initial weights; the scalar generator's seed is agreed from it (seed=None)
    return O2NCModule(SmallCNN(1, 4, width=4), lr=0.05, schedules=SCHEDULES, bn_update_batches=2)


def _data():
    return SyntheticDataModule(num_samples=128, batch_size=16, seed=0)  # 4 steps per epoch


@pytest.mark.parametrize("interrupt_after", [4, 8])
def test_interrupted_fit_resumed_from_last_is_bit_identical_to_an_uninterrupted_fit(
    tmp_path, interrupt_after
):
    full_record = RecordScales()
    full = _trainer(tmp_path / "full", full_record)
    full_model = _model()
    full.fit(full_model, datamodule=_data())

    interrupted = _trainer(tmp_path / "split", InterruptAfter(interrupt_after))
    with pytest.raises(Interrupted):
        interrupted.fit(_model(), datamodule=_data())
    seed_everything(123)  # a resumed process does not share the global RNG state of the first one
    resumed_record = RecordScales()
    resumed = _trainer(tmp_path / "split", resumed_record)
    resumed_model = O2NCModule(
        SmallCNN(1, 4, width=4), lr=0.05, schedules=SCHEDULES, bn_update_batches=2
    )
    resumed.fit(resumed_model, datamodule=_data(), ckpt_path="last")

    assert resumed.global_step == full.global_step == 16
    after = {step: v for step, v in full_record.scales.items() if step > interrupt_after}
    assert resumed_record.scales == after  # scalars s, lr and beta of every resumed step
    for name, tensor in full_model.state_dict().items():
        assert torch.equal(tensor, resumed_model.state_dict()[name]), name
    full_opt, resumed_opt = full.optimizers[0], resumed.optimizers[0]
    for full_x_bar, resumed_x_bar in zip(
        full_opt.averaged_iterate(), resumed_opt.averaged_iterate(), strict=True
    ):
        assert torch.equal(full_x_bar, resumed_x_bar)
    for p, q in zip(full_model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(
            full_opt.state[p]["momentum_buffer"], resumed_opt.state[q]["momentum_buffer"]
        )
    assert full.callback_metrics["val/acc_avg"] == resumed.callback_metrics["val/acc_avg"]
