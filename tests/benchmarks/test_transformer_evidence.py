"""The transformer comparison on a tiny text: every arm is tuned and seeded, the JSON has the
issue's shape, RESULTS.md's section renders from it, and a rerun trains nothing again."""

from __future__ import annotations

import json
import random

import pytest

from benchmarks import transformer_evidence, transformer_report
from benchmarks.render import SECTIONS, render_section


def _tiny_text(folder):
    folder.mkdir()
    words = [
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
    rng = random.Random(0)
    (folder / "a.txt").write_text(" ".join(rng.choice(words) for _ in range(1500)))
    return folder


@pytest.mark.slow
def test_quick_comparison_stores_counts_losses_at_x_and_x_bar_and_resumes(tmp_path):
    text = _tiny_text(tmp_path / "text")
    out = tmp_path / "results"
    argv = [
        "--quick", "--arms", "adamw", "o2nc_adamw", "--min-trials", "1", "--max-trials", "2",
        "--set", f"data.init_args.path={text}", "--out", str(out),
    ]  # fmt: skip
    transformer_evidence.main(argv)
    result = json.loads((out / "transformer_evidence_quick.json").read_text())
    assert result["steps"] == 4
    assert set(result["arms"]) == {"adamw", "o2nc_adamw"}
    for arm in result["arms"].values():
        assert arm["trials"] >= 1 and arm["completed"] >= 1 and arm["failed"] == 0
        assert {"model.lr", "model.weight_decay", "model.beta2"} <= set(arm["best"])
        assert len(arm["val_loss"]) == 2
        assert set(arm["val_loss_avg"]) == {"0.99", "0.999"}
        assert all(len(v) == 2 for v in arm["val_loss_avg"].values())
        # the optimizer's own x̄ (average_beta 0.99) is the benchmark's 0.99 horizon
        for run in arm["runs"]:
            assert abs(run["val_loss_avg_optimizer"] - run["val_loss_avg"]["0.99"]) < 1e-4
            assert [point[0] for point in run["curve"]] == [2, 4]
    assert {"torch", "CPU", "commit"} <= set(result["machine"])
    assert (out / "transformer_evidence_quick.png").is_file()
    section = next(s for s in SECTIONS if s.name == "transformer_evidence")
    text_md = transformer_report.to_markdown(result)
    assert "`o2nc_adamw` − `adamw`" in text_md and "Welch" in text_md
    assert render_section(section, out, tmp_path / "RESULTS.md")[0].startswith("**Not run yet")

    transformer_evidence.main(argv)  # everything is done: read back, not trained again
    again = json.loads((out / "transformer_evidence_quick.json").read_text())
    assert again["arms"]["adamw"]["val_loss"] == result["arms"]["adamw"]["val_loss"]
    assert again["seconds"] < result["seconds"]


def test_an_interrupted_trial_is_neither_a_trial_nor_a_failure_of_its_arm():
    import optuna

    from lightning_o2nc.sweeps.objective import FAIL_REASON
    from lightning_o2nc.sweeps.signals import INTERRUPTED_BY

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    outcomes = [
        ("complete", {}),
        ("complete", {}),
        ("pruned", {}),
        ("fail", {FAIL_REASON: "non-finite training loss at step 12"}),
        ("fail", {FAIL_REASON: "RuntimeError: out of memory"}),
        ("fail", {INTERRUPTED_BY: "SIGINT", FAIL_REASON: "interrupted by SIGINT"}),
    ]
    for outcome, attrs in outcomes:
        trial = study.ask()
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        state = {"complete": "COMPLETE", "pruned": "PRUNED", "fail": "FAIL"}[outcome]
        study.tell(
            trial,
            1.0 if outcome == "complete" else None,
            state=getattr(optuna.trial.TrialState, state),
        )
    counts = transformer_evidence._counts(study.trials)
    assert counts == {
        "trials": 5,
        "completed": 2,
        "pruned": 1,
        "diverged": 1,
        "failed": 1,
        "interrupted": 1,
    }
