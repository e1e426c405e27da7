"""Both Lightning packages: ``lightning.pytorch`` and the standalone ``pytorch_lightning``.

The two distributions ship the same code under two import names. At one version their classes
are twins, not the same objects, so a Trainer of one package refuses a LightningModule or
LightningDataModule of the other: ``is_overridden`` finds no parent class it knows and raises
``ValueError: Expected a parent``. This module lets one code base serve both:

* :class:`Callback` and :class:`LightningDataModule` derive from the twin classes of every
  installed package. Our callbacks and data modules derive from them, so one class is accepted by
  either package's Trainer, and the user's Trainer decides which package a run uses.
* A class that a Trainer drives through the machinery it inherits (a ``LightningModule``: logging,
  optimizers, hooks; the ``LightningCLI``) cannot mix both packages' machinery. It is written once
  as a plain body class under :func:`lightning_class`, and :func:`for_package` puts that body on
  either package's base class. ``lightning_o2nc.lightning`` holds the ``lightning.pytorch``
  classes, ``lightning_o2nc.pytorch_lightning`` the ``pytorch_lightning`` ones.
* Our own entry points (``o2nc-train``, a sweep's trials) run under the package named by the
  environment variable ``O2NC_LIGHTNING_PACKAGE`` (``lightning.pytorch``, the default, or
  ``pytorch_lightning``); see :func:`lightning_package`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
from collections.abc import Callable
from types import ModuleType
from typing import TypeVar

PACKAGES = ("lightning.pytorch", "pytorch_lightning")
DEFAULT_PACKAGE = "lightning.pytorch"
ENV_VAR = "O2NC_LIGHTNING_PACKAGE"
#: Where each package's classes of this project live (the module a flavour's ``__module__`` names).
FLAVOUR_MODULES = {
    "lightning.pytorch": "lightning_o2nc.lightning",
    "pytorch_lightning": "lightning_o2nc.pytorch_lightning",
}
_DISTRIBUTIONS = {"lightning.pytorch": "lightning", "pytorch_lightning": "pytorch-lightning"}

T = TypeVar("T", bound=type)


def lightning_package(name: str | None = None) -> ModuleType:
    """The Lightning package module named ``name``; ``None`` reads ``$O2NC_LIGHTNING_PACKAGE``.

    Args:
        name: ``"lightning.pytorch"`` or ``"pytorch_lightning"``; ``None``: the environment
            variable, else ``lightning.pytorch``.

    Raises:
        ValueError: The name is neither package.
        ModuleNotFoundError: The package is not installed (the message says what to install).
    """
    source = "the argument"
    if name is None:
        name, source = os.environ.get(ENV_VAR) or DEFAULT_PACKAGE, f"${ENV_VAR}"
    if name not in PACKAGES:
        raise ValueError(
            f"{source} names the Lightning package {name!r}; valid names: {', '.join(PACKAGES)}"
        )
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            f"the Lightning package {name!r} (from {source}) is not installed: "
            f"pip install {_DISTRIBUTIONS[name]}"
        ) from error


@functools.cache
def installed_packages() -> tuple[ModuleType, ...]:
    """``lightning.pytorch`` (a dependency) and ``pytorch_lightning`` when it is installed."""
    found = [importlib.import_module(DEFAULT_PACKAGE)]
    # Importing a Lightning package points lightning_utilities' shared rank-zero logger at that
    # package's logger; keep it where it was, so `lightning.pytorch` log levels still apply.
    rank_zero = importlib.import_module("lightning_utilities.core.rank_zero")
    rank_zero_logger = rank_zero.log
    with contextlib.suppress(ModuleNotFoundError):
        found.append(importlib.import_module("pytorch_lightning"))
    rank_zero.log = rank_zero_logger
    return tuple(found)


@functools.cache
def twins(path: str) -> tuple[type, ...]:
    """The class at ``path`` (e.g. ``"loggers.TensorBoardLogger"``) in every installed package,
    for ``isinstance`` checks that hold under either package's Trainer (looked up once: the
    monitor checks its loggers at every logging step)."""
    return tuple(_lookup(package, path) for package in installed_packages())


def _lookup(package: ModuleType, path: str) -> type:
    *modules, name = path.split(".")
    module = importlib.import_module(".".join([package.__name__, *modules]))
    return getattr(module, name)


def _both(path: str, name: str, doc: str) -> type:
    bases = twins(path)
    return type(name, bases, {"__doc__": doc, "__module__": __name__, "__qualname__": name})


Callback = _both(
    "callbacks.Callback",
    "Callback",
    "Base of this project's callbacks: a ``Callback`` of every installed Lightning package, so "
    "one instance works with a ``lightning.pytorch.Trainer`` and a ``pytorch_lightning.Trainer``.",
)
LightningDataModule = _both(
    "LightningDataModule",
    "LightningDataModule",
    "Base of this project's data modules: a ``LightningDataModule`` of every installed Lightning "
    "package, so one data module works with either package's Trainer.",
)
MisconfigurationException = _both(
    "utilities.exceptions.MisconfigurationException",
    "MisconfigurationException",
    "A misconfiguration, catchable as either package's ``MisconfigurationException``.",
)


def lightning_class(base: str) -> Callable[[T], T]:
    """Class decorator: the decorated body class becomes a subclass of ``base`` of a Lightning package.

    The body holds the methods only (its ``super()`` calls reach ``base``). The decorated name is
    bound to the ``lightning.pytorch`` class; ``for_package(cls, "pytorch_lightning")`` gives the
    same body on ``pytorch_lightning``'s ``base``.

    Args:
        base: A path inside a Lightning package, e.g. ``"LightningModule"`` or ``"cli.LightningCLI"``.
    """

    def decorate(body: T) -> T:
        body._lightning_base = base
        return _materialize(body, DEFAULT_PACKAGE)

    return decorate


def for_package(cls: T, package: str | ModuleType | None = None) -> T:
    """The twin of one of this project's Lightning classes (e.g. ``O2NCModule``) for ``package``.

    Classes made by :func:`lightning_class` come back rebuilt on ``package``; classes that already
    serve both packages (callbacks, data modules) come back unchanged.

    Args:
        cls: A class of this project, as imported from ``lightning_o2nc.lightning`` or
            ``lightning_o2nc.pytorch_lightning``.
        package: ``"lightning.pytorch"``, ``"pytorch_lightning"``, the package module itself, or
            ``None`` for :func:`lightning_package`'s choice.

    Raises:
        TypeError: ``cls`` is a subclass defined outside this project; derive it from the class
            of the package your code imports instead.
    """
    name = (
        package.__name__ if isinstance(package, ModuleType) else lightning_package(package).__name__
    )
    body = cls.__dict__.get("_lightning_body")
    if body is not None:
        return _materialize(body, name)
    if issubclass(cls, (Callback, LightningDataModule)):
        return cls
    raise TypeError(
        f"for_package({cls.__qualname__}) needs one of lightning_o2nc's own classes; a subclass "
        f"defined elsewhere cannot change its Lightning package: derive it from the class in "
        f"{FLAVOUR_MODULES[name]} instead"
    )


@functools.cache
def _materialize(body: type, package_name: str) -> type:
    package = importlib.import_module(package_name)
    base = _lookup(package, body._lightning_base)
    namespace = {
        "__module__": body.__module__
        if package_name == DEFAULT_PACKAGE
        else FLAVOUR_MODULES[package_name],
        "__qualname__": body.__qualname__,
        "__doc__": body.__doc__,
        "_lightning_body": body,
        "lightning_package": package,
    }
    return type(body.__name__, (body, base), namespace)
