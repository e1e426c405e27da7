"""sweep_scaling on tiny settings: the bare arm runs as its own process, every figure is read back
from the study, and the Markdown and targets come from the raw JSON alone. No time is asserted."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from benchmarks import sweep_scaling


@pytest.mark.slow
def test_the_bare_arm_is_timed_from_its_own_study_and_renders_from_json_alone():
    bare = sweep_scaling._run_arm("bare", sweep_scaling._bare_command(2, 1), 1, "bare")
    assert (bare.trials, bare.distinct, bare.duplicates_skipped, bare.workers) == (2, 2, 0, 1)
    assert len(bare.trial_s) == 2 and all(s > 0 for s in bare.trial_s)
    assert 0 < bare.best <= 1 and bare.best == bare.best_curve[-1][1]
    assert [at for at, _ in bare.best_curve] == sorted(at for at, _ in bare.best_curve)
    assert bare.best_within(bare.span_s) == bare.best

    as_dict = asdict(bare)
    results = json.loads(
        json.dumps(
            {
                "quick": True,
                "cpus": 2,
                "overhead": {
                    "trials": 2,
                    "epochs": 1,
                    "rounds": [{"o2nc_median_s": 3.0, "bare_median_s": 2.0, "ratio": 1.5}],
                    "ratio_median": 1.5,
                    "ratio_min": 1.5,
                    "ratio_max": 1.5,
                },
                "workers": {"one": as_dict, "two": {**as_dict, "workers": 2, "distinct": 1}},
                "pruning": {"pruned": as_dict, "unpruned": as_dict},
            }
        )
    )
    text = sweep_scaling.to_markdown(results)
    assert "**1.50×**" in text and "| bare | 2 | 2 | 1 |" in text
    verdicts = [verdict for _, _, verdict in sweep_scaling.targets(results)]
    assert verdicts == ["met", "**missed**"]  # 1.5x is within target; a repeat is not

    dense = {
        **results["overhead"],
        "dense_log_every_n_steps": 5,
        "rounds": [
            {
                "o2nc_median_s": 3.0,
                "o2nc_dense_median_s": 3.6,
                "bare_median_s": 2.0,
                "ratio": 1.5,
                "dense_ratio": 1.8,
                "load_1min": 0.5,
            }
        ],
        "dense_ratio_median": 1.8,
    }
    text = sweep_scaling.to_markdown({**results, "overhead": dense})
    assert "| 0 | 3.000 | 2.000 | 1.50× | 3.600 | 1.80× | 0.5 |" in text
    assert "`log_every_n_steps: 5`" in text and "**1.80×**" in text


def test_the_dense_arm_is_the_demo_sweep_at_the_train_configs_logging_interval():
    import yaml

    interval = sweep_scaling._train_config_logging_interval()
    demo = yaml.safe_load(sweep_scaling.DEMO.read_text())
    assert demo["overrides"]["trainer.log_every_n_steps"] != interval
    path = sweep_scaling._sweep_file(
        "dense_test", 2, 3, random=True, overrides={"trainer.log_every_n_steps": interval}
    )
    spec = yaml.safe_load(path.read_text())
    assert spec["overrides"] == {
        **demo["overrides"],
        "trainer.max_epochs": 3,
        "trainer.log_every_n_steps": interval,
    }
    assert spec["sampler"] == {"name": "random"} and spec["pruner"] == {"name": "none"}
