"""What :class:`~lightning_o2nc.optim.o2nc.ExponentiatedO2NC` and
:class:`~lightning_o2nc.optim.random_scaling.RandomScaling` share around their own steps.

Both stretch every move by one random scalar s drawn by a
:class:`~lightning_o2nc.optim.scaling.ScaleSampler`, both can keep the averaged iterate x_bar and
swap it into the weights (:meth:`ScaledOptimizer.eval` / :meth:`ScaledOptimizer.train`), and both
carry the same optimizer-wide options through state dicts
(:mod:`~lightning_o2nc.optim.checkpoint_format`) and copies (deepcopy, pickle). That surface is
written once here; each optimizer adds its own options and per-parameter state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer

from .checkpoint_format import warn_options_missing
from .functional import as_device_tensors
from .scaling import ScaleSampler
from .sharded import local_tensor

__all__ = ["ScaledOptimizer"]


class ScaledOptimizer(Optimizer):
    """A torch optimizer whose every move is multiplied by one random scalar s.

    A subclass sets ``_scaling`` (its :class:`~lightning_o2nc.optim.scaling.ScaleSampler`),
    ``average``, ``average_beta``, ``training`` and ``tracks_statistics`` when it is built, and
    implements :meth:`_switch_weights`.
    """

    _scaling: ScaleSampler
    average: bool
    average_beta: float | None
    training: bool
    tracks_statistics: bool

    @property
    def scaling(self) -> str:
        """The scaling kind: ``"exponential"``, ``"uniform"`` or ``"none"``."""
        return self._scaling.kind

    @property
    def last_scale(self) -> float:
        """The scalar s drawn at the last step (1.0 before the first step)."""
        return self._scaling.last

    # ----------------------------------------------------------------- train / eval (x_bar swap)
    def eval(self) -> None:
        """Put the averaged iterate x_bar (the theory's certified output) into the weights.

        The training weights are kept in the optimizer state (``"training_weights"``, so a
        checkpoint taken in eval mode is complete) until :meth:`train` restores them exactly.
        """
        if not self.average:
            raise RuntimeError(
                f"{type(self).__name__}.eval() needs the averaged iterate: construct the optimizer "
                "with average=True"
            )
        if self.training:
            self._switch_weights(to_average=True)
            self.training = False

    def train(self) -> None:
        """Swap the training weights back in after :meth:`eval` (bit for bit)."""
        if not self.training:
            self._switch_weights(to_average=False)
            self.training = True

    def _switch_weights(self, to_average: bool) -> None:
        """Stash the weights and write x_bar into them, or restore the stashed weights."""
        raise NotImplementedError

    # ----------------------------------------------------------------- the step's edges
    def _closure_loss(self, closure: Callable[[], Any] | None) -> Any:
        """The loss of ``closure`` (evaluated under ``torch.enable_grad()``), ``None`` without one;
        a step in eval mode is refused first."""
        if not self.training:
            raise RuntimeError(
                f"{type(self).__name__}.step() was called in eval mode, while the weights hold the "
                "averaged iterate x_bar: call optimizer.train() before training steps"
            )
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

    def _device(self) -> torch.device:
        return local_tensor(self.param_groups[0]["params"][0]).device

    def _reported(self, stats: dict[str, Any]) -> dict[str, Any]:
        """``stats`` as 0-d tensors on the parameters' device, at least float32, after ``"scale"``
        (the last s, a host float)."""
        dtype = torch.promote_types(self.param_groups[0]["params"][0].dtype, torch.float32)
        return {"scale": self._scaling.last, **as_device_tensors(stats, self._device(), dtype)}

    # ----------------------------------------------------------------- options (state dict, copies)
    def _options(self) -> dict[str, Any]:
        """What is not per parameter, as plain data: the scalar generator, the mode and options.
        Subclasses add their own entries."""
        return {
            "scaling": self._scaling.state_dict(),
            "training": self.training,
            "tracks_statistics": self.tracks_statistics,
            "average": self.average,
            "average_beta": self.average_beta,
        }

    def _load_options(self, options: dict[str, Any]) -> None:
        """Take back what :meth:`_options` gave (the options fixed at construction stay)."""
        self._scaling.load_state_dict(options["scaling"])
        self.training = bool(options["training"])
        self.tracks_statistics = bool(options.get("tracks_statistics", False))

    def _load_saved_options(self, options: dict[str, Any] | None) -> None:
        """:meth:`_load_options` for a loaded state dict's options; without any (a state dict of
        another optimizer), the warning that the s sequence will not repeat."""
        if options is None:
            warn_options_missing(stacklevel=4)
        else:
            self._load_options(options)

    def _restore_construction(self, options: dict[str, Any]) -> None:
        """For a copy: the sampler and the averaging options, as the constructor set them, from
        :meth:`_options`; the subclass then calls :meth:`_load_options`."""
        self._scaling = ScaleSampler(options["scaling"]["kind"], options["scaling"]["seed"])
        self.average, self.average_beta = options["average"], options["average_beta"]
