"""``o2nc-train``'s command line around LightningCLI: config names in, plain ``--help`` out.

- :func:`with_config_names_resolved` turns ``--config digits_o2nc`` into the shipped file's path
  before LightningCLI parses (:mod:`lightning_o2nc.shipped_configs`).
- :class:`PlainHelpFormatter` prints ``--help`` without the docstrings' RST markup, with lr,
  beta and mu first among the model's options.
"""

from __future__ import annotations

import copy
import re
from argparse import Action
from collections.abc import Iterable, Mapping
from typing import Any

from jsonargparse import DefaultHelpFormatter

from lightning_o2nc.shipped_configs import resolve_config

from .errors import RunConfigError

__all__ = [
    "FIT_ONLY_KEYS",
    "PlainHelpFormatter",
    "with_config_names_resolved",
    "without_fit_only_keys",
]


def with_config_names_resolved(args: list[str]) -> list[str]:
    """``args`` with every ``--config``/``-c`` value that names a shipped train config replaced
    by its path. Done before LightningCLI parses: jsonargparse reads a ``--config`` that is not a
    file as YAML text, so a bare name would otherwise become the string ``"digits_o2nc"``.

    Raises:
        RunConfigError: a value that looks like a path or a name is neither.
    """
    resolved = []
    expect_config = False
    for arg in args:
        flag, equals, value = arg.partition("=")
        try:
            if expect_config:
                arg = resolve_config(arg, "train")
            elif equals and flag in ("--config", "-c"):
                arg = f"{flag}={resolve_config(value, 'train')}"
        except ValueError as error:
            raise RunConfigError(str(error)) from None
        expect_config = arg in ("--config", "-c")
        resolved.append(arg)
    return resolved


#: Keys ``o2nc-train fit --print_config`` writes that are arguments of ``fit``, not of the run.
FIT_ONLY_KEYS = ("ckpt_path", "weights_only")


def without_fit_only_keys(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` without :data:`FIT_ONLY_KEYS` that are null, so that a printed config builds.

    Raises:
        RunConfigError: one of them is set (a run built from a config starts from its weights).
    """
    config = dict(config)
    for key in FIT_ONLY_KEYS:
        if config.get(key) is not None:
            raise RunConfigError(
                f"{key}: {config[key]!r} belongs to `o2nc-train fit`, not to a run built from a "
                "config (a sweep trial starts from scratch); remove it",
                key,
            )
        config.pop(key, None)
    return config


#: ``--help`` lists these model options first: the algorithm's three hyper-parameters.
FIRST_IN_HELP = ("model.lr", "model.beta", "model.mu")
#: Sphinx roles and RST literals in docstrings: ``x`` and :class:`~a.b.X` print as x and X.
_RST_MARKUP = re.compile(r"(?::[a-z]+:`~?([^`]+)`|``([^`]+)``)")


def _plain(text: str | None) -> str | None:
    return _RST_MARKUP.sub(lambda m: m.group(1) or m.group(2), text) if text else text


class PlainHelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help formatter, printing plain text with lr, beta and mu first.

    The help strings come from docstrings written for the documentation site, whose RST markup
    (double backticks, ``:class:`` roles) reads as noise in a terminal. Only argparse's public
    formatter methods are overridden: each action is formatted from a copy whose ``help`` is
    plain, and a group's actions are formatted in a stable order that moves ``--model.lr``,
    ``--model.beta`` and ``--model.mu`` to the front (after ``--model CONFIG``).
    """

    def start_section(self, heading: str | None) -> None:
        super().start_section(_plain(heading))

    def add_text(self, text: str | None) -> None:
        super().add_text(_plain(text))

    def add_arguments(self, actions: Iterable[Action]) -> None:
        rank = {dest: i for i, dest in enumerate(FIRST_IN_HELP)}
        super().add_arguments(
            sorted(actions, key=lambda a: -1 if a.dest == "model" else rank.get(a.dest, len(rank)))
        )

    def add_argument(self, action: Action) -> None:
        if action.help:
            action = copy.copy(action)
            action.help = _plain(action.help)
        super().add_argument(action)
