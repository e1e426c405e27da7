"""The optimizer family as a conditional dimension, and continuing a study of the old uniform."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from lightning_o2nc.sweeps.config import SweepConfigError, load_sweep_config
from lightning_o2nc.sweeps.distinct import VALUES
from lightning_o2nc.sweeps.run import run_sweep
from lightning_o2nc.sweeps.space import parse_space
from lightning_o2nc.sweeps.storage import open_storage
from lightning_o2nc.sweeps.study import UNIFORM_WEIGHTED_SINCE, OldUniformScalingWarning, open_study

FAMILY = {
    "type": "conditional",
    "choices": {
        "o2nc": {
            "model.lr": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
            "model.beta": {"type": "one_minus", "low": 0.01, "high": 0.5},
        },
        "o2nc_adamw": {
            "model.lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True},
            "model.beta2": {"type": "one_minus", "low": 1.0e-3, "high": 0.1},
            "model.weight_decay": {"type": "float", "low": 1.0e-3, "high": 0.1, "log": True},
            "model.eps": 1.0e-7,
        },
    },
}
SCALING = {"type": "categorical", "choices": ["exponential", "uniform", "none"]}


def test_a_conditional_dimension_suggests_only_the_branch_it_takes():
    space = parse_space({"model.optimizer": FAMILY, "model.scaling": SCALING})
    assert space.paths == [
        "model.optimizer",
        "model.lr",
        "model.beta",
        "model.beta2",
        "model.weight_decay",
        "model.eps",
        "model.scaling",
    ]
    # the report's beta-eta contour: the first family's parameters
    assert space.find("lr").name == "model.lr[o2nc]"
    assert space.find("beta").name == "1-model.beta[o2nc]"
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        values = space.suggest(trial)
        family = values["model.optimizer"]
        seen.add(family)
        if family == "o2nc":
            assert set(trial.params) == {
                "model.optimizer",
                "model.lr[o2nc]",
                "1-model.beta[o2nc]",
            } | {"model.scaling"}
            assert 0.01 <= values["model.lr"] <= 0.3 and "model.beta2" not in values
        else:
            assert "1-model.beta2[o2nc_adamw]" in trial.params
            assert 1.0e-3 <= values["model.lr"] <= 1.0e-2 and "model.beta" not in values
            assert values["model.eps"] == 1.0e-7  # a fixed value of the branch
        study.tell(trial, 0.0)
    assert seen == {"o2nc", "o2nc_adamw"}


@pytest.mark.parametrize(
    ("space", "match"),
    [
        (
            {
                "model.optimizer": {
                    "type": "conditional",
                    "choices": {"o2nc": {"model.optimizer": 1}},
                }
            },
            "space.model.optimizer.choices.o2nc.model.optimizer: the branch cannot set",
        ),
        (
            {"model.optimizer": FAMILY, "model.lr": {"type": "float", "low": 0.1, "high": 1.0}},
            "space.model.lr: writes 'model.lr', which space.model.optimizer searches too",
        ),
        (
            {"model.optimizer": {"type": "conditional", "choices": ["o2nc", "o2nc_adamw"]}},
            "space.model.optimizer.choices must map each value",
        ),
        (
            {
                "model.schedules.lr": {
                    "type": "schedule",
                    "choices": {"linear": {"end_factor": {**FAMILY}}},
                }
            },
            "writes several config paths; a schedule argument takes one value",
        ),
    ],
)
def test_a_malformed_conditional_dimension_is_refused_naming_its_key(space, match):
    with pytest.raises(SweepConfigError, match=match):
        parse_space(space)


def test_the_grid_sampler_takes_a_conditional_dimension_with_fixed_branches_only():
    fixed = {
        "type": "conditional",
        "choices": {"o2nc": {"model.beta": 0.9}, "o2nc_adamw": {"model.beta2": 0.99}},
    }
    assert parse_space({"model.optimizer": fixed}).grid_search_space() == {
        "model.optimizer": ["o2nc", "o2nc_adamw"]
    }
    with pytest.raises(SweepConfigError, match="grid sampler needs fixed values"):
        parse_space({"model.optimizer": FAMILY}).grid_search_space()


def test_a_sweep_searches_the_optimizer_family_and_the_scaling_in_one_sqlite_study(
    tmp_path, write_yaml, train_config, default_sweep
):
    sweep = load_sweep_config(
        write_yaml(
            "family.yaml",
            default_sweep(
                train_config,
                n_trials=4,
                space={"model.optimizer": FAMILY, "model.scaling": SCALING},
                sampler={"name": "random"},
                pruner="none",
            ),
        )
    )
    outcome = run_sweep(sweep, logdir=tmp_path / "logs", progress=False, plots=False)
    trials = outcome.study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    families = set()
    for trial in trials:
        config = yaml.safe_load(Path(trial.user_attrs["config"]).read_text())["model"]
        family = trial.params["model.optimizer"]
        families.add(family)
        assert config["optimizer"] == family and config["scaling"] == trial.params["model.scaling"]
        if family == "o2nc_adamw":
            assert config["beta2"] == pytest.approx(1 - trial.params["1-model.beta2[o2nc_adamw]"])
            assert config["eps"] == 1.0e-7 and config["beta"] == 0.9  # the train config's beta
        else:
            assert config["beta"] == pytest.approx(1 - trial.params["1-model.beta[o2nc]"])
            assert "beta2" not in config
        assert 0.0 <= trial.value <= 1.0
    assert families == {"o2nc", "o2nc_adamw"}
    assert outcome.study.user_attrs[UNIFORM_WEIGHTED_SINCE] == 0


def _sweep_in(tmp_path, write_yaml, train_config, default_sweep):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    sweep = load_sweep_config(
        write_yaml("sweep.yaml", default_sweep(train_config, study_name="old", space={
            "model.lr": {"type": "float", "low": 0.01, "high": 0.3},
            "model.scaling": {"type": "categorical", "choices": ["exponential", "uniform"]},
        }))
    )  # fmt: skip
    return url, sweep


def _add_trial(storage, scaling: str) -> None:
    study = optuna.load_study(study_name="old", storage=storage)
    study.add_trial(
        optuna.trial.create_trial(
            params={"model.lr": 0.1, "model.scaling": scaling},
            distributions={
                "model.lr": optuna.distributions.FloatDistribution(0.01, 0.3),
                "model.scaling": optuna.distributions.CategoricalDistribution(
                    ["exponential", "uniform"]
                ),
            },
            value=0.5,
            user_attrs={VALUES: {"model.lr": 0.1, "model.scaling": scaling}},
        )
    )


def test_continuing_a_study_of_the_old_uniform_warns_that_the_meaning_changed(
    tmp_path, write_yaml, train_config, default_sweep
):
    url, sweep = _sweep_in(tmp_path, write_yaml, train_config, default_sweep)
    storage = open_storage(url)
    optuna.create_study(
        study_name="old", storage=storage, direction="maximize"
    )  # before the marker
    _add_trial(storage, "exponential")
    _add_trial(storage, "uniform")
    with pytest.warns(OldUniformScalingWarning, match=r"1 trial\(s\) \(1\) run with the old"):
        study = open_study(sweep, storage, tmp_path)
    assert study.user_attrs[UNIFORM_WEIGHTED_SINCE] == 2
    _add_trial(storage, "uniform")  # trial 2 runs the new uniform: not counted as old
    with pytest.warns(OldUniformScalingWarning, match=r"1 trial\(s\) \(1\) run"):
        open_study(sweep, storage, tmp_path)


def test_a_new_study_is_marked_and_its_uniform_trials_never_warn(
    tmp_path, write_yaml, train_config, default_sweep
):
    url, sweep = _sweep_in(tmp_path, write_yaml, train_config, default_sweep)
    storage = open_storage(url)
    with warnings.catch_warnings():
        warnings.simplefilter("error", OldUniformScalingWarning)
        study = open_study(sweep, storage, tmp_path)
        assert study.user_attrs[UNIFORM_WEIGHTED_SINCE] == 0
        _add_trial(storage, "uniform")
        open_study(sweep, storage, tmp_path)


def test_an_old_study_whose_train_config_fixes_uniform_warns_too(
    tmp_path, write_yaml, train_config, default_sweep
):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    sweep = load_sweep_config(
        write_yaml(
            "uniform.yaml",
            default_sweep(
                train_config,
                study_name="old",
                overrides={"model.scaling": "uniform"},
                space={"model.lr": {"type": "float", "low": 0.01, "high": 0.3}},
            ),
        )
    )
    storage = open_storage(url)
    study = optuna.create_study(study_name="old", storage=storage, direction="maximize")
    study.add_trial(
        optuna.trial.create_trial(
            params={"model.lr": 0.1},
            distributions={"model.lr": optuna.distributions.FloatDistribution(0.01, 0.3)},
            value=0.5,
            user_attrs={VALUES: {"model.lr": 0.1}},
        )
    )
    with pytest.warns(OldUniformScalingWarning, match="the authors' U\\(0, 2\\) with the weight"):
        open_study(sweep, storage, tmp_path)


def test_a_branch_no_optimizer_accepts_is_refused_before_the_study_exists(
    tmp_path, write_yaml, train_config, default_sweep
):
    family = {
        "type": "conditional",
        "choices": {
            "o2nc": {"model.beta": {"type": "one_minus", "low": 0.01, "high": 0.5}},
            "o2nc_adamw": {"model.lr": 1.0e-3, "model.mu": 0.5},  # AdamW has no mu
        },
    }
    sweep = load_sweep_config(
        write_yaml("bad.yaml", default_sweep(train_config, space={"model.optimizer": family}))
    )
    assert sweep.space.branch_probes() == [
        {"model.optimizer": "o2nc"},
        {"model.optimizer": "o2nc_adamw"},
    ]
    with pytest.raises(
        SweepConfigError,
        match=r"\(space branch model.optimizer: o2nc_adamw\): Invalid mu for 'o2nc_adamw'",
    ):
        run_sweep(sweep, logdir=tmp_path / "logs", progress=False, plots=False)
    assert (
        optuna.get_all_study_names(open_storage(f"sqlite:///{tmp_path / 'logs/optuna.db'}")) == []
    )
