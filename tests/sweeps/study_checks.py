"""What several workers on one study must leave behind, checked the same way by every such test."""

from __future__ import annotations

from collections.abc import Sequence

from optuna.trial import FrozenTrial, TrialState


def counted_trials(trials: Sequence[FrozenTrial], n_trials: int) -> list[FrozenTrial]:
    """The ``n_trials`` finished trials; every other trial must have stepped aside untrained.

    Two workers that start a trial at the same moment when one is missing both start one; the
    later trial then steps aside (``lightning_o2nc.sweeps.study.StudyFull``): failed, not trained, not counted.
    """
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == n_trials, [(t.number, t.state.name) for t in trials]
    for trial in trials:
        if trial in finished:
            continue
        assert trial.state == TrialState.FAIL, trial
        assert "finished or running before trial" in trial.system_attrs["fail_reason"], trial
        assert "tensorboard_run" not in trial.user_attrs, trial  # never trained
    return finished
