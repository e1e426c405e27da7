"""O2NC-AdamW and the AdamW baseline with x_bar through Lightning: O2NCModule, both callbacks,
checkpoints, both Lightning packages, and a user's own module under a plain LightningCLI."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import lightning.pytorch
import pytest
import pytorch_lightning
import torch
import yaml
from tbparse import SummaryReader

import lightning_o2nc.lightning as o2nc_lightning
import lightning_o2nc.pytorch_lightning as o2nc_pytorch_lightning
from lightning_o2nc import O2NCAdamW, RandomScaling
from tests.lightning.pl_user_code import UserData, UserNet
from tests.train_configs import QUIET_CPU

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {"lightning.pytorch": lightning.pytorch, "pytorch_lightning": pytorch_lightning}
FLAVOURS = {"lightning.pytorch": o2nc_lightning, "pytorch_lightning": o2nc_pytorch_lightning}
WRAPPER_STATISTICS = (
    "o2nc/scale",
    "o2nc/update_norm",
    "o2nc/grad_ema_norm",
    "o2nc/iterate_variance",
    "o2nc/stationarity_certificate",
)
QUIET = {**QUIET_CPU, "num_sanity_val_steps": 0, "deterministic": True}


def _module(flavour, optimizer="o2nc_adamw", **kwargs):
    options = dict(backbone="mlp", input_shape=(1, 8, 8), num_classes=4, lr=3e-3, seed=0)
    return flavour.O2NCModule(optimizer=optimizer, **{**options, **kwargs})


def _data(flavour):
    return flavour.SyntheticDataModule(
        num_samples=192, input_shape=(1, 8, 8), num_classes=4, batch_size=16, seed=0
    )


@pytest.mark.parametrize("package", PACKAGES)
def test_o2nc_adamw_fit_logs_the_wrappers_statistics_its_betas_and_x_bar_metrics(package, tmp_path):
    pl, flavour = PACKAGES[package], FLAVOURS[package]
    logger = pl.loggers.TensorBoardLogger(tmp_path, name="o2nc_adamw", default_hp_metric=False)
    trainer = pl.Trainer(
        **{**QUIET, "logger": logger}, max_epochs=2, log_every_n_steps=4, default_root_dir=tmp_path
    )
    beta_schedule = {"shape": "linear", "start_factor": 1.0, "end_factor": 0.5}
    model = _module(flavour, schedules={"beta": beta_schedule}, beta2=0.99, weight_decay=0.05)
    assert sorted(type(c).__name__ for c in model.configure_callbacks()) == [
        "AveragedIterate",
        "O2NCMonitor",
    ]
    torch.manual_seed(0)
    trainer.fit(model, datamodule=_data(flavour))

    optimizer = trainer.optimizers[0]
    assert (
        isinstance(optimizer, O2NCAdamW)
        and optimizer.average
        and optimizer.scaling == "exponential"
    )
    assert optimizer.optimizer.param_groups[0]["betas"] == pytest.approx((0.45, 0.99))  # driven
    metrics = trainer.callback_metrics
    assert metrics["val/acc_avg"] > 0.5 and float(metrics["val/loss_avg"]) != float(
        metrics["val/loss"]
    )
    scalars = SummaryReader(logger.log_dir, pivot=False).scalars
    tags = set(scalars.tag)
    assert set(WRAPPER_STATISTICS) <= tags
    for name in ("lr", "beta", "beta2", "weight_decay"):
        assert {f"o2nc/{name}/group0", f"o2nc/{name}/group1"} <= tags, name
    assert not any(tag.startswith("o2nc/mu/") for tag in tags)  # AdamW has no mu
    betas = list(scalars[scalars.tag == "o2nc/beta/group1"].value)
    assert betas == sorted(betas, reverse=True) and betas[0] < 0.9
    assert betas[-1] == pytest.approx(0.45, abs=1e-6)  # float32 in TensorBoard
    for tag, value in (
        ("o2nc/beta2/group1", 0.99),
        ("o2nc/weight_decay/group0", 0.0),  # biases: the factory's no-decay group
        ("o2nc/weight_decay/group1", 0.05),
    ):
        assert list(scalars[scalars.tag == tag].value) == [pytest.approx(value)] * len(betas), tag
    scales = list(scalars[scalars.tag == "o2nc/scale"].value)
    assert len(set(scales)) == len(scales) > 1  # one Exp(1) draw per step


def test_the_adamw_baseline_with_x_bar_keeps_plain_adamws_trajectory(tmp_path):
    def fit(**kwargs):
        torch.manual_seed(0)
        model = _module(o2nc_lightning, optimizer="adamw", monitor=False, **kwargs)
        trainer = lightning.pytorch.Trainer(**QUIET, max_epochs=2, default_root_dir=tmp_path)
        trainer.fit(model, datamodule=_data(o2nc_lightning))
        return trainer, model

    plain_trainer, plain = fit()
    assert plain.hparams.average is False and type(plain_trainer.optimizers[0]) is torch.optim.AdamW
    trainer, averaged = fit(average=True)
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, RandomScaling) and optimizer.scaling == "none"
    assert type(optimizer.optimizer) is torch.optim.AdamW
    for name, tensor in plain.state_dict().items():
        assert torch.equal(averaged.state_dict()[name], tensor), name
    assert "val/acc_avg" in trainer.callback_metrics
    assert "val/acc_avg" not in plain_trainer.callback_metrics


@pytest.mark.parametrize(
    ("optimizer", "kwargs"), [("o2nc_adamw", {}), ("adamw", {"average": True})]
)
def test_testing_a_checkpoint_rebuilds_the_wrapper_and_evaluates_its_x_bar(
    optimizer, kwargs, tmp_path
):
    pl = lightning.pytorch
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = pl.Trainer(
        **{**QUIET, "enable_checkpointing": True},
        max_epochs=2,
        callbacks=[checkpoint],
        default_root_dir=tmp_path,
    )
    torch.manual_seed(0)
    model = _module(o2nc_lightning, optimizer=optimizer, monitor=False, **kwargs)
    trainer.fit(model, datamodule=_data(o2nc_lightning))
    live = trainer.optimizers[0]
    live.eval()
    x_bar = {k: v.clone() for k, v in model.state_dict().items()}
    live.train()

    # a module of another optimizer name: the checkpoint's own record says what to rebuild
    fresh = _module(o2nc_lightning, optimizer="o2nc", lr=0.1)
    result = pl.Trainer(**QUIET, default_root_dir=tmp_path).test(
        fresh, datamodule=_data(o2nc_lightning), ckpt_path=checkpoint.last_model_path, verbose=False
    )[0]
    at_x_bar = _module(o2nc_lightning, optimizer="o2nc", lr=0.1, average=False)
    at_x_bar.load_state_dict(x_bar)
    reference = pl.Trainer(**QUIET, default_root_dir=tmp_path).test(
        at_x_bar, datamodule=_data(o2nc_lightning), verbose=False
    )[0]
    assert result["test/loss_avg"] == pytest.approx(reference["test/loss"], rel=1e-6)
    assert result["test/loss"] != pytest.approx(reference["test/loss"])


def _example_cli():
    spec = importlib.util.spec_from_file_location(
        "any_optimizer_cli", REPO / "examples/any_optimizer_cli.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("package", PACKAGES)
def test_a_users_own_module_gets_o2nc_adamw_by_class_path_through_a_plain_lightning_cli(
    package, tmp_path, monkeypatch
):
    monkeypatch.setattr(sys, "argv", ["any_optimizer_cli.py"])  # as if run as a script
    config = yaml.safe_load((REPO / "examples/any_optimizer_cli.yaml").read_text())
    config["trainer"].update(
        max_epochs=2, limit_train_batches=6, limit_val_batches=2, default_root_dir=str(tmp_path),
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    config["trainer"]["logger"]["class_path"] = f"{package}.loggers.TensorBoardLogger"
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "runs")
    config["lr_scheduler"]["init_args"]["T_max"] = 12
    if package == "lightning.pytorch":  # the example script itself, as the docs show it
        run = _example_cli().main
    else:  # the same config for `import pytorch_lightning as pl` code: UserNet has 4 classes
        config["model"], config["data"] = {}, {"batch_size": 16}

        def run(args):
            return pytorch_lightning.cli.LightningCLI(UserNet, UserData, args=args)

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = run(["fit", "--config", str(path)])

    optimizer = cli.trainer.optimizers[0]
    assert type(optimizer) is O2NCAdamW and optimizer.average and optimizer.last_scale != 1.0
    assert optimizer.optimizer.param_groups[0]["betas"] == (0.9, 0.999)
    assert optimizer.optimizer.param_groups[0]["weight_decay"] == 0.01
    assert optimizer.param_groups[0]["lr"] < 0.003  # the cosine scheduler drives the base
    assert {"val/loss", "val/loss_avg", "val/acc_avg"} <= set(cli.trainer.callback_metrics)
    tags = set(SummaryReader(cli.trainer.logger.log_dir, pivot=False).scalars.tag)
    assert {"o2nc/scale", "o2nc/stationarity_certificate", "o2nc/beta2/group0"} <= tags


@pytest.mark.parametrize(
    ("name", "kwargs", "cls", "scaling", "callbacks"),
    [
        ("o2nc_adamw", {}, O2NCAdamW, "exponential", ["AveragedIterate", "O2NCMonitor"]),
        ("o2nc_adamw_uniform", {}, O2NCAdamW, "uniform", ["AveragedIterate", "O2NCMonitor"]),
        ("adamw", {}, torch.optim.AdamW, None, ["EndsProcessGroupAtExit"]),
        ("adamw", {"average": True}, RandomScaling, "none", ["AveragedIterate", "O2NCMonitor"]),
        ("o2nc_adamw", {"average": False}, O2NCAdamW, "exponential", ["O2NCMonitor"]),
    ],
)
def test_each_optimizer_name_gives_the_module_its_optimizer_and_callbacks(
    name, kwargs, cls, scaling, callbacks
):
    model = _module(o2nc_lightning, optimizer=name, **kwargs)
    (optimizer,), schedulers = model.configure_optimizers()
    assert type(optimizer) is cls and getattr(optimizer, "scaling", None) == scaling
    assert schedulers == []
    assert sorted(type(c).__name__ for c in model.configure_callbacks()) == callbacks
