"""The Lightning features users combine with an optimizer, each with both callbacks on tiny data.

Every case checks what a user would: a finite loss, exactly one scalar s per step of the O2NC
optimizer, x_bar evaluated (``val/loss_avg``), and the monitor's points on the step axis of the
training metrics, read back from real TensorBoard event files.
"""

import math

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tbparse import SummaryReader
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_o2nc import ExponentiatedO2NC
from lightning_o2nc.lightning import AveragedIterate, O2NCMonitor
from lightning_o2nc.lightning.packages import Callback, LightningDataModule

BATCHES_PER_EPOCH, EPOCHS, LOG_EVERY = 6, 2, 2


class TinyData(LightningDataModule):
    """Four separable clusters: 96 training examples (6 batches of 16), 32 for validation."""

    def setup(self, stage):
        generator = torch.Generator().manual_seed(0)
        means = 3.0 * torch.randn(4, 16, generator=generator)
        labels = torch.arange(128) % 4
        inputs = means[labels] + torch.randn(128, 16, generator=generator)
        self.train_set = TensorDataset(inputs[:96], labels[:96])
        self.val_set = TensorDataset(inputs[96:], labels[96:])

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=16)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=16)


class Classifier(LightningModule):
    """``body`` then ``head``; ``two_optimizers``: O2NC on the body, AdamW on the head."""

    def __init__(self, manual=False, two_optimizers=False):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 32), nn.ReLU())
        self.head = nn.Linear(32, 4)
        self.automatic_optimization = not (manual or two_optimizers)
        self.two_optimizers = two_optimizers

    def forward(self, x):
        return self.head(self.body(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.logits_dtype = logits.dtype
        loss = nn.functional.cross_entropy(logits, y)
        self.log("train/loss", loss)
        if self.automatic_optimization:
            return loss
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        for optimizer in optimizers:
            optimizer.zero_grad()
        self.manual_backward(loss)
        for optimizer in optimizers:
            optimizer.step()
        return None

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        if not self.two_optimizers:
            return ExponentiatedO2NC(self.parameters(), lr=0.05, seed=0, average=True)
        return [
            torch.optim.AdamW(self.head.parameters(), lr=1e-2),
            ExponentiatedO2NC(self.body.parameters(), lr=0.05, seed=0, average=True),
        ]


class RecordO2NCSteps(Callback):
    """Every scalar drawn by the O2NC optimizer and the gradient norm it stepped with, through
    step hooks of its own."""

    def __init__(self):
        self.scales, self.grad_norms = [], []

    def on_train_start(self, trainer, pl_module):
        (o2nc,) = [opt for opt in trainer.optimizers if isinstance(opt, ExponentiatedO2NC)]
        o2nc.register_step_post_hook(self._record)

    def _record(self, optimizer, args, kwargs):
        self.scales.append(optimizer.last_scale)
        self.grad_norms.append(_norm(optimizer))  # the gradients this step used


def _norm(optimizer):
    grads = [
        p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None
    ]
    return float(
        torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    )


CASES = {
    "bf16-mixed": dict(trainer=dict(precision="bf16-mixed")),
    "16-mixed-cuda": dict(trainer=dict(precision="16-mixed", accelerator="cuda")),
    "accumulate_grad_batches=3": dict(trainer=dict(accumulate_grad_batches=3), steps_every=3),
    "gradient_clip_val": dict(trainer=dict(gradient_clip_val=0.25)),
    "manual_optimization": dict(model=dict(manual=True)),
    "two_optimizers": dict(model=dict(two_optimizers=True)),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_feature_gives_finite_loss_one_scalar_per_step_x_bar_and_logs_on_the_step_axis(
    case, tmp_path, capsys
):
    spec = CASES[case]
    if spec.get("trainer", {}).get("accelerator") == "cuda" and not torch.cuda.is_available():
        pytest.skip("16-mixed needs CUDA")
    recorder = RecordO2NCSteps()
    logger = TensorBoardLogger(tmp_path, name=case)
    trainer = Trainer(
        **{
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": EPOCHS,
            "logger": logger,
            "log_every_n_steps": LOG_EVERY,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "enable_checkpointing": False,
            "num_sanity_val_steps": 0,
            "callbacks": [recorder, O2NCMonitor(), AveragedIterate()],
            **spec.get("trainer", {}),
        }
    )
    torch.manual_seed(0)
    model = Classifier(**spec.get("model", {}))
    trainer.fit(model, datamodule=TinyData())

    o2nc_steps = EPOCHS * BATCHES_PER_EPOCH // spec.get("steps_every", 1)
    # the x axis of the training metrics: optimizer steps, or batches under manual optimization
    axis_points = o2nc_steps if model.automatic_optimization else EPOCHS * BATCHES_PER_EPOCH
    expected_steps = list(range(LOG_EVERY - 1, axis_points, LOG_EVERY))

    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    reader = SummaryReader(logger.log_dir, pivot=False)
    scalars, histograms = reader.scalars, reader.histograms
    logged = {tag: scalars[scalars.tag == tag] for tag in set(scalars.tag)}
    counts = [int(sum(c)) for c in histograms[histograms.tag == "o2nc/scale_histogram"].counts]
    with capsys.disabled():  # quoted in the closing note of the issue
        print(
            f"\n{case}: o2nc steps {len(recorder.scales)}, train/loss {metrics['train/loss']:.4f}, "
            f"val/loss {metrics['val/loss']:.4f}, val/loss_avg {metrics['val/loss_avg']:.4f}, "
            f"o2nc/scale at steps {list(logged['o2nc/scale'].step)}, scalars per histogram {counts}"
        )

    assert all(math.isfinite(metrics[name]) for name in ("train/loss", "val/loss", "val/loss_avg"))
    assert len(recorder.scales) == o2nc_steps  # one s per optimizer step
    assert (
        metrics["val/loss_avg"] != metrics["val/loss"]
    )  # x_bar was evaluated, and is another point
    assert metrics["val/loss_avg"] < math.log(4)  # and it learned
    assert list(logged["train/loss"].step) == expected_steps
    assert list(logged["o2nc/scale"].step) == expected_steps
    assert list(logged["o2nc/stationarity_certificate"].step) == expected_steps
    # each point shows the scalar of the last O2NC step before it and every s drawn since the last
    steps_per_point = o2nc_steps // len(expected_steps)
    last_of_each = [
        recorder.scales[(i + 1) * steps_per_point - 1] for i in range(len(expected_steps))
    ]
    assert np.allclose(logged["o2nc/scale"].value, last_of_each)
    assert counts == [steps_per_point] * len(expected_steps)
    assert len(logged["val/loss_avg"]) == EPOCHS
    precision = spec.get("trainer", {}).get("precision", "")
    half = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision, torch.float32)
    assert model.logits_dtype == half
    clip = spec.get("trainer", {}).get("gradient_clip_val")
    if clip is not None:  # Lightning clipped before each O2NC step
        assert max(recorder.grad_norms) <= clip * (1 + 1e-5)
