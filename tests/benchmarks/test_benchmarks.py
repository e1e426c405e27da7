"""The benchmark pipeline, on tiny settings: every section runs and writes what RESULTS.md promises.

No test asserts a time: timings depend on the machine and its load.
"""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import cifar10_resnet18, gpu_check, run_all, step_overhead
from benchmarks.report import RESULTS_PATH, read_block, write_block

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_plan(output):
    return run_all.Plan(
        quick=True,
        output=output,
        step_rounds=1,
        throughput={"dataset": "digits", "batches": 2, "warmup_batches": 1, "repeats": 1},
        parity={
            "dataset": "digits",
            "epochs": 1,
            "limit_train_batches": 0,
            "batch_size": 64,
            "val_batches": 2,
            "log_every_n_steps": 2,
            "seeds": [0, 1],
            "workers": 0,
        },
        cifar_arms=["o2nc"],
        cifar_limit_train_batches=1,
    )


@pytest.mark.slow
def test_quick_pipeline_writes_every_section_its_targets_and_modest_pngs(tmp_path):
    output = tmp_path / "RESULTS.md"
    plan = tiny_plan(output)
    text = run_all.run(plan, only={"step", "throughput", "parity", "gpu"})  # cifar: its own test

    assert plan.failures == [], text
    for heading in (
        "## Machine",
        "## Targets at a glance",
        "## 1. Optimizer step overhead",
        "## 2. End-to-end throughput",
        "## 3. Accuracy parity on real data",
        "## 4. Stationarity panel",
        "## 7. GPU check",
    ):
        assert heading in text
    assert "FAILED" not in text
    sections = {row[0] for row in plan.targets}
    assert {"step overhead (CPU)", "throughput (CPU)", "accuracy parity (digits)"} <= sections
    for name in ("parity_digits.png", "stationarity_digits.png"):
        png = tmp_path / name
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert png.stat().st_size < 300_000
        assert f"]({name})" in text
    assert "Command: `python -m benchmarks." in text

    # --reuse re-renders from the saved raw results: the same measured rows, nothing rerun
    again = tiny_plan(output)
    again.reuse = True
    rerendered = run_all.run(again, only={"step", "throughput", "parity", "gpu"})
    measured_rows = [line for line in text.splitlines() if line.startswith("| O2NC")]
    assert measured_rows and all(line in rerendered for line in measured_rows)
    assert "re-rendered (`--reuse`)" in rerendered
    assert "Not run yet" in read_block(gpu_check.BLOCK, output)


def test_step_overhead_counts_one_buffer_per_parameter_and_doubles_state_with_average():
    result = step_overhead.run("cpu", rounds=1, steps_per_block=1, warmup_steps=1, profile=False)
    rows = {row["arm"]: row for row in result["rows"]}
    assert rows["O2NC defaults (for-loop)"]["buffers_per_param"] == [1]
    assert rows["O2NC defaults (for-loop)"]["state_ratio"] == 1.0
    assert rows["O2NC average=True"]["buffers_per_param"] == [2]
    assert rows["O2NC average=True"]["state_ratio"] == 2.0
    assert result["num_params"] == sum(p.numel() for p in step_overhead.resnet18_parameters("cpu"))
    assert rows[result["fastest_sgd"]]["ratio"] == 1.0
    assert all(row["bandwidth_gbs"] > 0 for row in rows.values())
    verdicts = {target: ok for target, _, _, ok in step_overhead.targets(result)}
    assert verdicts["exactly one state buffer per parameter without averaging"] is True


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_every_o2nc_option_steps_without_a_host_sync_on_cuda():
    results = step_overhead.check_no_host_sync(torch.device("cuda"))
    assert results and all(value == "ok" for value in results.values()), results


@pytest.mark.slow
def test_cifar_pipeline_runs_on_a_tiny_cifar_format_fixture_and_keeps_one_row_per_run(tmp_path):
    results = tmp_path / "check.md"
    args = ["--fixture", "--results", str(results), "--arms", "o2nc", "--limit-train-batches", "1"]
    (first,) = cifar10_resnet18.main(args)
    assert first["arm"] == "o2nc" and first["epochs"] == 1
    assert 0.0 <= first["test_acc"] <= 1.0 and first["test_acc_avg"] is not None
    cifar10_resnet18.add_rows([dict(first, test_acc=first["test_acc"])], results)
    assert len(cifar10_resnet18.read_rows(results)) == 1  # the same (arm, seed, epochs) replaces
    cifar10_resnet18.add_rows([dict(first, seed=1)], results)
    assert len(cifar10_resnet18.read_rows(results)) == 2


def test_without_real_runs_the_cifar_block_says_so_instead_of_showing_numbers():
    text = cifar10_resnet18.block_markdown([])
    assert "No CIFAR-10 rows yet" in text and "%" not in text


def test_the_fixture_never_writes_into_results_md():
    with pytest.raises(SystemExit):
        cifar10_resnet18.main(["--fixture", "--results", str(RESULTS_PATH)])


def test_write_block_replaces_its_own_block_and_keeps_the_rest(tmp_path):
    path = tmp_path / "R.md"
    path.write_text("# title\n\nkept text\n")
    write_block("one", "first", path, heading="## One")
    write_block("two", "second", path)
    write_block("one", "replaced", path, heading="## One")
    text = path.read_text()
    assert read_block("one", path) == "replaced"
    assert read_block("two", path) == "second"
    assert text.count("## One") == 1 and "kept text" in text and "first" not in text


def test_a_rerun_keeps_the_gpu_section_that_was_merged_into_the_file(tmp_path):
    output = tmp_path / "RESULTS.md"
    (tmp_path / "out").mkdir()
    gpu_check.merge(tmp_path / "out", output)
    merged = read_block(gpu_check.BLOCK, output)
    assert "Part `step` did not finish" in merged  # an empty output folder says what is missing
    run_all.run(tiny_plan(output), only={"gpu"})
    assert read_block(gpu_check.BLOCK, output) == merged


def test_merged_gpu_results_reach_the_targets_table_and_name_every_syncing_option(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    parts = {
        "sync": {"sync_check": {"defaults": "ok", "skip_nonfinite=True": "RuntimeError: sync [x]"}},
        "train_plain": {
            "batch_size": 128,
            "steps": 1,
            "rounds": 2,
            "samples_per_second": {"O2NC": [2.0, 2.0], "SGDM (factory)": [2.0, 2.1]},
            "ratios": {"O2NC / SGDM (factory)": [1.0, 0.95]},
            "whole_step_sync_check": "ok",
        },
    }
    for name, part in parts.items():
        (out / f"part_{name}.json").write_text(json.dumps(part))
    output = tmp_path / "RESULTS.md"
    gpu_check.merge(out, output)
    plan = tiny_plan(output)
    text = run_all.run(plan, only={"gpu"})
    rows = {row[1]: row for row in plan.targets}
    assert rows["zero host syncs per step, every option"][2:] == (
        "syncs: skip_nonfinite=True",
        "**missed**",
    )
    assert "Part `step` did not finish" in text
    assert any("O2NC / SGDM (factory) ≥ 0.99" in target for target in rows)
