"""``o2nc-train``'s command line around LightningCLI: config names in, plain ``--help`` out.

- :func:`with_config_names_resolved` turns ``--config digits_o2nc`` into the shipped file's path
  before LightningCLI parses (:mod:`lightning_o2nc.shipped_configs`).
- :func:`plain_help` strips the docstrings' RST markup from ``--help`` and lists lr, beta and mu
  first among the model's options.
"""

from __future__ import annotations

import re
from typing import Any

from lightning_o2nc.shipped_configs import resolve_config

from .errors import RunConfigError

__all__ = ["plain_help", "with_config_names_resolved"]


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


#: ``--help`` lists these model options first: the algorithm's three hyper-parameters.
_FIRST_IN_HELP = ("model.lr", "model.beta", "model.mu")
#: Sphinx roles and RST literals in docstrings: ``x`` and :class:`~a.b.X` print as x and X.
_RST_MARKUP = re.compile(r"(?::[a-z]+:`~?([^`]+)`|``([^`]+)``)")


def plain_help(parser: Any) -> None:
    """``--help`` as plain text, with lr, beta and mu first among the model's options.

    The help strings come from docstrings written for the documentation site, whose RST markup
    reads as noise in a terminal. argparse prints a group's options in the order of its
    ``_group_actions``, so a stable sort moves the three to the front (after ``--model CONFIG``).
    """

    def plain(text: str | None) -> str | None:
        return _RST_MARKUP.sub(lambda m: m.group(1) or m.group(2), text) if text else text

    subcommands = getattr(parser, "_subcommands_action", None)
    for subparser in getattr(subcommands, "_name_parser_map", {}).values():
        plain_help(subparser)
    for action in parser._actions:
        action.help = plain(action.help)
    for group in parser._action_groups:
        group.title, group.description = plain(group.title), plain(group.description)
        rank = {dest: i for i, dest in enumerate(_FIRST_IN_HELP)}
        if any(action.dest in rank for action in group._group_actions):
            group._group_actions.sort(
                key=lambda a: -1 if a.dest == "model" else rank.get(a.dest, len(rank))
            )
