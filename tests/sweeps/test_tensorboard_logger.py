"""The sweep's TensorBoard logger writes what Lightning's writes, in fewer events and flushes."""

from __future__ import annotations

import time

import pytest
import torch
from tbparse import SummaryReader
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from lightning_o2nc.lightning.packages import for_package
from lightning_o2nc.sweeps.objective import SweepTensorBoardLogger


def _events(run) -> list:
    (path,) = run.glob("events.out.tfevents.*")
    return [event for event in EventFileLoader(str(path)).Load() if event.HasField("summary")]


@pytest.mark.parametrize("package", ["lightning.pytorch", "pytorch_lightning"])
def test_each_write_of_metrics_is_one_event_holding_every_scalar_at_its_step(tmp_path, package):
    logger = for_package(SweepTensorBoardLogger, package)(tmp_path, "trial_0", {"trial/number": 0})
    logger.log_metrics({"train/loss": torch.tensor(0.5), "train/acc": 0.75, "epoch": 0}, step=4)
    logger.log_metrics({"train/loss": 0.25, "train/acc": 1}, step=9)
    logger.finalize("success")

    run = tmp_path / "trial_0"
    assert [len(event.summary.value) for event in _events(run)] == [3, 2]
    scalars = SummaryReader(str(run)).scalars
    values = {(row.tag, row.step): row.value for row in scalars.itertuples()}
    assert values == {
        ("train/loss", 4): 0.5,
        ("train/acc", 4): 0.75,
        ("epoch", 4): 0.0,
        ("train/loss", 9): 0.25,
        ("train/acc", 9): 1.0,
    }


def test_saves_flush_at_most_every_flush_secs_and_the_final_one_always(tmp_path, monkeypatch):
    logger = for_package(SweepTensorBoardLogger)(tmp_path, "trial_0", {})
    flushes = []
    monkeypatch.setattr(logger.experiment, "flush", lambda: flushes.append(time.monotonic()))
    for step in range(5):  # Lightning saves after every write of metrics
        logger.log_metrics({"train/loss": float(step)}, step=step)
        logger.save()
    assert len(flushes) == 1
    monkeypatch.setattr(logger, "_saved_at", time.monotonic() - logger.FLUSH_SECS)
    logger.save()
    assert len(flushes) == 2
    logger.save()
    assert len(flushes) == 2
    logger.finalize("success")
    assert len(flushes) >= 3  # finalize flushes (and its save is never skipped)
    assert (tmp_path / "trial_0" / "hparams.yaml").is_file()
