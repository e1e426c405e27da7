from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from tbparse import SummaryReader

from lightning_o2nc import ExponentiatedO2NC
from lightning_o2nc.lightning import CharLanguageModule, CharTextDataModule, SyntheticDataModule
from lightning_o2nc.lightning.cli import build_run, main
from tests.train_configs import cpu_trainer

CONFIGS = Path(__file__).resolve().parents[2] / "lightning_o2nc" / "configs" / "train"


def _synthetic_config(tmp_path, **trainer):
    return {
        "seed_everything": 0,
        "trainer": cpu_trainer(
            {
                "enable_progress_bar": False,
                "enable_model_summary": False,
                "log_every_n_steps": 2,
                "default_root_dir": str(tmp_path),
                "logger": {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {
                        "save_dir": str(tmp_path / "runs"),
                        "name": "synthetic",
                        "default_hp_metric": False,
                    },
                },
            },
            trainer,
        ),
        "model": {
            "backbone": "mlp",
            "optimizer": "o2nc",
            "lr": 0.1,
            "seed": 0,
            "schedules": {"lr": {"shape": "cosine"}},
        },
        "data": {
            "class_path": "lightning_o2nc.SyntheticDataModule",
            "init_args": {"num_samples": 128, "batch_size": 16},
        },
    }


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_train_config_builds_a_run(path):
    config = yaml.safe_load(path.read_text())
    _, model, datamodule = build_run(
        config, logger=False, trainer_overrides={"enable_progress_bar": False}
    )
    assert path.stem.endswith(f"_{model.hparams.optimizer}")  # the file names its optimizer
    if isinstance(datamodule, CharTextDataModule):  # the task follows the data module
        assert isinstance(model, CharLanguageModule)
        return
    assert model.hparams.num_classes == datamodule.num_classes == 10
    assert tuple(model.hparams.input_shape) == datamodule.input_shape
    assert model.hparams.average is True


def test_cifar_configs_follow_the_papers_recipe():
    for name in ("cifar10_resnet18_o2nc.yaml", "cifar10_resnet18_sgdm.yaml"):
        config = yaml.safe_load((CONFIGS / name).read_text())
        assert config["trainer"]["max_epochs"] == 200
        assert config["data"]["init_args"]["batch_size"] == 128
        model = config["model"]
        assert (model["backbone"], model["beta"], model["weight_decay"]) == (
            "resnet18_cifar",
            0.9,
            5e-4,
        )
        zeta = model["beta"] / (1 + model["lr"] * model["mu"])
        # torch SGD(lr=zeta*eta, momentum=zeta) must be the paper's SGD(lr=0.1, momentum=0.9)
        assert (zeta * model["lr"], zeta) == (pytest.approx(0.1), pytest.approx(0.9))
        assert model["schedules"]["lr"]["shape"] == "cosine"


def test_build_run_defaults_to_tensorboard_rich_progress_and_last_checkpoint(tmp_path):
    config = _synthetic_config(tmp_path, enable_progress_bar=True)
    del config["trainer"]["logger"]

    class Marker(Callback):
        pass

    marker = Marker()
    trainer, model, datamodule = build_run(
        config, extra_callbacks=[marker], trainer_overrides={"max_epochs": 1}
    )
    assert isinstance(trainer.logger, TensorBoardLogger)
    assert trainer.logger._default_hp_metric is False
    assert any(isinstance(c, RichProgressBar) for c in trainer.callbacks)
    assert any(isinstance(c, ModelCheckpoint) and c.save_last for c in trainer.callbacks)
    assert marker in trainer.callbacks
    assert trainer.max_epochs == 1
    assert isinstance(datamodule, SyntheticDataModule)
    assert tuple(model.hparams.input_shape) == (1, 8, 8)


def test_o2nc_train_fit_then_test_from_the_last_checkpoint(tmp_path):
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(_synthetic_config(tmp_path)))
    main(["fit", "--config", str(config_path)])
    log_dir = tmp_path / "runs" / "synthetic" / "version_0"
    last = log_dir / "checkpoints" / "last.ckpt"
    assert last.is_file()
    main(["test", "--config", str(config_path), "--ckpt_path", str(last)])
    tags = set(SummaryReader(str(tmp_path / "runs" / "synthetic" / "version_1")).scalars.tag)
    assert {"test/acc", "test/acc_avg"} <= tags
    fit_tags = set(SummaryReader(str(log_dir)).scalars.tag)
    assert {"val/acc", "val/acc_avg", "o2nc/scale", "hp/val_acc"} <= fit_tags


class PlainModule(LightningModule):
    """No configure_optimizers: the optimizer comes from the CLI's `optimizer:` class_path."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss


def test_exponentiated_o2nc_works_as_an_optimizer_class_path_in_a_plain_lightning_cli(tmp_path):
    args = {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 3,
            "accelerator": "cpu",
            "logger": False,
            "enable_progress_bar": False,
            "enable_checkpointing": False,
            "enable_model_summary": False,
            "default_root_dir": str(tmp_path),
        },
        "data": {"num_samples": 128, "batch_size": 16},
        "optimizer": {
            "class_path": "lightning_o2nc.ExponentiatedO2NC",
            "init_args": {"lr": 0.1, "seed": 0, "average": True},
        },
    }
    cli = LightningCLI(PlainModule, SyntheticDataModule, args=args, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    (optimizer,) = cli.trainer.optimizers
    assert isinstance(optimizer, ExponentiatedO2NC)
    assert optimizer.average and optimizer.param_groups[0]["lr"] == 0.1
    assert optimizer.last_scale != 1.0
    assert cli.trainer.callback_metrics["train_loss"] < 0.5


def test_digits_config_trains_to_a_sensible_test_accuracy(tmp_path):
    overrides = [
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]
    main(["fit", "--config", str(CONFIGS / "digits_o2nc.yaml"), *overrides])
    last = next(tmp_path.rglob("last.ckpt"))
    main(
        [
            "test",
            "--config",
            str(CONFIGS / "digits_o2nc.yaml"),
            "--ckpt_path",
            str(last),
            *overrides,
        ]
    )
    scalars = SummaryReader(str(tmp_path)).scalars
    test_acc = scalars[scalars.tag == "test/acc"].value.iloc[-1]
    test_acc_avg = scalars[scalars.tag == "test/acc_avg"].value.iloc[-1]
    assert test_acc > 0.9
    assert test_acc_avg > 0.9


# ------------------------------------------------------------------ one-line errors, --help
@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (["--model.beta", "1.5"], "Invalid beta: 1.5; expected 0 <= beta < 1 (model.beta)"),
        (["--model.backbone", "nope"], "Unknown backbone 'nope'"),
        (["--data.init_args.batch_size", "0"], "batch_size must be >= 1, got 0 (data.init_args"),
        (["--model.lrr", "1"], "unrecognized arguments: --model.lrr 1"),
        # the horizon is known only once the Trainer has the data: checked before the first step
        (
            ["--model.schedules", "{lr: {shape: warmup_cosine, warmup_steps: 1000}}"],
            "warmup_steps=1000 must be an int in [0, total_steps=8] (model.schedules)",
        ),
    ],
)
def test_a_bad_value_stops_o2nc_train_before_training_with_one_line(
    tmp_path, capsys, monkeypatch, flags, line
):
    monkeypatch.delenv("O2NC_TRACEBACK", raising=False)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(_synthetic_config(tmp_path)))
    with pytest.raises(SystemExit) as stopped:
        main(["fit", "--config", str(config_path), *flags])
    assert stopped.value.code == 2
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert error.startswith("o2nc-train: error: ")
    assert line in error
    assert not list(tmp_path.rglob("*.ckpt"))


def test_o2nc_traceback_shows_the_full_traceback(tmp_path, monkeypatch):
    from lightning_o2nc.lightning.errors import RunConfigError

    monkeypatch.setenv("O2NC_TRACEBACK", "1")
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(_synthetic_config(tmp_path)))
    with pytest.raises(RunConfigError, match="Invalid beta") as raised:
        main(["fit", "--config", str(config_path), "--model.beta", "1.5"])
    assert isinstance(raised.value.__cause__, ValueError)


def test_build_run_refuses_a_bad_config_with_its_path(tmp_path):
    from lightning_o2nc.lightning.errors import RunConfigError

    config = _synthetic_config(tmp_path)
    config["model"]["backbone"] = "nope"
    with pytest.raises(RunConfigError) as raised:
        build_run(config, logger=False)
    assert raised.value.path == "model.backbone"


def test_build_run_reuses_one_parser_and_each_run_gets_its_own_values(tmp_path):
    """A sweep worker builds one run per trial; the parser is built once, the values never leak."""
    from lightning_o2nc.lightning import cli
    from lightning_o2nc.lightning.errors import RunConfigError

    first = _synthetic_config(tmp_path)
    _, model_a, _ = build_run(first, logger=False)
    parsers = dict(cli._PARSERS)
    second = _synthetic_config(tmp_path)
    second["model"].update(lr=0.02, beta=0.5)
    second["data"]["init_args"]["batch_size"] = 8
    _, model_b, datamodule_b = build_run(second, logger=False)
    assert parsers == cli._PARSERS  # no new parser
    assert (model_a.hparams.lr, model_a.hparams.beta) == (0.1, 0.9)
    assert (model_b.hparams.lr, model_b.hparams.beta) == (0.02, 0.5)
    assert datamodule_b.batch_size == 8
    bad = _synthetic_config(tmp_path)
    bad["model"]["beta"] = 1.5
    with pytest.raises(RunConfigError, match="beta"):
        build_run(bad, logger=False)
    _, model_c, _ = build_run(_synthetic_config(tmp_path), logger=False)  # and it still parses
    assert model_c.hparams.beta == 0.9


def test_a_build_run_checkpoint_loads_with_load_from_checkpoint(tmp_path):
    """build_run leaves LightningCLI's instantiator out: O2NCModule records its own arguments."""
    from lightning_o2nc.lightning import O2NCModule

    config = _synthetic_config(tmp_path)
    config["model"]["lr"] = 0.03
    trainer, model, datamodule = build_run(config, trainer_overrides={"max_epochs": 1})
    trainer.fit(model, datamodule=datamodule)
    last = Path(trainer.checkpoint_callback.last_model_path)
    loaded = O2NCModule.load_from_checkpoint(last, weights_only=True)
    assert loaded.hparams.lr == 0.03 and loaded.hparams.num_classes == model.hparams.num_classes
    for ours, theirs in zip(loaded.parameters(), model.parameters(), strict=True):
        assert torch.equal(ours, theirs)


def test_fit_help_fits_a_few_screens_with_the_o2nc_options_first(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["fit", "--help"])
    assert stopped.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) < 600  # was 1940: every nn.Module subclass under --model.backbone and .loss
    first = {
        flag: next(i for i, t in enumerate(lines) if t.lstrip().startswith(flag))
        for flag in (
            "--model.lr",
            "--model.beta",
            "--model.mu",
            "--model.schedules",
            "--data ",
            "--trainer.max_epochs",
        )
    }
    assert max(first[f] for f in ("--model.lr", "--model.beta", "--model.mu")) < 80
    assert first["--data "] < first["--trainer.max_epochs"]
    assert not any("torch.nn.Linear" in line for line in lines)
    assert not any(line.lstrip().startswith("--optimizer") for line in lines)


def test_ckpt_path_last_picks_the_newest_version_holding_last_ckpt(tmp_path):
    from lightning_o2nc.lightning.run_folders import latest_resumable_version, logger_run_folder

    run = tmp_path / "runs" / "digits"
    for version, has_last in ((0, True), (1, False), (2, True), (10, True), (11, False)):
        folder = run / f"version_{version}"
        (folder / "checkpoints").mkdir(parents=True)
        if has_last:
            (folder / "checkpoints" / "last.ckpt").touch()
    logger = {
        "class_path": "TensorBoardLogger",
        "init_args": {"save_dir": str(tmp_path / "runs"), "name": "digits"},
    }
    assert logger_run_folder(logger) == (run, None)
    assert latest_resumable_version(run) == (10, run / "version_10/checkpoints/last.ckpt")
    assert latest_resumable_version(run, version=2) == (2, run / "version_2/checkpoints/last.ckpt")
    assert latest_resumable_version(run, version=1) is None
    assert latest_resumable_version(tmp_path / "none") is None
    assert logger_run_folder(None) is None


def test_fit_with_ckpt_path_last_continues_the_runs_latest_version(tmp_path):
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(_synthetic_config(tmp_path)))
    main(["fit", "--config", str(config_path)])
    main(["test", "--config", str(config_path), "--ckpt_path", "last"])  # version_1, no checkpoint
    main(["fit", "--config", str(config_path), "--trainer.max_epochs=3", "--ckpt_path", "last"])
    run = tmp_path / "runs" / "synthetic"
    assert sorted(p.name for p in run.iterdir()) == ["version_0", "version_1"]
    steps = torch.load(run / "version_0/checkpoints/last.ckpt", weights_only=True)["global_step"]
    assert steps == 3 * 4  # 64 training examples in batches of 16, three epochs in all
    assert "test/acc" in set(SummaryReader(str(run / "version_1")).scalars.tag)
