"""The step-overhead experiment on tiny settings (the mlp, one or two rounds of 1 ms blocks): what
each arm keeps in its state, its paired ratios, its targets and its section. No time is asserted."""

from __future__ import annotations

from benchmarks.experiments import get
from benchmarks.experiments.step_overhead import TARGETS, model_parameters
from benchmarks.harness import RESULTS_DIR, read_result, run_experiment

TINY = {"models": ["mlp"], "rounds": 2, "block_seconds": 0.001}


def committed_files() -> dict:
    """Every file under benchmarks/results, sub-folders included."""
    return {p: p.read_bytes() for p in RESULTS_DIR.rglob("*") if p.is_file()}


def test_step_overhead_counts_one_buffer_per_parameter_and_doubles_state_with_average():
    experiment = get("step_overhead")
    result = experiment.run(experiment.resolve(overrides=TINY), None)
    summary = result["models"]["mlp"]
    rows = {row["arm"]: row for row in summary["rows"]}
    assert rows["O2NC defaults"]["buffers_per_param"] == [1]
    assert rows["O2NC defaults"]["state_ratio"] == 1.0
    assert rows["O2NC average=True"]["buffers_per_param"] == [2]
    assert rows["O2NC average=True"]["state_ratio"] == 2.0
    assert rows["AdamW foreach=True"]["buffers_per_param"] == [2]  # exp_avg, exp_avg_sq
    assert summary["num_params"] == sum(p.numel() for p in model_parameters("mlp"))
    assert "SGD fused=True" not in rows  # torch's fused SGD is a CUDA arm
    fastest = {row["baseline"] for row in summary["rows"] if row["arm"][:4] in ("SGD ", "O2NC")}
    assert len(fastest) == 1 and rows[fastest.pop()]["ratio"] == 1.0
    assert {row["baseline"] for row in rows.values() if "RandomScaling" in row["arm"]} == {
        "AdamW foreach=True"
    }
    assert all(row["median_us"] > 0 and row["rounds"] == 2 for row in rows.values())


def test_a_quick_run_renders_every_target_and_never_touches_the_committed_results():
    committed = committed_files()
    experiment = get("step_overhead")
    path = run_experiment(experiment, quick=True, overrides={"rounds": 1, "block_seconds": 0.001})
    assert committed_files() == committed
    result = read_result("step_overhead", path.parent)
    assert result["settings"]["models"] == ["mlp"] and "env" in result
    targets = experiment.targets(result)
    assert [row[0] for row in targets] == [
        f"{arm} ≤ {bound}× {'AdamW foreach=True' if 'Scaling' in arm else 'the faster SGD path'} "
        "(mlp)"
        for arm, bound in TARGETS.items()
    ]
    assert targets[0][0] == "O2NC defaults ≤ 1.0× the faster SGD path (mlp)"
    assert all(verdict in ("met", "**missed**") for _, _, verdict in targets)
    text = experiment.render(result)
    assert "| O2NC average=True + statistics() | " in text and "1 rounds of 1 ms blocks" in text
