"""The tuned comparison on tiny data: every arm is tuned alike, every seed is stored at x and x̄,
the section renders from the stored result, and a quick run leaves benchmarks/results alone."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from benchmarks.experiments import get
from benchmarks.experiments.tuned_parity import ARMS
from benchmarks.harness import RESULTS_DIR, read_result, run_experiment


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


def _committed_bytes():
    return {p: p.read_bytes() for p in sorted(RESULTS_DIR.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_tuned_parity_quick_tunes_every_arm_alike_and_stores_every_seed_at_x_and_x_bar(tmp_path):
    root = write_tiny_fashion_mnist(tmp_path / "data")
    committed = _committed_bytes()
    experiment = get("tuned_parity")
    fixed = {
        **experiment.quick["fixed"],
        "data.init_args.root": str(root),
        "data.init_args.system_dirs": [],
        "data.init_args.val_size": 100,
        "trainer.limit_test_batches": 1,
    }
    out = tmp_path / "results"
    overrides = {"min_trials": 2, "min_complete": 1, "max_trials": 3, "workers": 0, "fixed": fixed}
    run_experiment(experiment, quick=True, overrides=overrides, results_dir=out)
    result = read_result("tuned_parity", out)
    studies = {(s["arm"], s["epochs"]): s for s in result["studies"]}
    assert set(studies) == {(arm, e) for arm in ARMS for e in (1, 3)}
    for study in studies.values():  # 2 trials, and a third only while none completed
        assert study["trials"] in (2, 3) and study["failed"] == 0
        assert study["completed"] >= 1 or study["trials"] == 3
    assert len({s["study_name"] for s in studies.values()}) == 6
    runs = result["runs"]
    assert len(runs) == 3 * 2 * 2
    for run in runs:
        assert 0.0 <= run["test_acc"] <= 1.0
        assert 0.0 <= run["test_acc_avg"] <= 1.0
        assert set(run["test_acc_horizon"]) == {"0.99", "0.999"}
    scales = {run["arm"]: run["max_scale"] for run in runs}
    assert scales["SGDM"] == 1.0 and scales["O2NC (exponential)"] != 1.0
    at_sgdm = result["at_sgdm_best"]  # every O2NC arm with SGDM's best values, the same seeds
    assert sorted((r["arm"], r["epochs"], r["seed"]) for r in at_sgdm) == sorted(
        (r["arm"], r["epochs"], r["seed"]) for r in runs if r["arm"] != "SGDM"
    )
    assert all(r["max_scale"] != 1.0 for r in at_sgdm)  # the arm's own scaling, SGDM's η, β, μ
    assert result["figures"] == ["tuned_parity.png"]
    assert (out / "tuned_parity.png").read_bytes()[:4] == b"\x89PNG"
    assert {"torch", "CPU", "commit"} <= set(result["env"])
    text = experiment.render(result)
    assert text.count("| O2NC (exponential) |") == 2 * 3  # best config, accuracy, x̄ tables
    assert text.count("| O2NC (uniform) at SGDM's best |") == 2 * 2  # accuracy, x̄ tables
    assert text.count("| O2NC (exponential), ") == 2  # η's sensitivity in each budget's study
    assert len(experiment.targets(result)) == 2 * 2
    assert _committed_bytes() == committed


def test_the_committed_result_renders_the_tuned_sections_numbers():
    experiment = get("tuned_parity")
    text = experiment.render(read_result("tuned_parity"))
    assert "| 4 ep (1400 steps) | O2NC (exponential) | 88.85 ± 0.35 | 88.87 ± 0.41 |" in text
    assert "-1.99 ± 0.16 | t = -12.42, p = 1.5e-04 |" in text
    assert "| O2NC (exponential) at SGDM's best | 88.77 ± 0.39 |" in text
    assert "≥ 16 trials, ≥ 8 completed, ≤ 40: 16/23/25 trials" in text
    assert "| SGDM | 0.478 | 0.939 | 0.0945 | warmup_cosine (warmup_fraction 0.0369) |" in text
