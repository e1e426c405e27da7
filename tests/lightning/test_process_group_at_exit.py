"""A process in which our callbacks ran under an initialized process group destroys it at exit
(gloo's too: Lightning does it for NCCL only), unless a run raised there.

Each case is a fresh interpreter that initializes a real gloo group (one rank, meeting through a
file), fits a real Trainer and exits; an exit handler registered before the Trainer runs after ours
and records whether the group was still initialized at that point.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import atexit, importlib, json, sys
    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader, TensorDataset
    from lightning_o2nc import O2NCAdamW
    from lightning_o2nc.lightning import AveragedIterate, O2NCMonitor

    out, package_name, case = sys.argv[1], sys.argv[2], sys.argv[3]
    pl = importlib.import_module(package_name)

    def record():  # registered first, so it runs after every handler registered later
        with open(out, "w") as f:
            json.dump({"initialized_at_exit": dist.is_initialized()}, f)

    atexit.register(record)
    dist.init_process_group(
        "gloo", init_method=f"file://{out}.rendezvous", rank=0, world_size=1
    )

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(4, 2)

        def training_step(self, batch, batch_idx):
            if case == "raises" and batch_idx == 1:
                raise RuntimeError("a failing step")
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val/loss", torch.nn.functional.cross_entropy(self.net(x), y))

        def configure_optimizers(self):
            return O2NCAdamW(self.parameters(), lr=1e-2, average=True)

    callbacks = [O2NCMonitor(), AveragedIterate()] if case in ("finishes", "raises") else []
    data = TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,)))
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
    )
    if case == "o2nc_module_with_plain_adamw":  # neither callback: the module adds a bare one
        from lightning_o2nc.lightning import O2NCModule, SyntheticDataModule

        module = O2NCModule("mlp", input_shape=(1, 8, 8), num_classes=4, optimizer="adamw")
        trainer.fit(module, datamodule=SyntheticDataModule(num_samples=32, batch_size=8))
    else:
        trainer.fit(Tiny(), DataLoader(data, batch_size=4), DataLoader(data, batch_size=8))
    """
)


def _run(tmp_path: Path, package: str, case: str) -> tuple[subprocess.CompletedProcess, bool]:
    script, out = tmp_path / "run.py", tmp_path / "record.json"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    result = subprocess.run(
        [sys.executable, str(script), str(out), package, case],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result, json.loads(out.read_text())["initialized_at_exit"]


@pytest.mark.slow
@pytest.mark.parametrize("package", ["lightning.pytorch", "pytorch_lightning"])
def test_a_finished_run_with_our_callbacks_destroys_the_gloo_group_at_exit(tmp_path, package):
    result, initialized_at_exit = _run(tmp_path, package, "finishes")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not initialized_at_exit


@pytest.mark.slow
def test_an_o2nc_module_with_neither_callback_destroys_it_too(tmp_path):
    result, initialized_at_exit = _run(
        tmp_path, "lightning.pytorch", "o2nc_module_with_plain_adamw"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not initialized_at_exit


@pytest.mark.slow
def test_without_our_callbacks_the_group_outlives_the_exit_handlers(tmp_path):
    # the cases above are our doing: Lightning leaves a gloo group to the interpreter
    result, initialized_at_exit = _run(tmp_path, "lightning.pytorch", "without_our_callbacks")
    assert result.returncode == 0, result.stderr[-3000:]
    assert initialized_at_exit


@pytest.mark.slow
def test_a_process_whose_run_raised_leaves_its_group_alone(tmp_path):
    # its group may hold work waiting on another rank: destroying it can wait for that
    result, initialized_at_exit = _run(tmp_path, "lightning.pytorch", "raises")
    assert result.returncode != 0 and "a failing step" in result.stderr
    assert initialized_at_exit
