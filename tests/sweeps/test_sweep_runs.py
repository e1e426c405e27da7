"""Real sweeps in this process: real Trainers, real storages, TensorBoard files read back."""

from __future__ import annotations

import math
import shlex
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from tbparse import SummaryReader

from lightning_o2nc.sweeps.config import load_sweep_config
from lightning_o2nc.sweeps.report import retrain_command
from lightning_o2nc.sweeps.run import run_sweep
from lightning_o2nc.sweeps.storage import open_storage
from lightning_o2nc.sweeps.study import open_study

pytestmark = pytest.mark.slow


def _sweep(write_yaml, train_config, default_sweep, name="sweep.yaml", **changes):
    return load_sweep_config(write_yaml(name, default_sweep(train_config, **changes)))


def _load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url))


def test_each_trial_is_one_tensorboard_run_with_hparams_and_the_report_names_the_best(
    tmp_path, write_yaml, train_config, default_sweep
):
    sweep = _sweep(write_yaml, train_config, default_sweep, n_trials=2, pruner="none")
    outcome = run_sweep(sweep, logdir=tmp_path / "logs", progress=False)

    study = outcome.study
    assert outcome.storage_url == f"sqlite:///{(tmp_path / 'logs' / 'optuna.db').resolve()}"
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    for trial in study.trials:
        run = tmp_path / "logs" / "tiny" / f"trial_{trial.number}"
        assert trial.user_attrs["tensorboard_run"] == str(run.resolve())
        reader = SummaryReader(str(run))
        scalars = set(reader.scalars["tag"])
        assert {"val/acc", "val/acc_avg", "o2nc/scale"} <= scalars
        hparams = dict(zip(reader.hparams["tag"], reader.hparams["value"], strict=True))
        assert hparams["trial/number"] == trial.number
        assert math.isclose(hparams["model.lr"], trial.params["model.lr"], rel_tol=1e-6)
        assert math.isclose(hparams["model.beta"], 1 - trial.params["1-model.beta"], rel_tol=1e-6)
        assert len(trial.intermediate_values) == 2  # one report per epoch

    report = outcome.report
    best = study.best_trial
    text = report.markdown.read_text()
    assert f"Trial **{best.number}**" in text
    assert best.user_attrs["tensorboard_run"] in text
    assert f"o2nc-train fit --config {report.retrain}" in text
    assert "tensorboard --logdir" in text
    for plot in ("history", "importances", "slices", "beta_eta_contour"):
        assert report.plots[plot].stat().st_size > 1000, plot
    assert report.html is not None and "plotly" in report.html.read_text()[:5_000_000]
    assert len(report.csv.read_text().strip().splitlines()) == 1 + 2

    # The saved config retrains the best trial: it is the train config with the trial's values.
    config = yaml.safe_load(Path(best.user_attrs["config"]).read_text())
    assert config["model"]["lr"] == best.params["model.lr"]
    assert config["trainer"]["max_epochs"] == 2
    from lightning_o2nc.lightning.cli import build_run  # what `o2nc-train fit --config` parses

    _, model, _ = build_run(config, logger=False)
    assert model.hparams.lr == best.params["model.lr"]


def test_the_printed_retrain_command_writes_a_checkpoint_into_a_folder_of_its_own(
    tmp_path, write_yaml, train_config, default_sweep
):
    sweep = _sweep(write_yaml, train_config, default_sweep, n_trials=1)
    outcome = run_sweep(sweep, logdir=tmp_path / "logs", progress=False, plots=False)
    best = outcome.study.best_trial
    retrain = outcome.report.retrain
    assert retrain is not None and retrain.parent == outcome.report.directory
    # the trial's own config stays as it ran: no checkpoints, the train config's logger
    trial_config = yaml.safe_load(Path(best.user_attrs["config"]).read_text())
    assert trial_config["trainer"]["enable_checkpointing"] is False
    argv = shlex.split(retrain_command(outcome.report))
    assert argv[:2] == ["o2nc-train", "fit"]
    run = subprocess.run(
        [sys.executable, "-m", "lightning_o2nc.lightning.cli", *argv[1:]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    folder = tmp_path / "logs" / "tiny" / "retrain" / f"trial_{best.number}"
    assert (folder / "version_0" / "checkpoints" / "last.ckpt").is_file()
    assert not list((tmp_path / "logs" / "tiny" / f"trial_{best.number}").rglob("*.ckpt"))


def test_rerunning_the_same_sweep_continues_the_study(
    tmp_path, write_yaml, train_config, default_sweep, storage_url, study_name
):
    sweep = _sweep(
        write_yaml, train_config, default_sweep, study_name=study_name, n_trials=2, pruner="none"
    )
    first = run_sweep(
        sweep, logdir=tmp_path / "logs", storage=storage_url, progress=False, plots=False
    )
    values = [t.value for t in first.study.trials]
    assert first.trials_run == 2

    again = run_sweep(
        sweep, logdir=tmp_path / "logs", storage=storage_url, progress=False, plots=False
    )
    assert again.trials_run == 0

    bigger = load_sweep_config(sweep.source, n_trials=3)
    more = run_sweep(
        bigger, logdir=tmp_path / "logs", storage=storage_url, progress=False, plots=False
    )
    assert more.trials_run == 1
    study = _load(storage_url, study_name)
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert [t.value for t in study.trials[:2]] == values
    assert all(t.state == TrialState.COMPLETE for t in study.trials)


@pytest.mark.filterwarnings("ignore:Fixed parameter .* is out of range")
def test_a_diverging_trial_fails_with_its_reason_and_the_study_goes_on(
    tmp_path, write_yaml, train_config, default_sweep
):
    sweep = _sweep(write_yaml, train_config, default_sweep, n_trials=2, pruner="none")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = open_study(sweep, open_storage(url), tmp_path / "logs")
    study.enqueue_trial({"model.lr": 1.0e12})  # far outside the space: used as given
    outcome = run_sweep(sweep, logdir=tmp_path / "logs", storage=url, progress=False, plots=False)

    diverged, after = outcome.study.trials
    assert diverged.params["model.lr"] == 1.0e12
    assert diverged.state == TrialState.FAIL
    assert "non-finite" in diverged.user_attrs["fail_reason"]
    assert after.state == TrialState.COMPLETE
    assert "non-finite" in outcome.report.markdown.read_text()


def _pruning_sweep(write_yaml, tiny_train_config, default_sweep, **trainer):
    train = write_yaml("train.yaml", tiny_train_config(max_epochs=3, **trainer))
    return _sweep(
        write_yaml,
        train,
        default_sweep,
        n_trials=2,
        sampler="random",
        pruner={"name": "median", "options": {"n_startup_trials": 1, "n_warmup_steps": 0}},
    )


def _enqueue_good_then_hopeless(sweep, url, logdir):
    study = open_study(sweep, open_storage(url), logdir)
    fixed = {"1-model.beta": 0.1, "model.mu:zero": True, "model.schedules.lr.shape": "constant"}
    study.enqueue_trial({"model.lr": 0.2, **fixed})
    study.enqueue_trial({"model.lr": 1.0e-6, **fixed})  # barely moves: stays near chance
    return study


@pytest.mark.filterwarnings("ignore:Fixed parameter .* is out of range")
def test_a_trial_worse_than_the_median_is_pruned_after_its_first_epoch(
    tmp_path, write_yaml, tiny_train_config, default_sweep
):
    sweep = _pruning_sweep(write_yaml, tiny_train_config, default_sweep)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    _enqueue_good_then_hopeless(sweep, url, tmp_path / "logs")
    outcome = run_sweep(sweep, logdir=tmp_path / "logs", storage=url, progress=False, plots=False)
    good, hopeless = outcome.study.trials
    assert good.state == TrialState.COMPLETE and good.user_attrs["epochs_trained"] == 3
    assert hopeless.state == TrialState.PRUNED
    assert hopeless.user_attrs["epochs_trained"] < 3
    # A pruned trial still has its HParams entry.
    reader = SummaryReader(hopeless.user_attrs["tensorboard_run"])
    assert "trial/number" in set(reader.hparams["tag"])
    assert "epochs: 3 +" not in outcome.report.markdown.read_text()


@pytest.mark.filterwarnings("ignore:Fixed parameter .* is out of range")
def test_pruning_works_when_each_trial_trains_with_two_ddp_processes(
    tmp_path, write_yaml, tiny_train_config, default_sweep
):
    sweep = _pruning_sweep(write_yaml, tiny_train_config, default_sweep, strategy="ddp", devices=2)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    _enqueue_good_then_hopeless(sweep, url, tmp_path / "logs")
    outcome = run_sweep(sweep, logdir=tmp_path / "logs", storage=url, progress=False, plots=False)
    good, hopeless = outcome.study.trials
    assert good.state == TrialState.COMPLETE
    assert sorted(good.intermediate_values) == [0, 1, 2]
    assert good.value == pytest.approx(good.intermediate_values[2])
    assert hopeless.state == TrialState.PRUNED
    assert max(hopeless.intermediate_values) < 2


def test_with_averaged_weights_the_trial_value_is_the_metric_at_x_bar_not_at_the_weights(
    tmp_path, write_yaml, tiny_train_config, default_sweep
):
    # beta = 0.99 keeps x_bar (the beta-average of the iterates) far behind the trained weights,
    # so the two validation losses differ; the objective must return the one at x_bar.
    train = write_yaml("train.yaml", tiny_train_config(max_epochs=2))
    objective = {"metric": "val/loss", "direction": "minimize", "weights": "averaged"}
    sweep = _sweep(write_yaml, train, default_sweep, n_trials=1, pruner="none", objective=objective)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = open_study(sweep, open_storage(url), tmp_path / "logs")
    fixed = {"model.mu:zero": True, "model.schedules.lr.shape": "constant"}
    study.enqueue_trial({"1-model.beta": 0.01, "model.lr": 0.3, **fixed})
    outcome = run_sweep(sweep, logdir=tmp_path / "logs", storage=url, progress=False, plots=False)

    (trial,) = outcome.study.trials
    scalars = SummaryReader(trial.user_attrs["tensorboard_run"]).scalars
    last = {tag: rows.sort_values("step")["value"].iloc[-1] for tag, rows in scalars.groupby("tag")}
    assert not math.isclose(last["val/loss"], last["val/loss_avg"], rel_tol=1e-3), last
    assert trial.value == pytest.approx(last["val/loss_avg"], rel=1e-6)
    assert outcome.study.user_attrs["o2nc_sweep"]["metric"] == "val/loss_avg"
