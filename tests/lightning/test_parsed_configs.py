"""Reused parses (build_run in a sweep worker) equal full parses, and refuse what a parse would.

The oracle is jsonargparse itself: every config is also parsed in full with the cache emptied.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import optuna
import pytest
import yaml

import lightning_o2nc.lightning.cli as cli_module
from lightning_o2nc.lightning.errors import RunConfigError
from lightning_o2nc.lightning.parsed_configs import ParsedConfigs, config_shape
from lightning_o2nc.sweeps.config import load_sweep_config

ROOT = Path(__file__).resolve().parents[2]
TRAIN_CONFIG = ROOT / "lightning_o2nc" / "configs" / "train" / "digits_o2nc.yaml"


def _cli(config: dict):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cli_module._cli(
            args=copy.deepcopy(config),
            run=False,
            logger=False,
            reuse_parser=True,
            load_from_checkpoint_support=False,
            save_config_callback=None,
        )


@pytest.fixture
def parsed_configs(monkeypatch) -> ParsedConfigs:
    """An empty cache for the test, spied on: ``reused`` counts the configs it served."""
    cache = ParsedConfigs()
    cache.reused = 0
    reuse = cache.reuse

    def counting(parser_key, config):
        cache.parser_key = parser_key
        parsed = reuse(parser_key, config)
        cache.reused += parsed is not None
        return parsed

    monkeypatch.setattr(cache, "reuse", counting)
    monkeypatch.setattr(cli_module, "_PARSED_CONFIGS", cache)
    return cache


def test_the_demo_sweeps_trial_configs_parse_as_a_full_parse_does(parsed_configs):
    sweep = load_sweep_config(ROOT / "lightning_o2nc" / "configs" / "sweeps" / "digits.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    configs = [sweep.trial_config(sweep.space.suggest(study.ask())) for _ in range(12)]
    built = [_cli(config) for config in configs]
    assert parsed_configs.reused >= 6, "the cache served too few of the trials to test it"
    for config, cli in zip(configs, built, strict=True):
        parsed_configs._kept.clear()
        full = _cli(config)
        assert cli.config == full.config
        assert dict(cli.model.hparams) == dict(full.model.hparams)
        assert cli.trainer.max_epochs == full.trainer.max_epochs


def test_a_number_the_parse_converts_is_parsed_again(parsed_configs):
    config = yaml.safe_load(TRAIN_CONFIG.read_text())
    config["model"]["lr"] = 1  # jsonargparse makes the float argument 1.0
    _cli(config)
    config["model"]["lr"] = 2
    cli = _cli(config)
    assert parsed_configs.reused == 0
    assert cli.config["model.lr"] == 2.0 and isinstance(cli.config["model.lr"], float)


def test_a_changed_number_inside_a_dict_argument_is_replaced(parsed_configs):
    config = yaml.safe_load(TRAIN_CONFIG.read_text())
    _cli(config)
    config["model"]["schedules"]["lr"]["warmup_fraction"] = 0.25
    config["trainer"]["max_epochs"] = 3
    cli = _cli(config)
    assert parsed_configs.reused == 1
    assert cli.config["model.schedules"] == {
        "lr": {"shape": "warmup_cosine", "warmup_fraction": 0.25}
    }
    assert cli.trainer.max_epochs == 3
    assert cli.model.hparams.schedules["lr"]["warmup_fraction"] == 0.25


def test_bad_values_are_refused_as_without_the_cache(parsed_configs):
    config = yaml.safe_load(TRAIN_CONFIG.read_text())
    _cli(config)
    config["trainer"]["max_epochs"] = 2.5  # a float for an int: a new shape, parsed in full
    with pytest.raises(RunConfigError, match="max_epochs"):
        _cli(config)
    config["trainer"]["max_epochs"] = 3
    config["model"]["beta"] = 1.5  # same shape: reused, then refused by the module itself
    with pytest.raises(RunConfigError, match="beta"):
        _cli(config)
    assert parsed_configs.reused == 1


def test_a_replaced_number_is_validated_with_its_section(parsed_configs, monkeypatch):
    """The reused parse has jsonargparse validate the sections holding a replaced number: a number
    of the kept type that the argument's type refuses (here a Literal) is refused there, then
    parsed in full, which reports it as without the cache."""
    config = yaml.safe_load(TRAIN_CONFIG.read_text())
    config["trainer"]["precision"] = 32
    parser = _cli(config).parser
    validated = []

    def validate(cfg, *args, **kwargs):
        try:
            return type(parser).validate(parser, cfg, *args, **kwargs)
        except Exception as error:
            validated.append((sorted(vars(cfg)), error))
            raise

    monkeypatch.setattr(parser, "validate", validate)
    config["trainer"]["precision"] = 8
    with pytest.raises(RunConfigError, match="precision"):
        _cli(config)
    assert parsed_configs.reused == 1
    assert validated and validated[0][0] == ["trainer"]  # the reused parse's check refused it
    assert "precision" in str(validated[0][1])


def test_only_the_sections_holding_replaced_numbers_are_left_to_validate(parsed_configs):
    config = yaml.safe_load(TRAIN_CONFIG.read_text())
    _cli(config)
    key = parsed_configs.parser_key
    assert parsed_configs.reuse(key, config).sections == ()
    config["model"]["lr"] = 0.3
    config["model"]["schedules"]["lr"]["warmup_fraction"] = 0.2
    reused = parsed_configs.reuse(key, config)
    assert reused.sections == ("model",)
    assert list(vars(reused.changed_sections())) == ["model"]
    assert reused.changed_sections()["model.lr"] == 0.3
    config["trainer"]["max_epochs"] = 4
    assert sorted(parsed_configs.reuse(key, config).sections) == ["model", "trainer"]


def test_shapes_differ_in_keys_strings_and_number_types_but_not_in_numbers():
    base = {"a": 1, "b": {"c": 0.5, "d": "x"}, "e": [1, 2]}
    assert config_shape(base) == config_shape({"a": 7, "b": {"c": 0.1, "d": "x"}, "e": [3, 4]})
    for other in (
        {"a": 1.0, "b": {"c": 0.5, "d": "x"}, "e": [1, 2]},
        {"a": True, "b": {"c": 0.5, "d": "x"}, "e": [1, 2]},
        {"a": 1, "b": {"c": 0.5, "d": "y"}, "e": [1, 2]},
        {"a": 1, "b": {"c": 0.5}, "e": [1, 2]},
        {"a": 1, "b": {"c": 0.5, "d": "x"}, "e": [1, 2, 3]},
    ):
        assert config_shape(base) != config_shape(other), other
