"""sweep_scaling on tiny settings: every arm (the bare loop included) runs as its own processes and
is timed from its own study, the dense arm is the demo sweep at the train config's logging
interval, and the Markdown and targets come from the JSON alone. No time is asserted."""

from __future__ import annotations

import json

import pytest
import yaml

from benchmarks.experiments import get
from benchmarks.experiments.sweep_scaling import DEMO, render, targets
from benchmarks.harness import RESULTS_DIR, RESULTS_PATH, run_experiment, work_dir


def _committed_files() -> dict:
    return {p: p.read_bytes() for p in RESULTS_DIR.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_a_quick_run_times_every_arm_from_its_study_and_leaves_committed_results_alone():
    committed = _committed_files()
    tiny = {"overhead": [2, 1, 1], "scaling": [2, 1], "pruning": [3, 1]}
    path = run_experiment(get("sweep_scaling"), quick=True, overrides=tiny)
    assert _committed_files() == committed and not path.is_relative_to(RESULTS_DIR)

    result = json.loads(path.read_text())
    (round_,) = result["overhead"]["rounds"]
    assert round_["ratio"] == pytest.approx(round_["o2nc_median_s"] / round_["bare_median_s"])
    assert result["overhead"]["ratio_median"] == round_["ratio"] > 0
    one, two = result["workers"]["one"], result["workers"]["two"]
    assert (one["workers"], two["workers"]) == (1, 2)
    for sweep in (one, two, result["pruning"]["pruned"], result["pruning"]["unpruned"]):
        assert sweep["trials"] == sweep["distinct"] >= 2 and sweep["duplicates_skipped"] == 0
        assert 0 < sweep["span_s"] < sweep["wall_s"] and all(s > 0 for s in sweep["trial_s"])
        assert 0 < sweep["best"] <= 1 and sweep["best"] == sweep["best_curve"][-1][1]
        assert [at for at, _ in sweep["best_curve"]] == sorted(at for at, _ in sweep["best_curve"])
    assert result["pruning"]["unpruned"]["epochs"] == 3  # 3 trials x 1 epoch, none pruned

    train = yaml.safe_load((DEMO.parent / yaml.safe_load(DEMO.read_text())["train_config"]).open())
    interval = train["trainer"]["log_every_n_steps"]
    assert result["overhead"]["dense_log_every_n_steps"] == interval
    folder = work_dir() / "quick" / "sweep_scaling"
    demo, dense = (
        yaml.safe_load((folder / f"overhead_{arm}_0.yaml").read_text())
        for arm in ("o2nc", "o2nc_dense")
    )
    assert demo["overrides"]["trainer.log_every_n_steps"] != interval
    assert dense["overrides"] == {**demo["overrides"], "trainer.log_every_n_steps": interval}
    assert demo["sampler"] == {"name": "random"} and demo["pruner"] == {"name": "none"}
    assert "| 0 | " in render(result) and len(targets(result)) == 2


def _sweep(label: str, workers: int, distinct: int) -> dict:
    return {
        **{"label": label, "workers": workers, "trials": 2, "distinct": distinct},
        **{"span_s": 4.0, "wall_s": 6.0, "epochs": 3, "best": 0.9, "trial_s": [1.0, 2.0]},
        "best_curve": [[1.0, 0.8], [3.0, 0.9]],
    }


def test_the_section_and_its_targets_come_from_the_json_alone():
    result = {
        "env": {"CPU": "Some CPU, 2 usable cores"},
        "overhead": {
            **{"trials": 2, "epochs": 1, "dense_log_every_n_steps": 5, "dense_ratio_median": 1.8},
            **{"ratio_median": 1.5, "ratio_min": 1.5, "ratio_max": 1.5},
            "rounds": [
                {"o2nc_median_s": 3.0, "bare_median_s": 2.0, "ratio": 1.5, "load_1min": 0.5}
                | {"o2nc_dense_median_s": 3.6, "dense_ratio": 1.8}
            ],
        },
        "workers": {"one": _sweep("workers_1", 1, 2), "two": _sweep("workers_2", 2, 1)},
        "pruning": {"pruned": _sweep("pruned", 1, 2), "unpruned": _sweep("unpruned", 1, 2)},
    }
    text = render(json.loads(json.dumps(result)))
    assert "on 2 CPU cores" in text and "**1.50×**" in text and "**1.80×**" in text
    assert "| 0 | 3.000 | 2.000 | 1.50× | 3.600 | 1.80× | 0.5 |" in text
    assert "| workers_2 | 2 | 2 | 1 | 4.0 | 6.0 | 1800 | 900 | 3 | 0.9000 |" in text
    assert "`log_every_n_steps: 5`" in text and "within the first 4.0 s: 0.9000" in text
    verdicts = [verdict for _, _, verdict in targets(result)]
    assert verdicts == ["met", "**missed**"]  # 1.5x is within target; a repeat is not


def test_the_committed_result_renders_its_section_of_results_md():
    result = json.loads((RESULTS_DIR / "sweep_scaling.json").read_text())
    assert render(result) in RESULTS_PATH.read_text()
