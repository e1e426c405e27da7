"""The sweep file is validated before any trial runs, and spaces sample what they say."""

from __future__ import annotations

import math

import optuna
import pytest

from lightning_o2nc.sweeps.config import SweepConfigError, load_sweep_config
from lightning_o2nc.sweeps.paths import check_path, set_path
from lightning_o2nc.sweeps.samplers import build_pruner, build_sampler
from lightning_o2nc.sweeps.space import parse_space


def _sample(space_spec, n=40, seed=0, grid=False):
    space = parse_space(space_spec)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    values = []
    for _ in range(n):
        trial = study.ask()
        values.append((trial, space.suggest(trial, grid=grid)))
        study.tell(trial, 0.0)
    return values


def test_one_minus_samples_beta_through_a_log_uniform_one_minus_beta():
    draws = _sample({"model.beta": {"type": "one_minus", "low": 1.0e-3, "high": 0.5}}, n=200)
    for trial, values in draws:
        assert math.isclose(values["model.beta"], 1 - trial.params["1-model.beta"])
        assert 0.5 <= values["model.beta"] <= 0.999
    # log-uniform 1-beta puts about half the draws above beta = 1 - sqrt(1e-3 * 0.5) ~ 0.978
    above = sum(v["model.beta"] > 1 - math.sqrt(1e-3 * 0.5) for _, v in draws)
    assert 60 < above < 140


def test_zero_or_float_is_exactly_zero_or_log_uniform_and_only_then_suggests_the_float():
    draws = _sample({"model.mu": {"type": "zero_or_float", "low": 1.0e-4, "high": 1.0}}, n=60)
    zeros = [(t, v) for t, v in draws if v["model.mu"] == 0.0]
    others = [(t, v) for t, v in draws if v["model.mu"] != 0.0]
    assert zeros and others
    assert all("model.mu" not in t.params and t.params["model.mu:zero"] for t, _ in zeros)
    assert all(1e-4 <= v["model.mu"] <= 1.0 for _, v in others)


def test_schedule_arguments_are_conditional_on_their_shape():
    spec = {
        "model.schedules.lr": {
            "type": "schedule",
            "choices": {
                "constant": {},
                "warmup_cosine": {
                    "warmup_fraction": {"type": "float", "low": 0.0, "high": 0.3},
                    "min_factor": 0.0,
                },
                "step": {"step_size": {"type": "int", "low": 10, "high": 50}, "gamma": 0.5},
            },
        }
    }
    shapes = set()
    for trial, values in _sample(spec, n=40):
        schedule = values["model.schedules.lr"]
        shapes.add(schedule["shape"])
        branch_params = {n for n in trial.params if n != "model.schedules.lr.shape"}
        if schedule["shape"] == "constant":
            assert schedule == {"shape": "constant"} and not branch_params
        elif schedule["shape"] == "warmup_cosine":
            assert branch_params == {"model.schedules.lr.warmup_cosine.warmup_fraction"}
            assert schedule["min_factor"] == 0.0 and 0 <= schedule["warmup_fraction"] <= 0.3
        else:
            assert branch_params == {"model.schedules.lr.step.step_size"}
            assert schedule["gamma"] == 0.5 and 10 <= schedule["step_size"] <= 50
    assert shapes == {"constant", "warmup_cosine", "step"}


def test_grid_mode_enumerates_every_combination_exactly_once():
    spec = {
        "model.scaling": {"type": "categorical", "choices": ["exponential", "none"]},
        "model.lr": {"type": "float", "low": 0.01, "high": 1.0, "log": True, "grid": [0.01, 0.1]},
        "model.schedules.lr": {
            "type": "schedule",
            "choices": {"constant": {}, "cosine": {"min_factor": 0.1}},
        },
    }
    space = parse_space(spec)
    sampler = optuna.samplers.GridSampler(space.grid_search_space(), seed=0)
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: float(len(str(space.suggest(t, grid=True)))), n_trials=20)
    seen = {
        (t.params["model.scaling"], t.params["model.lr"], t.params["model.schedules.lr"])
        for t in study.trials
    }
    assert len(study.trials) == 8 and len(seen) == 8


@pytest.mark.parametrize(
    ("spec", "key"),
    [
        ({"model.lr": {"type": "float", "low": 1.0, "high": 0.1}}, "space.model.lr"),
        ({"model.lr": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}, "space.model.lr"),
        ({"model.lr": {"type": "float", "low": 0.1, "high": 1.0, "lg": True}}, "space.model.lr"),
        ({"model.lr": {"type": "uniform", "low": 0.1, "high": 1.0}}, "space.model.lr.type"),
        ({"model.lr": 0.1}, "space.model.lr"),
        ({"model.beta": {"type": "one_minus", "low": 0.0, "high": 0.5}}, "space.model.beta"),
        ({"model.lr": {"type": "float", "low": "abc", "high": 1.0}}, "space.model.lr.low"),
        ({"model.scaling": {"type": "categorical", "choices": []}}, "space.model.scaling.choices"),
        (
            {"model.schedules.lr": {"type": "schedule", "choices": {"cosyne": {}}}},
            "space.model.schedules.lr.choices.cosyne",
        ),
        (
            {"model.schedules.lr": {"type": "schedule", "choices": {"step": {"gama": 0.1}}}},
            "space.model.schedules.lr.choices.step",
        ),
        (
            {
                "model.schedules.lr": {
                    "type": "schedule",
                    "choices": {
                        "warmup_cosine": {"warmup_fraction": {"type": "float", "low": 0, "high": 2}}
                    },
                }
            },
            "space.model.schedules.lr.choices.warmup_cosine",
        ),
        ({"model.lr": {"type": "schedule", "choices": {"constant": {}}}}, "space.model.lr"),
    ],
)
def test_a_malformed_dimension_is_refused_with_its_key(spec, key):
    with pytest.raises(SweepConfigError) as error:
        parse_space(spec)
    assert str(error.value).startswith(key)


def test_yaml_1_1_exponent_strings_are_read_as_numbers():
    space = parse_space({"model.lr": {"type": "float", "low": "1e-4", "high": "1e-1", "log": True}})
    assert (space.dimensions[0].low, space.dimensions[0].high) == (1e-4, 0.1)


def test_paths_are_checked_against_the_train_config_and_the_classes_it_configures(
    tiny_train_config,
):
    config = tiny_train_config()
    for path in [
        "model.lr",
        "model.schedules.lr",  # not in the file, but an argument of O2NCModule
        "trainer.gradient_clip_val",  # an argument of Trainer
        "data.init_args.batch_size",
        "data.init_args.separation",
        "seed_everything",
    ]:
        check_path(config, path, key=f"space.{path}")
    for path, missing in [
        ("model.learning_rate", "model.learning_rate"),
        ("trainer.max_epoch", "trainer.max_epoch"),
        ("data.init_args.batchsize", "data.init_args.batchsize"),
        ("optimizer.lr", "optimizer"),
    ]:
        with pytest.raises(SweepConfigError, match=f"space.{path}.*{missing!r}"):
            check_path(config, path, key=f"space.{path}")
    with pytest.raises(SweepConfigError, match="not a mapping"):
        check_path(config, "model.lr.value", key="space.model.lr.value")


def test_set_path_creates_missing_mappings_and_refuses_to_go_through_a_scalar():
    config = {"model": {"lr": 0.1}}
    set_path(config, "model.schedules.lr", {"shape": "constant"})
    assert config["model"]["schedules"] == {"lr": {"shape": "constant"}}
    with pytest.raises(SweepConfigError, match="model.lr"):
        set_path(config, "model.lr.x", 1)


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        (
            {"space": {"model.lr_max": {"type": "float", "low": 0.1, "high": 1.0}}},
            "space.model.lr_max",
        ),
        ({"overrides": {"trainer.max_epoch": 3}}, "overrides.trainer.max_epoch"),
        ({"overrides": {"model.lr": 0.1}}, "space.model.lr"),
        ({"sampler": {"name": "bohb"}}, "sampler.name"),
        ({"pruner": {"name": "asha"}}, "pruner.name"),
        ({"sampler": {"name": "tpe", "options": {"n_startup": 3}}}, None),
        ({"objective": {"metric": "val/acc", "weights": "ema"}}, "objective.weights"),
        ({"objective": {"metric": "val/acc", "direction": "up"}}, "objective.direction"),
        ({"objective": {"metric": "val/score"}}, "objective.direction"),
        ({"n_trials": 0}, "n_trials"),
        ({"storage": {"heartbeat_interval": 10, "grace_period": 5}}, "storage.grace_period"),
        ({"colour": "blue"}, "unknown top-level"),
        ({"train_config": "nowhere.yaml"}, "train_config"),
        ({"sampler": "grid"}, "space.model.lr"),
        (
            {"overrides": {"trainer.strategy": "fsdp", "trainer.devices": 4}},
            "trainer.strategy",
        ),
        (
            {
                "overrides": {
                    "trainer.strategy": {
                        "class_path": "lightning.pytorch.strategies.ModelParallelStrategy",
                        "init_args": {"data_parallel_size": 2, "tensor_parallel_size": 1},
                    },
                    "trainer.devices": 2,
                }
            },
            "trainer.strategy: ModelParallelStrategy",
        ),
    ],
)
def test_a_malformed_sweep_file_is_refused_naming_the_key(
    write_yaml, train_config, default_sweep, changes, key
):
    path = write_yaml("sweep.yaml", default_sweep(train_config, **changes))
    if key is None:  # sampler options are checked when the sampler is built
        sweep = load_sweep_config(path)
        with pytest.raises(SweepConfigError, match="sampler.options"):
            build_sampler(sweep.sampler, sweep.space, sweep.seed)
        return
    with pytest.raises(SweepConfigError) as error:
        load_sweep_config(path)
    assert key in str(error.value)


def test_averaged_weights_need_the_averaged_iterate(write_yaml, tiny_train_config, default_sweep):
    config = tiny_train_config()
    config["model"]["average"] = False
    train = write_yaml("train.yaml", config)
    with pytest.raises(SweepConfigError, match=r"objective.weights.*model.average"):
        load_sweep_config(write_yaml("sweep.yaml", default_sweep(train)))
    sweep = default_sweep(train, overrides={"model.average": True})
    assert load_sweep_config(write_yaml("ok.yaml", sweep)).objective.monitor == "val/acc_avg"


def test_trial_config_applies_overrides_and_values_to_a_copy(
    write_yaml, train_config, default_sweep
):
    sweep = load_sweep_config(
        write_yaml("sweep.yaml", default_sweep(train_config, overrides={"trainer.max_epochs": 7}))
    )
    config = sweep.trial_config({"model.lr": 0.2, "model.schedules.lr": {"shape": "constant"}})
    assert config["trainer"]["max_epochs"] == 7 and config["model"]["lr"] == 0.2
    assert config["model"]["schedules"] == {"lr": {"shape": "constant"}}
    assert (
        sweep.train_config["model"]["lr"] == 0.05 and "schedules" not in sweep.train_config["model"]
    )


def test_command_line_values_replace_the_files(write_yaml, train_config, default_sweep):
    path = write_yaml("sweep.yaml", default_sweep(train_config))
    sweep = load_sweep_config(path, study_name="other", n_trials=11, timeout=60)
    assert (sweep.study_name, sweep.n_trials, sweep.timeout) == ("other", 11, 60)


def test_samplers_default_to_parallel_friendly_settings(write_yaml, train_config, default_sweep):
    sweep = load_sweep_config(write_yaml("sweep.yaml", default_sweep(train_config)))
    tpe = build_sampler(sweep.sampler, sweep.space, seed=0)
    assert isinstance(tpe, optuna.samplers.TPESampler)
    assert tpe._multivariate is True and tpe._constant_liar is True and tpe._group is True
    for name, cls in [
        ("cmaes", optuna.samplers.CmaEsSampler),
        ("gp", optuna.samplers.GPSampler),
        ("random", optuna.samplers.RandomSampler),
    ]:
        sweep = load_sweep_config(
            write_yaml(f"{name}.yaml", default_sweep(train_config, sampler={"name": name}))
        )
        assert isinstance(build_sampler(sweep.sampler, sweep.space, 0), cls)


def test_pruners_are_built_from_their_names():
    from lightning_o2nc.sweeps.samplers import PrunerSpec

    median = build_pruner(PrunerSpec.parse({"name": "median", "options": {"n_warmup_steps": 3}}))
    assert isinstance(median, optuna.pruners.MedianPruner) and median._n_warmup_steps == 3
    hyperband = build_pruner(PrunerSpec.parse("hyperband"), max_epochs=27)
    assert isinstance(hyperband, optuna.pruners.HyperbandPruner)
    assert hyperband._max_resource == 27
    assert isinstance(build_pruner(PrunerSpec.parse("none")), optuna.pruners.NopPruner)
    with pytest.raises(SweepConfigError, match="pruner.options"):
        build_pruner(PrunerSpec.parse({"name": "median", "options": {"warmup": 1}}))


def test_shipped_sweep_configs_are_valid():
    from pathlib import Path

    configs = sorted(
        (Path(__file__).resolve().parents[2] / "lightning_o2nc" / "configs" / "sweeps").glob(
            "*.yaml"
        )
    )
    assert {p.stem for p in configs} >= {"digits", "fashion_mnist", "cifar10_resnet18"}
    for path in configs:
        sweep = load_sweep_config(path)
        build_sampler(sweep.sampler, sweep.space, sweep.seed)
        # a momentum knob: beta (SGD family, AdamW's beta1) or AdamW's beta2
        assert sweep.space.find("lr") is not None
        assert sweep.space.find("beta", "beta2") is not None, path.name


def test_multi_process_trials_are_run_with_the_spawn_launcher_and_single_ones_untouched():
    # A relaunching strategy without a spawn twin is refused rather than left to hang.
    from lightning_o2nc.sweeps.config import spawn_strategy

    assert spawn_strategy({"strategy": "ddp", "devices": 2}) == "ddp_spawn"
    assert spawn_strategy({"strategy": "ddp_find_unused_parameters_true"}) == (
        "ddp_spawn_find_unused_parameters_true"
    )
    assert spawn_strategy({"accelerator": "cpu", "devices": 4}) == "ddp_spawn"
    assert spawn_strategy({"devices": 1, "num_nodes": 2}) == "ddp_spawn"
    assert spawn_strategy({"accelerator": "cpu", "devices": 1}) is None
    assert spawn_strategy({"accelerator": "cpu", "devices": "auto"}) is None
    assert spawn_strategy({"strategy": "fsdp", "devices": 1}) is None
    with pytest.raises(SweepConfigError, match="trainer.strategy"):
        spawn_strategy({"strategy": "fsdp", "devices": 4})
    model_parallel = {"class_path": "lightning.pytorch.strategies.ModelParallelStrategy"}
    with pytest.raises(SweepConfigError, match="trainer.strategy: ModelParallelStrategy"):
        spawn_strategy({"strategy": model_parallel, "devices": 2})


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "float", "low": 0.1, "high": 1.0},
        {"type": "int", "low": 1, "high": 4},
        {"type": "categorical", "choices": ["a", "b"]},
        {"type": "one_minus", "low": 0.01, "high": 0.5},
        {"type": "zero_or_float", "low": 1.0e-4, "high": 0.1},
        {"type": "schedule", "choices": {"constant": {}}},
    ],
)
def test_each_dimension_is_built_by_the_class_its_type_names(spec):
    from lightning_o2nc.sweeps.dimensions import DIMENSIONS

    path = "model.schedules.lr" if spec["type"] == "schedule" else "model.x"
    (dimension,) = parse_space({path: spec}).dimensions
    assert type(dimension) is DIMENSIONS[spec["type"]]
    assert dimension.type_name == spec["type"]


def test_the_sweep_file_names_exactly_the_samplers_and_pruners_that_are_built(
    write_yaml, train_config, default_sweep
):
    from lightning_o2nc.sweeps.samplers import PRUNERS, SAMPLERS, PrunerSpec

    for name in SAMPLERS:
        changes = {"sampler": {"name": name}}
        if name == "grid":
            changes["space"] = {
                "model.lr": {"type": "float", "low": 0.01, "high": 0.3, "grid": [0.1]}
            }
        sweep = load_sweep_config(
            write_yaml(f"{name}.yaml", default_sweep(train_config, **changes))
        )
        assert isinstance(build_sampler(sweep.sampler, sweep.space, 0), optuna.samplers.BaseSampler)
    for name in PRUNERS:
        assert isinstance(build_pruner(PrunerSpec.parse(name), 4), optuna.pruners.BasePruner)
    with pytest.raises(SweepConfigError, match=r"sampler.name: unknown sampler 'bohb'.*'tpe'"):
        load_sweep_config(
            write_yaml("bohb.yaml", default_sweep(train_config, sampler={"name": "bohb"}))
        )


def test_schedules_are_searched_for_every_field_the_optimizer_schedules_and_no_other():
    from lightning_o2nc.optim.hyperparameters import HYPERPARAMETERS, SCHEDULABLE

    choices = {"constant": {}, "cosine": {"min_factor": 0.1}}
    for name in HYPERPARAMETERS:
        spec = {f"model.schedules.{name}": {"type": "schedule", "choices": choices}}
        if name in SCHEDULABLE:
            assert parse_space(spec).paths == [f"model.schedules.{name}"]
        else:
            with pytest.raises(SweepConfigError, match=f"space.model.schedules.{name}"):
                parse_space(spec)


def test_every_hyperparameter_of_the_module_is_a_searchable_path(tiny_train_config):
    # O2NCModule takes the table's hyper-parameters; the path check reads them as LightningCLI does.
    from lightning_o2nc.lightning.module import optimizer_arguments
    from lightning_o2nc.optim.hyperparameters import HYPERPARAMETERS

    config = tiny_train_config()
    names = list(optimizer_arguments.__signature__.parameters)
    assert "average_beta" in names and set(names) <= set(HYPERPARAMETERS)
    for name in names:
        check_path(config, f"model.{name}", key=f"space.model.{name}")
