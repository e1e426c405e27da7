"""The throughput experiment: the committed result renders RESULTS.md's numbers, and a quick run
fits every arm with a real Trainer (the monitor arm logging to a real TensorBoard folder). No time
is asserted."""

from __future__ import annotations

import statistics

import pytest

from benchmarks.experiments import get
from benchmarks.harness import RESULTS_DIR, read_result, run_experiment, work_dir


def committed_files() -> dict:
    """Every file under benchmarks/results, sub-folders included."""
    return {p: p.read_bytes() for p in RESULTS_DIR.rglob("*") if p.is_file()}


def test_the_committed_result_renders_the_figures_of_results_md():
    experiment = get("throughput")
    result = read_result("throughput")
    text = experiment.render(result)
    assert text.startswith(
        "SmallCNN(width=16) on fashion_mnist, batch 128, cpu (1 torch thread(s))"
    )
    for row in (
        "| O2NC | 1534 | 1571 ± 128 |",
        "| torch.optim.SGD | 1675 | 1654 ± 147 |",
        "| O2NC / SGDM (factory) | 1.015 | 0.963 – 1.046 | met |",
        "| O2NC + average + monitor / torch.optim.SGD | 0.951 | 0.813 – 1.031 | **missed** |",
    ):
        assert row in text
    assert experiment.targets(result) == [
        ("O2NC / SGDM (factory) ≥ 0.99", "1.015 (range 0.963–1.046)", "met"),
        ("O2NC / torch.optim.SGD ≥ 0.99", "0.986 (range 0.811–1.025)", "**missed**"),
    ]


@pytest.mark.slow
def test_a_quick_run_fits_every_arm_pairs_the_ratios_and_keeps_the_committed_results():
    committed = committed_files()
    experiment = get("throughput")
    path = run_experiment(experiment, quick=True, overrides={"repeats": 2})
    assert committed_files() == committed
    result = read_result("throughput", path.parent)
    samples = result["samples_per_second"]
    assert list(samples) == list(experiment.arms)
    assert all(len(v) == 2 and min(v) > 0 for v in samples.values())
    paired = [a / b for a, b in zip(samples["O2NC"], samples["torch.optim.SGD"])]
    assert result["ratios"]["O2NC / torch.optim.SGD"] == pytest.approx(paired)
    assert len(result["ratios"]) == 4
    assert result["config"]["lr"] > 0 and result["config"]["batch_size"] > 0  # the train config's
    events = list((work_dir() / "quick" / "throughput").rglob("events.out.tfevents.*"))
    assert len(events) == 2  # the monitor arm's logger, once per repetition
    median = statistics.median(result["ratios"]["O2NC / SGDM (factory)"])
    assert f"| O2NC / SGDM (factory) | {median:.3f} |" in experiment.render(result)
