"""The averaging optimizer of a checkpoint, rebuilt to read x_bar outside fit.

``trainer.validate`` / ``trainer.test`` with a ``ckpt_path`` run no ``configure_optimizers``, so
:class:`~.averaged_iterate.AveragedIterate` rebuilds the optimizer that kept x_bar from the
checkpoint: its own callback state records the optimizer's class (a ``RandomScaling``'s base
class too), and the optimizer state comes from the checkpoint's ``optimizer_states``. Classes are
looked up among the modules already imported, or imported from torch and this package only: a
checkpoint (loaded with ``weights_only=True``) never makes the program import other code.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch.optim import Optimizer

from ..optim import ExponentiatedO2NC
from ..optim.checkpoint_format import take_options
from ..optim.random_scaling import RandomScaling

__all__ = ["rebuild_optimizer", "rebuild_recipe"]

#: Modules a checkpoint may name for rebuilding its optimizer without being imported already.
_IMPORTABLE_ROOTS = ("torch", "lightning_o2nc")


def _class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def rebuild_recipe(opt: Any) -> dict[str, Any]:
    """What :func:`rebuild_optimizer` needs besides the optimizer state, as plain data for the callback
    state: the optimizer's class, a ``RandomScaling``'s base class, the scaling and x_bar's
    discount (neither is read back by ``load_state_dict``)."""
    recipe = {"optimizer": _class_name(type(opt)), "scaling": opt.scaling}
    if isinstance(opt, RandomScaling):
        recipe["base"] = _class_name(type(opt.optimizer))
        recipe["average_beta"] = opt.average_beta
    return recipe


def _optimizer_class(name: str) -> type[Optimizer] | None:
    """The optimizer class a checkpoint names: from a module already imported, or importable
    from torch or this package; ``None`` when it is neither."""
    module_name, _, class_name = name.rpartition(".")
    module = sys.modules.get(module_name)
    if module is None and module_name.split(".")[0] in _IMPORTABLE_ROOTS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            module = None
    cls = getattr(module, class_name, None) if module is not None else None
    if not (isinstance(cls, type) and issubclass(cls, Optimizer)):
        return None
    return cls


def rebuild_optimizer(
    entry: dict[str, Any], groups: list[dict[str, Any]], saved: dict[str, Any]
) -> Any:
    """The averaging optimizer of one layout entry over ``groups``, loaded from ``saved``.

    An entry written before the wrapper existed names no class: it is an ``ExponentiatedO2NC``.
    A ``RandomScaling`` is rebuilt around a fresh base of the recorded class (its
    hyper-parameters come back with the state), a subclass (``O2NCAdamW``) from the groups.
    """
    name = entry.get("optimizer", _class_name(ExponentiatedO2NC))
    cls = _optimizer_class(name)
    base_name = entry.get("base")
    base_cls = _optimizer_class(base_name) if base_name else None
    if cls is None or (cls is RandomScaling and base_cls is None):
        missing = name if cls is None else base_name
        rank_zero_warn(
            f"AveragedIterate cannot rebuild the optimizer {missing} of the checkpoint to read "
            "x_bar: import the module that defines it first. Only the current weights are evaluated."
        )
        return None
    if issubclass(cls, ExponentiatedO2NC):
        _, options = take_options(saved)
        scaling = (options or {}).get("scaling", {}).get("kind", entry.get("scaling"))
        opt = cls(groups, lr=1.0, scaling=scaling or "exponential", average=True)
    else:
        options = {
            "scaling": entry["scaling"],
            "average": True,
            "average_beta": entry.get("average_beta"),
        }
        if cls is RandomScaling:
            opt = RandomScaling(base_cls(groups), **options)
        else:
            opt = cls(groups, **options)
    opt.load_state_dict(saved)
    if isinstance(opt, ExponentiatedO2NC):
        for param_state in opt.state.values():
            param_state.pop("momentum_buffer", None)
    return opt
