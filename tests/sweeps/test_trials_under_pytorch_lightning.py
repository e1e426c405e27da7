"""A sweep whose trials run under the standalone ``pytorch_lightning`` package."""

from __future__ import annotations

import pytest
import pytorch_lightning
from optuna.trial import TrialState
from tbparse import SummaryReader

import lightning_o2nc.lightning.cli as cli
from lightning_o2nc.lightning.packages import ENV_VAR
from lightning_o2nc.sweeps.config import load_sweep_config
from lightning_o2nc.sweeps.run import run_sweep

pytestmark = pytest.mark.slow


def test_trials_run_under_the_package_of_the_environment_with_pruning_and_callbacks(
    tmp_path, monkeypatch, write_yaml, train_config, default_sweep
):
    monkeypatch.setenv(ENV_VAR, "pytorch_lightning")
    trainers = []
    build_run = cli.build_run

    def recording_build_run(*args, **kwargs):
        run = build_run(*args, **kwargs)
        trainers.append(run[0])
        return run

    monkeypatch.setattr(cli, "build_run", recording_build_run)
    sweep = load_sweep_config(write_yaml("sweep.yaml", default_sweep(train_config, n_trials=2)))
    outcome = run_sweep(sweep, logdir=tmp_path / "logs", progress=False, plots=False)

    assert len(trainers) >= 2  # each trial's (and the config check's before them)
    assert all(isinstance(trainer, pytorch_lightning.Trainer) for trainer in trainers)
    trials = outcome.study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for trial in trials:
        assert len(trial.intermediate_values) == 2  # the pruning callback reported every epoch
        reader = SummaryReader(trial.user_attrs["tensorboard_run"])
        assert {"val/acc", "val/acc_avg", "o2nc/scale"} <= set(reader.scalars.tag)
        hparams = dict(zip(reader.hparams.tag, reader.hparams.value, strict=True))
        assert hparams["trial/number"] == trial.number  # the sweep's logger, of this package
