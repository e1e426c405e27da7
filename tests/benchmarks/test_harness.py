"""The harness on its own: the runner, where results go, what they record, the timing rounds, the
job cache, and RESULTS.md as a function of the committed JSON. No test asserts a time."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys

import pytest

from benchmarks import harness, render, timing
from benchmarks.__main__ import main
from benchmarks.experiments import SECTIONS, every, get
from benchmarks.harness import RESULTS_DIR, RESULTS_PATH, Experiment, read_result, write_result


def committed_files() -> dict:
    """Every file under benchmarks/results, sub-folders (saved studies) included."""
    return {p: p.read_bytes() for p in RESULTS_DIR.rglob("*") if p.is_file()}


def counting_experiment(calls: list) -> Experiment:
    def run(settings, work):
        calls.append((settings, work))
        return {"value": settings["size"] * 2.0}

    return Experiment(
        name="step_overhead",  # a registered name: its committed JSON must stay untouched
        title="t",
        workload="w",
        arms=("a",),
        measurement="m",
        run=run,
        render=lambda result: f"value {result['value']}",
        settings={"size": 10},
        quick={"size": 1},
    )


def test_a_quick_run_writes_only_under_the_work_folder_and_records_its_environment(tmp_path):
    before, calls = committed_files(), []
    path = harness.run_experiment(counting_experiment(calls), quick=True, overrides={})
    assert committed_files() == before
    assert path == tmp_path / "work" / "quick" / "results" / "step_overhead.json"
    result = json.loads(path.read_text())
    assert result["value"] == 2.0 and result["settings"] == {"size": 1}
    assert result["command"] == "python -m benchmarks run step_overhead --quick"
    assert {"torch", "CPU", "threads", "commit", "date (UTC)"} <= set(result["env"])
    assert result["env"]["commit"]  # the repository's HEAD, read at run time
    assert calls[0][1] == tmp_path / "work" / "quick" / "step_overhead"


def test_a_setting_overrides_the_full_ones_and_an_unknown_one_is_refused(tmp_path):
    calls = []
    experiment = counting_experiment(calls)
    path = harness.run_experiment(experiment, overrides={"size": 3}, results_dir=tmp_path)
    assert json.loads(path.read_text())["command"] == (
        "python -m benchmarks run step_overhead --set size=3"
    )
    with pytest.raises(ValueError, match=r"^step_overhead: unknown setting sise; valid: size$"):
        experiment.resolve(overrides={"sise": 3})
    with pytest.raises(ValueError, match=r"^step_overhead: setting size takes int, got 'big'$"):
        experiment.resolve(overrides={"size": "big"})


def test_the_runner_refuses_an_unknown_experiment_or_setting_in_one_line_before_running():
    with pytest.raises(
        SystemExit, match=r"unknown experiment 'step_overheat'; valid: tuned_parity"
    ):
        main(["run", "step_overheat"])
    before = committed_files()
    with pytest.raises(SystemExit, match=r"step_overhead: unknown setting bogus"):
        main(["run", "step_overhead", "--quick", "--set", "bogus=1"])
    with pytest.raises(SystemExit, match=r"--set 'rounds': expected KEY=VALUE"):
        main(["run", "step_overhead", "--set", "rounds"])
    assert committed_files() == before


def test_list_shows_every_experiment_with_its_workload_arms_and_measurement(capsys):
    main(["list"])
    out = capsys.readouterr().out
    for experiment in every():
        assert f"{experiment.name}: {experiment.title}" in out
        assert experiment.workload and experiment.arms and experiment.measurement
    assert [e.name for e in every()] == list(SECTIONS)


def test_time_arms_alternates_short_blocks_and_takes_ratios_within_each_round():
    visits: list[str] = []
    arms = {name: (lambda name=name: visits.append(name)) for name in ("a", "b", "c")}
    measurements = timing.time_arms(arms, rounds=4, block_seconds=0.002, threads=1, seed=1)
    assert {name: len(blocks) for name, blocks in measurements.items()} == dict.fromkeys("abc", 4)
    assert all(m.task_spec.num_threads == 1 for blocks in measurements.values() for m in blocks)
    first_of_each = sorted(visits.index(name) for name in "abc")
    last_of_each = sorted(len(visits) - 1 - visits[::-1].index(name) for name in "abc")
    assert first_of_each[-1] < last_of_each[0]  # every arm ran before any arm finished
    rows = timing.summarize(measurements, {"a": "a", "b": "a", "c": "a"})
    assert rows["a"]["ratio"] == 1.0 and rows["a"]["ratio_q1"] == rows["a"]["ratio_q3"] == 1.0
    for name in "bc":
        per_round = [
            b.median / a.median for a, b in zip(measurements["a"], measurements[name], strict=True)
        ]
        assert rows[name]["ratio"] == pytest.approx(statistics.median(per_round))
        assert rows[name]["rounds"] == 4 and rows[name]["median_us"] > 0


def _record_call(folder: str, value: int) -> dict:
    """A job that leaves a file per call, so a test can count how often it really ran."""
    marker = os.path.join(folder, f"called-{value}-{os.getpid()}-{len(os.listdir(folder))}")
    open(marker, "w").close()
    return {"value": value * value}


@pytest.mark.parametrize("workers", [0, 2])
def test_run_jobs_keeps_order_and_reads_finished_jobs_back_from_its_cache(tmp_path, workers):
    calls = tmp_path / "calls"
    calls.mkdir()
    tasks = [(str(calls), value) for value in (3, 1, 2)]
    first = harness.run_jobs(_record_call, tasks, workers, cache=tmp_path / "cache")
    assert [r["value"] for r in first] == [9, 1, 4]
    assert len(os.listdir(calls)) == 3
    again = harness.run_jobs(_record_call, [*tasks, (str(calls), 5)], workers, tmp_path / "cache")
    assert [r["value"] for r in again] == [9, 1, 4, 25]
    assert len(os.listdir(calls)) == 4  # only the new job ran


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
    experiment = get("throughput")
    text, _ = render.render_section(experiment, tmp_path, tmp_path / "RESULTS.md")
    assert note in text
    assert "with this harness: `python -m benchmarks run throughput`" in text
    write_result("throughput", old, tmp_path)  # written now: uniform is the weighted one
    text, _ = render.render_section(experiment, tmp_path, tmp_path / "RESULTS.md")
    assert note not in text


def test_every_section_renders_from_its_file_or_says_how_to_get_it(tmp_path):
    text = render.render(tmp_path, tmp_path / "RESULTS.md")
    for number, experiment in enumerate(every(), start=1):
        assert f"## {number}. {experiment.title}" in text
        how = experiment.command or f"python -m benchmarks run {experiment.name}"
        assert f"`{how}` writes `{experiment.name}.json`" in text
    (tmp_path / "throughput.json").write_text("{}")  # a broken file breaks only its section
    text = render.render(tmp_path, tmp_path / "RESULTS.md")
    assert "**Could not render** `throughput.json`" in text
    assert text.count("**Not run yet.**") == len(SECTIONS) - 1


def test_the_committed_results_md_is_exactly_what_the_committed_results_render_to(tmp_path):
    """Every figure of RESULTS.md comes from the JSON through this harness, none typed by hand."""
    text = render.render(RESULTS_DIR, tmp_path / "RESULTS.md")
    text = text.replace(f"]({os.path.relpath(RESULTS_DIR, tmp_path)}/", "](results/")
    assert text == RESULTS_PATH.read_text()
    for experiment in every():
        for figure in (read_result(experiment.name) or {}).get("figures", []):
            assert (RESULTS_DIR / figure).is_file() and f"](results/{figure})" in text


def test_python_m_benchmarks_runs_as_a_command(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", "nothing"],
        capture_output=True,
        text=True,
        cwd=RESULTS_DIR.parent.parent,
    )
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1].startswith(
        "python -m benchmarks run: unknown experiment 'nothing'"
    )
