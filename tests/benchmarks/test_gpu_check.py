"""The GPU check: merged parts reach the section and the targets table, a missing part says so, and
the script itself runs end to end in its dry run (every part tiny on the CPU)."""

from __future__ import annotations

import json

import pytest

from benchmarks.experiments import get
from benchmarks.harness import RESULTS_DIR, read_result, run_experiment
from benchmarks.render import render_section

SYNC_TEST = (
    "tests/optim/test_cuda_no_host_sync.py::test_step_and_statistics_make_no_host_sync_on_cuda"
)


def committed_files() -> dict:
    """Every file under benchmarks/results, sub-folders included."""
    return {p: p.read_bytes() for p in RESULTS_DIR.rglob("*") if p.is_file()}


def merge(parts: dict, tmp_path) -> tuple:
    """The parts written as the script writes them, merged by the experiment into ``results``."""
    (tmp_path / "out").mkdir()
    for name, part in parts.items():
        (tmp_path / "out" / f"part_{name}.json").write_text(json.dumps(part))
    experiment = get("gpu_check")
    run_experiment(experiment, overrides={"parts": str(tmp_path / "out")}, results_dir=tmp_path)
    return experiment, read_result("gpu_check", tmp_path)


def test_a_rerender_keeps_the_gpu_section_that_was_merged(tmp_path):
    experiment, _ = merge({}, tmp_path)
    first, rows = render_section(experiment, tmp_path, tmp_path / "RESULTS.md")
    assert "Part `step` did not finish" in first  # an empty output folder says what is missing
    assert "Part `sharded` did not finish" in first and rows == []
    assert render_section(experiment, tmp_path, tmp_path / "RESULTS.md")[0] == first


def test_merged_gpu_results_reach_the_targets_table_and_name_every_syncing_option(tmp_path):
    failed = [f"{SYNC_TEST}[skip_nonfinite]", f"{SYNC_TEST}[bf16]", "tests/optim/test_fsdp2.py::x"]
    lightning = read_result("throughput")  # a fit's result, as the train_lightning part holds it
    parts = {"tests": {"tests": "failed", "failed": failed}, "train_lightning": lightning}
    experiment, result = merge(parts, tmp_path)
    rows = {row[0]: row for row in experiment.targets(result)}
    assert rows["zero host syncs per step, every option (GPU)"][1:] == (
        "syncs: test_step_and_statistics_make_no_host_sync_on_cuda[skip_nonfinite], "
        "test_step_and_statistics_make_no_host_sync_on_cuda[bf16]",
        "**missed**",
    )
    assert rows["ResNet-18 Lightning fit (GPU): O2NC / SGDM (factory) ≥ 0.99"][2] == "met"
    text, table = render_section(experiment, tmp_path, tmp_path / "RESULTS.md")
    assert "Part `step` did not finish" in text and "| O2NC | 1534 | 1571 ± 128 |" in text
    assert ("GPU check", *rows["zero host syncs per step, every option (GPU)"]) in table
    assert "tests/optim/test_fsdp2.py::x" in text  # every failed test is named in the section


def test_merging_a_folder_that_does_not_exist_says_which_and_how_to_fill_it(tmp_path):
    with pytest.raises(ValueError, match=r"no folder .*missing; OUT=.* bash .*gpu_check.sh"):
        get("gpu_check").run({"parts": str(tmp_path / "missing"), "dry_run": False}, tmp_path)


@pytest.mark.slow
def test_the_dry_run_runs_every_part_of_the_script_and_never_touches_the_committed_results():
    committed = committed_files()
    experiment = get("gpu_check")
    result = read_result("gpu_check", run_experiment(experiment, quick=True).parent)
    assert committed_files() == committed
    parts = result["parts"]
    assert sorted(parts) == ["sharded", "step", "tests", "train_lightning", "transformer"]
    assert parts["tests"]["tests"] == "collected" and parts["tests"]["failed"] == []
    for name, largest in parts["sharded"]["largest_difference"].items():
        assert largest["weights"] < 1e-5 and largest["x_bar"] < 1e-5, name  # sharded = unsharded
    assert parts["sharded"]["step"]["AdamW"]["ratio"] == 1.0
    assert parts["step"]["settings"]["device"] == "cpu"
    assert len(parts["train_lightning"]["ratios"]) == 4
    runs = parts["transformer"]["runs"]  # the GPU size is for CUDA; a dry run is tiny
    assert [(run["arm"], run["steps"]) for run in runs] == [("adamw", 2), ("o2nc_adamw", 2)]
    text = experiment.render(result)
    assert "did not finish" not in text and "### Step time on CUDA" in text
