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
from lightning_o2nc.lightning import SyntheticDataModule
from lightning_o2nc.lightning.cli import build_run, main

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "train"


def _synthetic_config(tmp_path, **trainer):
    return {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 2,
            "accelerator": "cpu",
            "devices": 1,
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
            **trainer,
        },
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
    assert model.hparams.num_classes == datamodule.num_classes == 10
    assert tuple(model.hparams.input_shape) == datamodule.input_shape
    assert model.hparams.average is True
    assert model.hparams.optimizer == ("sgdm" if "sgdm" in path.name else "o2nc")


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
    assert model.hparams.input_shape == (1, 8, 8)


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
