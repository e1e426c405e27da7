"""Lightning's ModelParallelStrategy (FSDP2) on 2 CPU ranks: fit, checkpoint in both forms, resume,
and test from the checkpoint (model_parallel_run.py, one 2-rank run per case, ~35 s each)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("model_parallel_run.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("package", "optimizer"),
    [("lightning.pytorch", "o2nc"), ("pytorch_lightning", "o2nc_adamw")],
)
def test_a_resumed_sharded_run_continues_as_the_uninterrupted_one_bit_for_bit(
    tmp_path, package, optimizer
):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PL_DISABLE_FORK": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path.cwd()), env.get("PYTHONPATH", "")])
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        str(SCRIPT), str(tmp_path), package, optimizer,
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    results = torch.load(tmp_path / "results.pt", weights_only=True)
    uninterrupted = results["uninterrupted"]
    assert uninterrupted["state_is_dtensor"]  # the optimizer's state is sharded as the weights
    assert (tmp_path / "epoch1.directory").is_dir() and (tmp_path / "epoch1.file").is_file()
    for form in ("directory", "file"):
        resumed = results[form]
        # CPU, gloo: loading restores every shard exactly and the reductions run in the same
        # order, so the resumed run is the uninterrupted one bit for bit, scalars included
        for a, b in zip(resumed["weights"], uninterrupted["weights"], strict=True):
            assert torch.equal(a, b), form
        for a, b in zip(resumed["x_bar"], uninterrupted["x_bar"], strict=True):
            assert torch.equal(a, b), form
        assert resumed["last_scale"] == uninterrupted["last_scale"]
        # V: the wrapper's step carries it as a float32 tensor, a checkpoint as a float, so the
        # resumed V continues from the more precise value (ExponentiatedO2NC's is exact)
        assert resumed["statistics"] == pytest.approx(uninterrupted["statistics"], rel=1e-6)
        # trainer.test(ckpt_path=...) evaluates the checkpoint's x_bar too
        assert {"test/acc", "test/acc_avg", "test/loss_avg"} <= set(resumed["test"]), form
    assert results["directory"]["test"] == results["file"]["test"]
    assert (
        results["directory"]["test"]["test/loss_avg"] != results["directory"]["test"]["test/loss"]
    )
    if package == "lightning.pytorch":
        module_run = results["o2nc_module"]  # O2NCModule(shard=True) shards its own backbone
        assert module_run["sharded"]
        assert {"val/acc", "val/acc_avg", "train/loss"} <= set(module_run["metrics"])
        logged = Path(module_run["csv"]).read_text().splitlines()[0].split(",")
        assert {"o2nc/update_norm", "o2nc/stationarity_certificate"} <= set(logged)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FSDPStrategy refuses a CPU accelerator")
@pytest.mark.parametrize("optimizer", ["o2nc", "o2nc_adamw"])
def test_a_one_rank_fsdp_strategy_fit_trains_and_tests_at_x_and_x_bar(tmp_path, optimizer):
    """FSDP1 (Lightning's FSDPStrategy) hands the optimizer flat shards; on one rank they are
    whole, and the run trains, averages and tests (run on a lent GPU by benchmarks/gpu_check.sh)."""
    import lightning.pytorch as pl

    from lightning_o2nc.lightning import O2NCModule, SyntheticDataModule

    torch.manual_seed(0)
    lr = {"o2nc": 0.05, "o2nc_adamw": 3e-3}[optimizer]
    module = O2NCModule(
        "mlp", input_shape=(1, 8, 8), num_classes=4, optimizer=optimizer, lr=lr, average=True
    )
    data = SyntheticDataModule(num_samples=256, batch_size=32, seed=0)
    trainer = pl.Trainer(
        accelerator="gpu", devices=1, strategy="fsdp", max_epochs=2, default_root_dir=tmp_path,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    (metrics,) = trainer.test(module, datamodule=data, verbose=False)
    assert torch.isfinite(torch.tensor([metrics["test/loss"], metrics["test/loss_avg"]])).all()
    assert metrics["test/acc"] > 0.25 and metrics["test/acc_avg"] > 0.25  # above chance (4 classes)
