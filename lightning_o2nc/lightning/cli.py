"""``o2nc-train``: LightningCLI for O2NCModule and the included data modules.

    o2nc-train fit --config digits_o2nc
    o2nc-train test --config digits_o2nc --ckpt_path runs/.../last.ckpt
    o2nc-train fit --config ... --trainer.strategy=ddp --trainer.devices=4

The task follows the data module (``data.class_path``): a :class:`~.text_data.CharTextDataModule`
(or a subclass) trains :class:`~.language_module.CharLanguageModule`, every other data module
:class:`O2NCModule`. Either way the model's options sit directly under ``model:`` (``model.lr``,
``model.schedules``, ...), so train configs and sweep paths look the same for both tasks.

Defaults: a TensorBoardLogger under ``runs/`` (HParams dashboard filled at the end of fit), a
RichProgressBar (without the logger's ``v_num``), and a ModelCheckpoint that also keeps
``last.ckpt``. ``data.input_shape`` and ``data.num_classes`` are linked into the model.

- ``--ckpt_path last`` resumes the newest version of the run (the logger's ``save_dir/name``)
  that holds a ``last.ckpt`` and keeps logging into it (see :mod:`.run_folders`).
- A bad value (model, data module, optimizer, schedule, Trainer, or a flag) stops the command before
  any training with one line, ``o2nc-train: error: <reason> (<config path>)``, and exit status 2;
  ``O2NC_TRACEBACK=1`` shows the traceback instead (:mod:`.errors`).
- ``--help`` lists the model and data options first; Lightning's tips about its cloud products
  and warnings a user cannot act on are not printed (:mod:`.quiet_output`).
"""

from __future__ import annotations

import copy
import inspect
import re
import sys
import traceback
import warnings
from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import Any

from jsonargparse import ArgumentError
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.loggers import Logger
from typing_extensions import override

from .cli_arguments import PlainHelpFormatter, with_config_names_resolved, without_fit_only_keys
from .data import ClassificationDataModule
from .errors import RunConfigError, exit_with_one_line, wants_traceback
from .packages import for_package, lightning_class, lightning_package, twins
from .parsed_configs import ParsedConfigs
from .quiet_output import silence_unactionable_output
from .run_folders import latest_resumable_version, logger_run_folder
from .tasks import data_class_path, task_classes

PROGRAM = "o2nc-train"
# a bad Trainer value (devices, strategy, ...), as raised by either Lightning package
_MISCONFIGURATION = twins("utilities.exceptions.MisconfigurationException")
SUBCOMMANDS = ("fit", "validate", "test", "predict")


def trainer_defaults(package: ModuleType) -> dict[str, Any]:
    """The Trainer defaults of ``o2nc-train`` with the classes of the Lightning ``package``.

    The logger is given as a ``class_path`` config rather than a ``lazy_instance``: jsonargparse
    caches lazy classes by class name, and both packages' loggers are named ``TensorBoardLogger``.
    """
    return {
        "logger": {
            "class_path": f"{package.__name__}.loggers.TensorBoardLogger",
            "init_args": {"save_dir": "runs", "name": "o2nc", "default_hp_metric": False},
        },
    }


#: Parsers of CLIs made with ``reuse_parser`` (build_run's), by what they were built from.
_PARSERS: dict[tuple[Any, ...], LightningArgumentParser] = {}
#: Their full parses of config dicts, reused for configs that differ only in numbers.
_PARSED_CONFIGS = ParsedConfigs()


@lightning_class("cli.LightningCLI")  # one body; for_package() puts it on pytorch_lightning too
class O2NCLightningCLI:
    """LightningCLI with the project's defaults and hooks for programmatic runs.

    Args:
        *args: Passed to :class:`~lightning.pytorch.cli.LightningCLI`.
        extra_callbacks: Callback objects added to those of the config.
        logger: A logger object (or ``False``) that replaces the config's logger.
        trainer_overrides: Trainer keyword arguments that replace the config's values.
        reuse_parser: Take the parser from an earlier CLI of the same classes and settings in
            this process, if there is one (:meth:`setup_parser`).
        **kwargs: Passed to :class:`~lightning.pytorch.cli.LightningCLI`.
    """

    def __init__(
        self,
        *args: Any,
        extra_callbacks: Iterable[Callback] = (),
        logger: Logger | bool | None = None,
        trainer_overrides: Mapping[str, Any] | None = None,
        reuse_parser: bool = False,
        **kwargs: Any,
    ):
        self._reuse_parser = reuse_parser
        self._extra_callbacks = list(extra_callbacks)
        self._logger_override = logger
        self._trainer_overrides = dict(trainer_overrides or {})
        try:
            super().__init__(*args, **kwargs)
        except ArgumentError as error:  # a flag or config key jsonargparse refused
            raise self._run_config_error(error) from error

    @override
    def setup_parser(
        self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]
    ) -> None:
        """LightningCLI's parser, taken from :data:`_PARSERS` with ``reuse_parser``.

        jsonargparse builds the parser from the classes' signatures, about a third of a CLI's
        start-up (~33 ms of ~90 for a sweep trial), and the same parser serves every trial of a
        worker: parsing keeps no state in it, and the instantiators LightningCLI registers on it
        for each CLI replace the previous CLI's (they are keyed by class).
        """
        key = (
            type(self), self.model_class, self.datamodule_class, self.subclass_mode_model,
            self.subclass_mode_data, add_subcommands, repr(self.trainer_defaults),
            repr(main_kwargs), repr(subparser_kwargs),
        )  # fmt: skip
        self._parser_key = key
        if self._reuse_parser and key in _PARSERS:
            self.parser = _PARSERS[key]
            return
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        if self._reuse_parser:
            _PARSERS[key] = self.parser

    @override
    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        # parse errors are raised (and printed as one line by main) instead of usage + exit
        kwargs.setdefault("exit_on_error", False)
        kwargs.setdefault("formatter_class", PlainHelpFormatter)  # plain text, lr/beta/mu first
        return super().init_parser(**kwargs)

    @override
    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """LightningCLI's core arguments, the model's and data module's first in ``--help``."""
        parser.add_lightning_class_args(
            self.model_class, "model", subclass_mode=self.subclass_mode_model
        )
        parser.add_lightning_class_args(
            self.datamodule_class, "data", subclass_mode=self.subclass_mode_data
        )
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults(
            {f"trainer.{k}": v for k, v in self.trainer_defaults.items() if k != "callbacks"}
        )

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """LightningCLI's parse; with ``reuse_parser``, a config dict that differs from one
        parsed before only in numbers reuses that parse (:mod:`.parsed_configs`), with the
        sections that hold those numbers validated."""
        reusable = self._reuse_parser and isinstance(args, Mapping)
        reused = _PARSED_CONFIGS.reuse(self._parser_key, args) if reusable else None
        if reused is not None:
            try:
                parser.validate(reused.changed_sections(), skip_required=True)
            except (TypeError, ValueError, KeyError, ArgumentError):
                reused = None  # a full parse reports it the way LightningCLI does
        if reused is not None:
            self.config = reused.parsed
        else:
            super().parse_arguments(parser, args)
            if reusable:
                _PARSED_CONFIGS.keep(self._parser_key, args, self.config)
        subcommand = self.config.get("subcommand")
        if subcommand and self.config[subcommand].get("ckpt_path") == "last":
            self._resolve_last_checkpoint(self.config[subcommand], resume=subcommand == "fit")

    def _resolve_last_checkpoint(self, config: Any, resume: bool) -> None:
        """``ckpt_path: last`` -> the ``last.ckpt`` of the run's newest version that holds one.

        A fit then logs into that version again (the resumed run continues where it stopped);
        other subcommands only read the checkpoint. Without one, ``last`` stays for Lightning.
        """
        found = logger_run_folder(config.trainer.logger)
        if found is None:  # no versioned logger: Lightning's default_root_dir/checkpoints
            return
        run_folder, version = found
        resumable = latest_resumable_version(run_folder, version)
        if resumable is None:
            return
        version, config.ckpt_path = resumable[0], str(resumable[1])
        if resume:
            logger = config.trainer.logger
            (logger[0] if isinstance(logger, list) else logger).init_args.version = version
            # resuming writes into the run's own checkpoint folder: that it is not empty is expected
            folder = re.escape(str(resumable[1].parent))
            warnings.filterwarnings(
                "ignore", f"Checkpoint directory .*{folder} exists and is not empty"
            )

    @override
    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except RunConfigError:
            raise
        except (ValueError, TypeError, *_MISCONFIGURATION) as error:
            raise self._run_config_error(error) from error

    def _run_config_error(self, error: BaseException) -> RunConfigError:
        """The error a component's ``__init__`` raised, with its config path, as one line.

        jsonargparse wraps such an error in its own (``Does not validate against any of the Union
        subtypes ...``); the innermost error of the chain that a component raised says what is wrong.
        """
        chain = []
        while error is not None and error not in chain:
            chain.append(error)
            error = error.__cause__ or error.__context__
        for cause in reversed(chain):
            if (path := self._config_path(cause)) is not None:
                return RunConfigError(" ".join(str(cause).split()), path)
        return RunConfigError(" ".join(str(chain[0]).split()))

    def _config_path(self, error: BaseException) -> str | None:
        """``model.beta`` for an error raised in a component's ``__init__`` that names an argument.

        The component is the object whose ``__init__`` raised (the outermost such frame); the
        argument is the first of its parameters the message names. ``None`` when neither is known.
        """
        package = self.lightning_package
        components = (
            ("model", package.LightningModule),
            ("data.init_args" if self.subclass_mode_data else "data", package.LightningDataModule),
            ("trainer", package.Trainer),
        )
        for frame, _ in traceback.walk_tb(error.__traceback__):
            component = frame.f_locals.get("self") if frame.f_code.co_name == "__init__" else None
            section = next((s for s, kind in components if isinstance(component, kind)), None)
            if section is None:
                continue
            message = str(error)
            named = [
                (match.start(), name)
                for name in self._argument_names(section, type(component))
                if (match := re.search(rf"\b{re.escape(name.rstrip('s'))}s?\b", message))
            ]
            return f"{section}.{min(named)[1]}" if named else section.removesuffix(".init_args")
        return None

    def _argument_names(self, section: str, component: type) -> list[str]:
        """The arguments of a config section: its keys (``**kwargs`` included) and the signature's."""
        parsed = getattr(self, "config", None)  # absent while the arguments are being parsed
        subcommand = parsed.get("subcommand") if parsed is not None else None
        config = parsed.get(str(subcommand), parsed).get(section) if parsed is not None else None
        keys = list(vars(config)) if config is not None and hasattr(config, "__dict__") else []
        return keys + [
            name
            for name, parameter in inspect.signature(component).parameters.items()
            if parameter.kind is not inspect.Parameter.VAR_KEYWORD and name not in keys
        ]

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        if not issubclass(self.datamodule_class, ClassificationDataModule):
            return  # a language model reads its vocabulary from the data module's setup
        parser.link_arguments("data.input_shape", "model.input_shape", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")

    @override
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        # the config of the subcommand that runs (or the whole config without subcommands)
        subcommand_config = self.config_init.get(str(self.subcommand), self.config_init)
        config = {
            **subcommand_config.get("trainer", {}),
            **self._trainer_overrides,
            **kwargs,
        }
        callbacks = config.get("callbacks") or []
        callbacks = [
            *(callbacks if isinstance(callbacks, list) else [callbacks]),
            *self._extra_callbacks,
        ]
        package_callbacks = self.lightning_package.callbacks
        if config.get("enable_progress_bar", True) is not False and not any(
            isinstance(c, package_callbacks.ProgressBar) for c in callbacks
        ):
            callbacks.append(for_package(ProgressBarWithoutVersion, self.lightning_package)())
        if config.get("enable_checkpointing", True) is not False and not any(
            isinstance(c, package_callbacks.ModelCheckpoint) for c in callbacks
        ):
            callbacks.append(package_callbacks.ModelCheckpoint(save_last=True))
        overrides = {**self._trainer_overrides, **kwargs, "callbacks": callbacks}
        if self._logger_override is not None:
            overrides["logger"] = self._logger_override
        return super().instantiate_trainer(**overrides)


@lightning_class("callbacks.RichProgressBar")
class ProgressBarWithoutVersion:
    """Lightning's RichProgressBar without ``v_num`` (the logger's version folder, not a metric)."""

    @override
    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


def _usage(subcommand: str) -> str:
    return (
        f"{PROGRAM} {subcommand} [-h] [-c CONFIG] [--print_config] [--model.ARG VALUE] "
        "[--data CLASS] [--data.init_args.ARG VALUE] [--trainer.ARG VALUE] [--ckpt_path PATH]"
    )


def _cli(**kwargs: Any) -> O2NCLightningCLI:
    """The CLI under the Lightning package of ``$O2NC_LIGHTNING_PACKAGE`` (``lightning.pytorch``
    by default, or ``pytorch_lightning``), for the task of the config's data module."""
    kwargs.setdefault("save_config_kwargs", {"overwrite": True})
    kwargs.setdefault("parser_kwargs", {name: {"usage": _usage(name)} for name in SUBCOMMANDS})
    silence_unactionable_output()
    package = lightning_package()
    model_class, datamodule_class = task_classes(data_class_path(kwargs.get("args")))
    return for_package(O2NCLightningCLI, package)(
        for_package(model_class, package),
        datamodule_class,
        subclass_mode_data=True,
        trainer_defaults=trainer_defaults(package),
        # O2NCModule configures its optimizer: no --optimizer / --lr_scheduler groups
        auto_configure_optimizers=False,
        **kwargs,
    )


def build_run(
    config: Mapping[str, Any],
    extra_callbacks: Iterable[Callback] = (),
    logger: Logger | bool | None = None,
    trainer_overrides: Mapping[str, Any] | None = None,
    save_config: bool = True,
) -> tuple[Trainer, LightningModule, Any]:
    """Builds (without running) the Trainer, model and data module of a train config.

    Args:
        config: A LightningCLI config as a dict (``seed_everything``, ``trainer``, ``model``,
            ``data``), e.g. ``yaml.safe_load`` of a file in ``lightning_o2nc/configs/train/``.
        extra_callbacks: Callback objects added to the config's callbacks (e.g. a pruning callback).
        logger: A logger object (or ``False``) that replaces the config's logger.
        trainer_overrides: Trainer keyword arguments that replace the config's values.
        save_config: Save the resolved config as ``config.yaml`` in the logger's directory when
            fit starts (never with ``logger=False``). A caller that writes the config itself (a
            sweep trial) saves the ~15 ms LightningCLI takes to dump it.

    Runs built in one process share one parser (a sweep worker builds one run per trial), and
    the model records its own arguments for ``load_from_checkpoint``, so LightningCLI's
    checkpoint instantiator is left out.

    Returns:
        ``(trainer, model, datamodule)``; run it with ``trainer.fit(model, datamodule=datamodule)``.

    A config printed by ``o2nc-train fit --print_config`` works as it is: its ``fit``-only keys
    (``ckpt_path``, ``weights_only``) are dropped while they are null; a set ``ckpt_path`` is an
    error, since a built run starts from its config's weights.

    Raises:
        RunConfigError: A value of the config is invalid (the message names it and its path).
    """
    cli = _cli(
        args=copy.deepcopy(without_fit_only_keys(config)),
        run=False,
        extra_callbacks=extra_callbacks,
        logger=logger,
        trainer_overrides=trainer_overrides,
        reuse_parser=True,  # a sweep worker builds one run per trial
        # O2NCModule saves its own hyper-parameters, so load_from_checkpoint needs no CLI
        # instantiator; LightningCLI's would dump the whole config per run (~15 ms) to record it
        load_from_checkpoint_support=False,
        # without a logger the config would land in the working directory: keep it out
        **({"save_config_callback": None} if logger is False or not save_config else {}),
    )
    return cli.trainer, cli.model, cli.datamodule


def main(args: list[str] | None = None) -> None:
    """Entry point of ``o2nc-train`` (``fit``, ``validate``, ``test``, ``predict``).

    A bad value in the config or the flags (:class:`RunConfigError`, raised before any training
    step) is printed as one line and exits with status 2, unless ``O2NC_TRACEBACK=1``.

    ``--config`` takes a path or the name of a shipped train config (``o2nc-sweep configs``
    lists them; an existing path wins); ``--version`` prints the version.

    Args:
        args: Command-line arguments; ``None`` reads ``sys.argv``.
    """
    given = list(sys.argv[1:] if args is None else args)
    if given == ["--version"]:
        from .. import __version__

        print(f"{PROGRAM} (lightning-o2nc) {__version__}")
        return
    try:
        resolved = with_config_names_resolved(given)
        if args is None:  # LightningCLI reads sys.argv itself (and warns when given both)
            sys.argv[1:] = resolved
        _cli(args=None if args is None else resolved)
    except RunConfigError as error:
        if wants_traceback():
            raise
        exit_with_one_line(PROGRAM, error)


if __name__ == "__main__":
    main()
