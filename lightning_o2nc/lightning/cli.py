"""``o2nc-train``: LightningCLI for O2NCModule and the included data modules.

    o2nc-train fit --config configs/train/digits_o2nc.yaml
    o2nc-train test --config configs/train/digits_o2nc.yaml --ckpt_path runs/.../last.ckpt
    o2nc-train fit --config ... --trainer.strategy=ddp --trainer.devices=4

Defaults: a TensorBoardLogger under ``runs/`` (HParams dashboard filled at the end of fit), a
RichProgressBar, and a ModelCheckpoint that also keeps ``last.ckpt`` (for ``--ckpt_path last``).
``data.input_shape`` and ``data.num_classes`` are linked into the model.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from jsonargparse import lazy_instance
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from typing_extensions import override

from .data import ClassificationDataModule
from .module import O2NCModule

TRAINER_DEFAULTS: dict[str, Any] = {
    "logger": lazy_instance(
        TensorBoardLogger, save_dir="runs", name="o2nc", default_hp_metric=False
    ),
}


class O2NCLightningCLI(LightningCLI):
    """LightningCLI with the project's defaults and hooks for programmatic runs.

    Args:
        *args: Passed to :class:`~lightning.pytorch.cli.LightningCLI`.
        extra_callbacks: Callback objects added to those of the config.
        logger: A logger object (or ``False``) that replaces the config's logger.
        trainer_overrides: Trainer keyword arguments that replace the config's values.
        **kwargs: Passed to :class:`~lightning.pytorch.cli.LightningCLI`.
    """

    def __init__(
        self,
        *args: Any,
        extra_callbacks: Iterable[Callback] = (),
        logger: Logger | bool | None = None,
        trainer_overrides: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ):
        self._extra_callbacks = list(extra_callbacks)
        self._logger_override = logger
        self._trainer_overrides = dict(trainer_overrides or {})
        super().__init__(*args, **kwargs)

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.input_shape", "model.input_shape", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")

    @override
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = {
            **self._get(self.config_init, "trainer", default={}),
            **self._trainer_overrides,
            **kwargs,
        }
        callbacks = config.get("callbacks") or []
        callbacks = [
            *(callbacks if isinstance(callbacks, list) else [callbacks]),
            *self._extra_callbacks,
        ]
        if config.get("enable_progress_bar", True) is not False and not any(
            isinstance(c, ProgressBar) for c in callbacks
        ):
            callbacks.append(RichProgressBar())
        if config.get("enable_checkpointing", True) is not False and not any(
            isinstance(c, ModelCheckpoint) for c in callbacks
        ):
            callbacks.append(ModelCheckpoint(save_last=True))
        overrides = {**self._trainer_overrides, **kwargs, "callbacks": callbacks}
        if self._logger_override is not None:
            overrides["logger"] = self._logger_override
        return super().instantiate_trainer(**overrides)


def _cli(**kwargs: Any) -> O2NCLightningCLI:
    kwargs.setdefault("save_config_kwargs", {"overwrite": True})
    return O2NCLightningCLI(
        O2NCModule,
        ClassificationDataModule,
        subclass_mode_data=True,
        trainer_defaults=TRAINER_DEFAULTS,
        **kwargs,
    )


def build_run(
    config: Mapping[str, Any],
    extra_callbacks: Iterable[Callback] = (),
    logger: Logger | bool | None = None,
    trainer_overrides: Mapping[str, Any] | None = None,
) -> tuple[Trainer, LightningModule, ClassificationDataModule]:
    """Builds (without running) the Trainer, model and data module of a train config.

    Args:
        config: A LightningCLI config as a dict (``seed_everything``, ``trainer``, ``model``,
            ``data``), e.g. ``yaml.safe_load`` of a file in ``configs/train/``.
        extra_callbacks: Callback objects added to the config's callbacks (e.g. a pruning callback).
        logger: A logger object (or ``False``) that replaces the config's logger.
        trainer_overrides: Trainer keyword arguments that replace the config's values.

    The resolved config is saved as ``config.yaml`` in the logger's directory (not with
    ``logger=False``).

    Returns:
        ``(trainer, model, datamodule)``; run it with ``trainer.fit(model, datamodule=datamodule)``.
    """
    cli = _cli(
        args=copy.deepcopy(dict(config)),
        run=False,
        extra_callbacks=extra_callbacks,
        logger=logger,
        trainer_overrides=trainer_overrides,
        # without a logger the config would land in the working directory: keep it out
        save_config_callback=None if logger is False else SaveConfigCallback,
    )
    return cli.trainer, cli.model, cli.datamodule


def main(args: list[str] | None = None) -> None:
    """Entry point of ``o2nc-train`` (``fit``, ``validate``, ``test``, ``predict``).

    Args:
        args: Command-line arguments; ``None`` reads ``sys.argv``.
    """
    _cli(args=args)


if __name__ == "__main__":
    main()
