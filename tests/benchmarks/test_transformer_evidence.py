"""The transformer comparison on a tiny text: every arm is tuned and seeded, the JSON has the
issue's shape, the section renders from it, a rerun trains nothing again, and a quick run leaves
benchmarks/results alone."""

from __future__ import annotations

import random

import pytest

from benchmarks.experiments import get
from benchmarks.experiments.transformer_evidence import tune
from benchmarks.harness import RESULTS_DIR, read_result, run_experiment
from benchmarks.studies import STOP_FILE, run_stoppable_jobs, trial_counts

WORDS = [
    "to",
    "be",
    "or",
    "not",
    "that",
    "is",
    "the",
    "question",
    "whether",
    "tis",
    "nobler",
    "in",
    "the",
    "mind",
]


def _tiny_text(folder):
    folder.mkdir()
    rng = random.Random(0)
    (folder / "a.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(1500)))
    return folder


def _committed_bytes():
    return {p: p.read_bytes() for p in sorted(RESULTS_DIR.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_quick_comparison_stores_counts_losses_at_x_and_x_bar_and_resumes(tmp_path):
    committed = _committed_bytes()
    experiment = get("transformer_evidence")
    fixed = {**experiment.quick["fixed"], "data.init_args.path": str(_tiny_text(tmp_path / "t"))}
    overrides = {"arms": ["adamw", "o2nc_adamw"], "min_trials": 1, "max_trials": 2, "fixed": fixed}
    out = tmp_path / "results"
    run_experiment(experiment, quick=True, overrides=overrides, results_dir=out)
    result = read_result("transformer_evidence", out)
    assert result["steps"] == 4
    assert set(result["arms"]) == {"adamw", "o2nc_adamw"}
    for arm in result["arms"].values():
        assert arm["trials"] >= 1 and arm["completed"] >= 1 and arm["failed"] == 0
        assert {"model.lr", "model.weight_decay", "model.beta2"} <= set(arm["best"])
        assert len(arm["val_loss"]) == 2
        assert set(arm["val_loss_avg"]) == {"0.99", "0.999"}
        assert all(len(v) == 2 for v in arm["val_loss_avg"].values())
        # every completed or pruned trial as (η, loss, state); the best among them
        assert len(arm["lr"]) == arm["completed"] + arm["pruned"]
        assert [arm["best"]["model.lr"], arm["best_value"], "COMPLETE"] in arm["lr"]
        assert arm["trial_seconds"] > 0
        # the optimizer's own x̄ (average_beta 0.99) is the benchmark's 0.99 horizon
        for run in arm["runs"]:
            assert abs(run["val_loss_avg_optimizer"] - run["val_loss_avg"]["0.99"]) < 1e-4
            assert [point[0] for point in run["curve"]] == [2, 4]
    assert {"torch", "CPU", "commit"} <= set(result["env"])
    assert (out / "transformer_evidence.png").is_file()
    text = experiment.render(result)
    assert "`o2nc_adamw` − `adamw`" in text and "Welch" in text
    assert "**Does x̄ help?**" in text and "| `adamw` | " in text.split("**How sensitive")[1]

    run_experiment(experiment, quick=True, overrides=overrides, results_dir=out)  # all done
    again = read_result("transformer_evidence", out)
    assert again["arms"]["adamw"]["val_loss"] == result["arms"]["adamw"]["val_loss"]
    assert again["arms"]["adamw"]["trials"] == result["arms"]["adamw"]["trials"]
    assert again["seconds"] < result["seconds"]
    assert _committed_bytes() == committed


def test_an_interrupted_trial_is_neither_a_trial_nor_a_failure_of_its_arm():
    import optuna

    from lightning_o2nc.sweeps.objective import FAIL_REASON
    from lightning_o2nc.sweeps.signals import INTERRUPTED_BY

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    outcomes = [
        ("COMPLETE", {}),
        ("COMPLETE", {}),
        ("PRUNED", {}),
        ("FAIL", {FAIL_REASON: "non-finite training loss at step 12"}),
        ("FAIL", {FAIL_REASON: "RuntimeError: out of memory"}),
        ("FAIL", {INTERRUPTED_BY: "SIGINT", FAIL_REASON: "interrupted by SIGINT"}),
    ]
    for state, attrs in outcomes:
        trial = study.ask()
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        value = 1.0 if state == "COMPLETE" else None
        study.tell(trial, value, state=getattr(optuna.trial.TrialState, state))
    # a worker that died mid-trial: failed for its stale heartbeat, retried by Optuna, completed
    died = study.ask()
    study.tell(died, state=optuna.trial.TrialState.FAIL)
    optuna.storages.RetryFailedTrialCallback(max_retry=1)(study, study.trials[died.number])
    study.tell(study.ask(), 1.0)
    assert trial_counts(study.trials) == {
        "trials": 6,
        "completed": 3,
        "pruned": 1,
        "diverged": 1,
        "failed": 1,
        "interrupted": 2,
    }


def test_a_stop_request_ends_the_comparison_and_starts_no_further_study(tmp_path):
    settings = get("transformer_evidence").settings
    (tmp_path / STOP_FILE).touch()  # what a SIGINT or SIGTERM during the comparison leaves
    assert tune(settings, tmp_path, "adamw") == {"arm": "adamw", "stopped": True}
    assert [p.name for p in tmp_path.iterdir()] == [STOP_FILE]  # no study was created
    started = []

    def job(arm):
        started.append(arm)
        return {"arm": arm, "stopped": arm == "adamw", "interrupted": 2}  # 2: its study's count

    with pytest.raises(KeyboardInterrupt):  # the runner exits with 130, keeping what finished
        run_stoppable_jobs(job, [("adamw",), ("sgdm",)], 0, tmp_path)
    assert started == ["adamw"]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_study_that_holds_interrupted_trials_does_not_stop_the_comparison(tmp_path, workers):
    """An arm's counts include its study's interrupted trials (queued again by an earlier stop);
    that count is not a stop request: every arm runs and the comparison goes on."""
    tasks = [({"arm": arm, "trials": 16, "interrupted": 3},) for arm in ("adamw", "sgdm")]
    try:
        results = run_stoppable_jobs(dict, tasks, workers, tmp_path)
    except KeyboardInterrupt:
        pytest.fail("a study's count of interrupted trials was taken for a stop request")
    assert results == [task[0] for task in tasks]


def test_the_committed_comparison_holds_every_arm_tuned_by_the_rule_with_five_seeds():
    experiment = get("transformer_evidence")
    result = read_result("transformer_evidence")
    assert result["steps"] == 2000 and set(result["arms"]) == set(experiment.arms)
    for name, arm in result["arms"].items():
        assert arm["trials"] >= 16 and arm["completed"] >= 8 and arm["failed"] == 0, name
        assert len(arm["val_loss"]) == 5 and set(arm["val_loss_avg"]) == {"0.99", "0.999"}
        assert all(len(losses) == 5 for losses in arm["val_loss_avg"].values())
    text = experiment.render(result)
    assert "| `o2nc_adamw` − `adamw` | +0.034 ± 0.008 | t = 4.53, p = 0.003 |" in text


def test_the_eta_table_keeps_the_completed_trials_near_the_best_and_skips_arms_without_any():
    from benchmarks.studies import lr_section

    points = {
        "a": [[1e-3, 1.80, "COMPLETE"], [2e-3, 1.76, "COMPLETE"], [4e-3, 1.82, "COMPLETE"]],
        "pruned only": [[8e-3, 2.5, "PRUNED"]],
        "stored without trials": None,
    }
    points["a"].append([8e-3, 2.5, "PRUNED"])  # tried, but not a completed trial
    intro, table = lr_section(points, 0.05, "0.05 nats")
    assert "**How sensitive" in intro
    assert table.splitlines()[2:] == ["| a | 0.001–0.008 | 0.002 | 0.001–0.002 (2 of 3) |"]
    assert lr_section({"none": None}, 0.05, "0.05 nats") == []
