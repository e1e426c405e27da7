"""The benchmark pipeline, on tiny settings: every benchmark stores its JSON and RESULTS.md is
rendered from those files alone.

No test asserts a time: timings depend on the machine and its load.
"""

from __future__ import annotations

import json
import math
import shlex

import pytest

from benchmarks import cifar10_resnet18, gpu_report, render, run_all, step_overhead
from benchmarks.results import RESULTS_DIR, read_result, write_result

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

TINY = {
    "step_overhead": shlex.split("--device cpu --rounds 1 --steps-per-block 1 --models mlp"),
    "throughput": shlex.split("--dataset digits --batches 2 --warmup-batches 1 --repeats 1"),
    "accuracy_parity": shlex.split(
        "--dataset digits --epochs 1 --limit-train-batches 0 --batch-size 64 --val-batches 2 "
        "--log-every-n-steps 2 --seeds 0 1 --workers 0"
    ),
}


def heading(name: str) -> str:
    number, section = next((i, s) for i, s in enumerate(render.SECTIONS, start=1) if s.name == name)
    return f"## {number}. {section.title}"


@pytest.mark.slow
def test_quick_pipeline_writes_every_section_its_targets_and_modest_pngs(tmp_path):
    results = tmp_path / "results"
    for name, args in TINY.items():
        assert run_all.run_benchmark(name, args, results), name
    output = tmp_path / "RESULTS.md"
    text = render.render(results, output)

    for name in TINY:
        assert heading(name) in text
        assert read_result(name, results) is not None
    assert "## Targets at a glance" in text
    assert "Could not render" not in text
    table = text.split("## Targets at a glance", 1)[1].split("\n## ", 1)[0]
    for name in TINY:
        assert (
            f"| {render.SECTIONS[[s.name for s in render.SECTIONS].index(name)].title} |" in table
        )
    for png in ("parity_digits.png", "stationarity_digits.png"):
        path = results / png
        assert path.read_bytes()[:8] == PNG_MAGIC
        assert path.stat().st_size < 300_000
        assert f"](results/{png})" in text
    assert "Command: `python -m benchmarks." in text

    # RESULTS.md is a function of the JSON files: rendering again gives the same measured rows
    rerendered = render.render(results, tmp_path / "again.md")
    measured_rows = [line for line in text.splitlines() if line.startswith("| O2NC")]
    assert measured_rows and all(line in rerendered for line in measured_rows)
    assert "**Not run yet.**" in rerendered.split(heading("gpu_check"), 1)[1]


def test_step_overhead_counts_one_buffer_per_parameter_and_doubles_state_with_average():
    result = step_overhead.run("cpu", rounds=1, steps_per_block=1, warmup_steps=1, models=("mlp",))
    summary = result["models"]["mlp"]
    rows = {row["arm"]: row for row in summary["rows"]}
    assert rows["O2NC defaults"]["buffers_per_param"] == [1]
    assert rows["O2NC defaults"]["state_ratio"] == 1.0
    assert rows["O2NC average=True"]["buffers_per_param"] == [2]
    assert rows["O2NC average=True"]["state_ratio"] == 2.0
    assert summary["num_params"] == sum(p.numel() for p in step_overhead.model_parameters("mlp"))
    assert rows[summary["fastest_sgd"]]["ratio"] == 1.0
    assert all(row["median_us"] > 0 for row in rows.values())


@pytest.mark.slow
def test_cifar_pipeline_runs_on_a_tiny_cifar_format_fixture_and_keeps_one_row_per_run(tmp_path):
    results = tmp_path / "check.json"
    args = ["--fixture", "--results", str(results), "--arms", "o2nc", "--limit-train-batches", "1"]
    (first,) = cifar10_resnet18.main(args)
    assert first["arm"] == "o2nc" and first["epochs"] == 1
    assert 0.0 <= first["test_acc"] <= 1.0 and first["test_acc_avg"] is not None
    cifar10_resnet18.add_rows([dict(first, test_acc=first["test_acc"])], results)
    assert len(cifar10_resnet18.read_rows(results)) == 1  # the same (arm, seed, epochs) replaces
    cifar10_resnet18.add_rows([dict(first, seed=1)], results)
    assert len(cifar10_resnet18.read_rows(results)) == 2


def test_without_real_runs_the_cifar_section_says_so_instead_of_showing_numbers():
    text = cifar10_resnet18.to_markdown({"rows": []})
    assert "No CIFAR-10 rows yet" in text and "%" not in text


def test_the_fixture_never_writes_into_the_stored_results():
    with pytest.raises(SystemExit):
        cifar10_resnet18.main(["--fixture", "--results", str(RESULTS_DIR / "x.json")])


def test_write_result_replaces_its_own_file_and_keeps_the_others(tmp_path):
    write_result("one", {"value": 1.0}, tmp_path)
    write_result("two", {"value": 2.0}, tmp_path)
    write_result("one", {"value": math.nan, "list": [math.inf, 3.0]}, tmp_path)
    marker = {"uniform_scaling": "importance-weighted"}
    assert read_result("one", tmp_path) == {"value": None, "list": [None, 3.0], **marker}
    assert read_result("two", tmp_path) == {"value": 2.0, **marker}
    assert read_result("three", tmp_path) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.json", "two.json"]


def test_a_section_whose_uniform_figures_predate_the_importance_weight_says_so(tmp_path):
    old = {"arms": {"o2nc_uniform": {"acc": 0.5}}, "command": "python -m benchmarks.throughput"}
    (tmp_path / "throughput.json").write_text(json.dumps(old))  # written before the marker
    note = "Measured before uniform scaling gained the authors' importance weight"
    section = next(s for s in render.SECTIONS if s.name == "throughput")
    text, _ = render.render_section(section, tmp_path, tmp_path / "RESULTS.md")
    assert note in text
    write_result("throughput", old, tmp_path)  # written now: uniform is the weighted one
    text, _ = render.render_section(section, tmp_path, tmp_path / "RESULTS.md")
    assert note not in text


def test_every_registered_section_renders_from_its_file_or_says_how_to_get_it(tmp_path):
    text = render.render(tmp_path, tmp_path / "RESULTS.md")
    for section in render.SECTIONS:
        assert heading(section.name) in text
        assert f"`{section.command}` writes `results/{section.name}.json`" in text
    (tmp_path / "throughput.json").write_text("{}")  # a broken file breaks only its section
    text = render.render(tmp_path, tmp_path / "RESULTS.md")
    assert "**Could not render** `results/throughput.json`" in text
    assert text.count("**Not run yet.**") == len(render.SECTIONS) - 1


def test_a_rerender_keeps_the_gpu_section_that_was_merged(tmp_path):
    (tmp_path / "out").mkdir()
    gpu_report.merge(tmp_path / "out", tmp_path / "results")
    first = render.render(tmp_path / "results", tmp_path / "RESULTS.md")
    gpu = first.split(heading("gpu_check"), 1)[1]
    assert "Part `step` did not finish" in gpu  # an empty output folder says what is missing
    again = render.render(tmp_path / "results", tmp_path / "RESULTS.md")
    assert again.split(heading("gpu_check"), 1)[1] == gpu


def test_merged_gpu_results_reach_the_targets_table_and_name_every_syncing_option(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    parts = {
        "sync": {"tests": "failed", "failed": ["test_step[skip_nonfinite=True]"], "output": ""},
        "train_plain": {
            "batch_size": 128,
            "steps": 1,
            "rounds": 2,
            "samples_per_second": {"O2NC": [2.0, 2.0], "SGDM (factory)": [2.0, 2.1]},
            "ratios": {"O2NC / SGDM (factory)": [1.0, 0.95]},
        },
    }
    for name, part in parts.items():
        (out / f"part_{name}.json").write_text(json.dumps(part))
    gpu_report.merge(out, tmp_path)
    rows = {row[0]: row for row in gpu_report.targets(read_result("gpu_check", tmp_path))}
    assert rows["zero host syncs per step, every option (GPU)"][1:] == (
        "syncs: test_step[skip_nonfinite=True]",
        "**missed**",
    )
    text = render.render(tmp_path, tmp_path / "RESULTS.md")
    assert "Part `step` did not finish" in text
    assert any("O2NC / SGDM (factory) ≥ 0.99" in target for target in rows)
    assert "| GPU check | zero host syncs per step, every option (GPU) |" in text
