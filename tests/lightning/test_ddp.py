import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("ddp_run.py")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("package", "optimizer"),
    [
        ("lightning.pytorch", "o2nc"),
        ("pytorch_lightning", "o2nc"),  # the user's module: ExponentiatedO2NC
        ("lightning.pytorch", "o2nc_adamw"),  # RandomScaling: one s for both ranks, seed=None
    ],
)
def test_two_process_gloo_ddp_ends_with_identical_weights_and_synced_metrics(
    tmp_path, package, optimizer
):
    env = {**os.environ, "PL_DISABLE_FORK": "1", "OMP_NUM_THREADS": "1"}
    env.pop("LOCAL_RANK", None)
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path), package, optimizer],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["trainer_class"] == f"{package}.trainer.trainer.Trainer"
    for name, tensor in ranks[0]["weights"].items():
        assert torch.equal(tensor, ranks[1]["weights"][name]), name
    for a, b in zip(ranks[0]["x_bar"], ranks[1]["x_bar"], strict=True):
        assert torch.equal(a, b)
    assert ranks[0]["last_scale"] == ranks[1]["last_scale"] != 1.0
    expected = {"o2nc": "ExponentiatedO2NC", "o2nc_adamw": "O2NCAdamW"}[optimizer]
    assert ranks[0]["optimizer_class"] == ranks[1]["optimizer_class"] == expected
    # each rank validates a different half of the data; sync_dist makes the logged values agree
    for name in ("val/loss", "val/acc", "val/loss_avg", "val/acc_avg", "train/loss"):
        assert ranks[0]["metrics"][name] == ranks[1]["metrics"][name], name
    assert ranks[0]["metrics"]["val/acc"] > 0.5
    # and the value is the mean over all validation examples of both ranks
    (sum0, count0), (sum1, count1) = (r["val_loss_sum_and_count"] for r in ranks)
    assert ranks[0]["metrics"]["val/loss"] == pytest.approx((sum0 + sum1) / (count0 + count1))
