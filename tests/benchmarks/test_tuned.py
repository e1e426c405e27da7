"""The tuned comparison and the η grid on tiny data: the whole protocol runs and stores what the
renderer reads; the longer-horizon x̄ is the optimizer's own x̄ when the horizon is β."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from benchmarks import eta_sensitivity, tuned_parity, tuned_report
from benchmarks.config_runs import HorizonAverages, optimizer_average
from benchmarks.results import read_result
from lightning_o2nc import ExponentiatedO2NC


def write_tiny_fashion_mnist(root, n_train=400, n_test=128, seed=0):
    """Random 28x28 images in the idx format torchvision reads from ROOT/FashionMNIST/raw."""
    rng = np.random.default_rng(seed)
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        images[np.arange(n), labels, :] = 255  # a learnable signal: row = class
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 2049, n) + labels.tobytes()
        )
    return root


@pytest.mark.slow
def test_tuned_parity_quick_tunes_every_arm_alike_and_stores_every_seed_at_x_and_x_bar(tmp_path):
    root = write_tiny_fashion_mnist(tmp_path / "data")
    out = tmp_path / "results"
    tuned_parity.main(
        [
            "--quick",
            "--n-trials",
            "2",
            "--workers",
            "0",
            "--out",
            str(out),
            "--set",
            f"data.init_args.root={root}",
            "--set",
            "data.init_args.system_dirs=[]",
            "--set",
            "data.init_args.val_size=100",
            "--set",
            "trainer.limit_test_batches=1",
        ]
    )
    result = read_result("tuned_parity_quick", out)
    studies = {(s["arm"], s["epochs"]): s for s in result["studies"]}
    assert set(studies) == {(arm, e) for arm in tuned_parity.ARMS for e in (1, 3)}
    assert {s["n_trials"] for s in studies.values()} == {2}
    assert len({s["study_name"] for s in studies.values()}) == 6
    runs = result["runs"]
    assert len(runs) == 3 * 2 * 2
    for run in runs:
        assert 0.0 <= run["test_acc"] <= 1.0
        assert 0.0 <= run["test_acc_avg"] <= 1.0
        assert set(run["test_acc_horizon"]) == {"0.99", "0.999"}
    scales = {run["arm"]: run["max_scale"] for run in runs}
    assert scales["SGDM"] == 1.0 and scales["O2NC (exponential)"] != 1.0
    assert (out / "tuned_parity_quick.png").read_bytes()[:4] == b"\x89PNG"
    text = tuned_report.to_markdown(result)
    assert text.count("| O2NC (exponential) |") == 2 * 3  # best config, accuracy, x̄ tables
    assert len(tuned_report.targets(result)) == 2 * 2


@pytest.mark.slow
def test_eta_grid_finds_where_sgdm_stops_training_and_the_scales_before_blow_ups(tmp_path):
    eta_sensitivity.main(
        ["--quick", "--etas", "0.1", "100", "--workers", "0", "--out", str(tmp_path)]
    )
    result = read_result("eta_sensitivity_quick", tmp_path)
    assert len(result["runs"]) == 2 * 3
    at_100 = [r for r in result["runs"] if r["eta"] == 100]
    assert all(r["blowup_step"] is not None for r in at_100)
    found = eta_sensitivity.summary(result, "digits")
    assert found["SGDM"]["largest_training_eta"] == 0.1
    assert found["SGDM"]["max_scale"] == 1.0
    assert found["O2NC (exponential)"]["scales_before_blowup"]
    assert "largest η that trains" in eta_sensitivity.to_markdown(result)


@pytest.mark.parametrize("beta", [0.5, 0.9])
def test_horizon_average_at_beta_is_the_optimizers_own_x_bar(beta):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    optimizer = ExponentiatedO2NC(model.parameters(), lr=0.1, beta=beta, average=True, seed=0)
    averages = HorizonAverages([beta, 0.999])
    for _ in range(25):
        optimizer.zero_grad()
        model(torch.randn(16, 4)).pow(2).mean().backward()
        optimizer.step()
        averages.on_train_batch_end(None, model, None, None, 0)
    for ours, theirs in zip(
        averages.averaged(beta), optimizer_average(model, optimizer), strict=True
    ):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    far = averages.averaged(0.999)
    assert any(not torch.allclose(a, b) for a, b in zip(far, averages.averaged(beta), strict=True))
