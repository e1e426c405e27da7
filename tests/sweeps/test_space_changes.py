"""A changed search space on an existing study, against a real SQLite study: refused before any
trial when Optuna cannot continue it, allowed when it can."""

from __future__ import annotations

import subprocess

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution

from lightning_o2nc.sweeps.config import SweepConfigError, load_sweep_config
from lightning_o2nc.sweeps.space import parse_space
from lightning_o2nc.sweeps.space_changes import SPACE_ATTR, space_distributions
from lightning_o2nc.sweeps.storage import open_storage
from lightning_o2nc.sweeps.study import open_study

SCALING = {"type": "categorical", "choices": ["exponential", "none"]}


def _open(tmp_path, write_yaml, train_config, default_sweep, **space):
    sweep_spec = default_sweep(train_config)
    sweep_spec["space"] = {**sweep_spec["space"], **space}
    sweep = load_sweep_config(write_yaml("sweep.yaml", sweep_spec))
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    return open_study(sweep, storage, tmp_path)


def test_every_branch_of_a_conditional_space_is_recorded():
    space = parse_space(
        {
            "model.scaling": SCALING,
            "model.schedules.lr": {
                "type": "schedule",
                "choices": {
                    "constant": {},
                    "linear": {"end_factor": {"type": "float", "low": 0.0, "high": 0.5}},
                    "warmup_cosine": {
                        "warmup_fraction": {"type": "float", "low": 0.0, "high": 0.3}
                    },
                },
            },
        }
    )
    found = space_distributions(space)
    assert found["model.scaling"][0] == CategoricalDistribution(["exponential", "none"])
    assert found["model.schedules.lr.linear.end_factor"][0] == FloatDistribution(0.0, 0.5)
    assert found["model.schedules.lr.warmup_cosine.warmup_fraction"][0] == FloatDistribution(
        0.0, 0.3
    )


def test_the_space_is_remembered_in_the_study_before_any_trial(
    tmp_path, write_yaml, train_config, default_sweep
):
    study = _open(tmp_path, write_yaml, train_config, default_sweep, **{"model.scaling": SCALING})
    assert study.trials == []
    remembered = study.user_attrs[SPACE_ATTR]
    assert "model.scaling" in remembered and "model.lr" in remembered


def test_changed_categorical_choices_are_refused_naming_the_dimension(
    tmp_path, write_yaml, train_config, default_sweep
):
    _open(tmp_path, write_yaml, train_config, default_sweep, **{"model.scaling": SCALING})
    changed = {"type": "categorical", "choices": ["exponential", "uniform"]}
    with pytest.raises(SweepConfigError) as refused:
        _open(tmp_path, write_yaml, train_config, default_sweep, **{"model.scaling": changed})
    message = str(refused.value)
    assert message.startswith("space.model.scaling: study 'tiny' already exists")
    assert "['exponential', 'none'] to ['exponential', 'uniform']" in message
    assert "--study-name" in message and "\n" not in message


def test_a_changed_type_is_refused_against_the_trials_the_study_holds(
    tmp_path, write_yaml, train_config, default_sweep
):
    study = _open(tmp_path, write_yaml, train_config, default_sweep)
    study.set_user_attr(SPACE_ATTR, {})  # a study from before spaces were remembered
    study.add_trial(
        optuna.trial.create_trial(
            params={"model.lr": 0.1},
            distributions={"model.lr": FloatDistribution(0.01, 0.3, log=True)},
            value=0.5,
        )
    )
    as_choices = {"type": "categorical", "choices": [0.01, 0.1]}
    with pytest.raises(SweepConfigError, match=r"^space\.model\.lr: .* type changed from float"):
        _open(tmp_path, write_yaml, train_config, default_sweep, **{"model.lr": as_choices})


def test_a_moved_float_range_and_a_new_dimension_continue_the_study(
    tmp_path, write_yaml, train_config, default_sweep
):
    first = _open(tmp_path, write_yaml, train_config, default_sweep)
    wider = {"type": "float", "low": 0.001, "high": 1.0, "log": True}
    again = _open(
        tmp_path,
        write_yaml,
        train_config,
        default_sweep,
        **{"model.lr": wider, "model.scaling": SCALING},
    )
    assert again._study_id == first._study_id
    assert optuna.distributions.json_to_distribution(
        again.user_attrs[SPACE_ATTR]["model.lr"]
    ) == FloatDistribution(0.001, 1.0, log=True)


@pytest.mark.slow
def test_the_cli_refuses_a_changed_space_in_one_line_before_any_trial(
    tmp_path, write_yaml, train_config, default_sweep, worker
):
    command, env = worker
    _open(tmp_path, write_yaml, train_config, default_sweep, **{"model.scaling": SCALING})
    spec = default_sweep(train_config)
    spec["space"]["model.scaling"] = {"type": "categorical", "choices": ["uniform", "none"]}
    run = subprocess.run(
        command(
            "--config",
            str(write_yaml("changed.yaml", spec)),
            "--storage",
            f"sqlite:///{tmp_path / 'optuna.db'}",
            "--logdir",
            str(tmp_path),
            "--no-progress",
        ),
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2, run.stderr
    assert run.stderr.count("\n") == 1 and run.stderr.startswith(
        "o2nc-sweep: error: space.model.scaling: study 'tiny' already exists"
    )
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert study.trials == []
