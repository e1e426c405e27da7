"""The state of :class:`~lightning_o2nc.optim.o2nc.ExponentiatedO2NC`: its layout, state dicts
and copies. The step that updates it is in :mod:`~lightning_o2nc.optim.o2nc`.

State layout (what ``state_dict()`` holds):

- ``state[p]["momentum_buffer"]`` is D with ``Delta = P D``, where ``P = group["update_scale"]``
  carries the discounts ``zeta`` of the steps since P last restarted at 1: the step then only
  adds to D (``D += -(zeta eta / P) g``) instead of scaling it as well, one pass over Δ fewer.
  P is folded into D when it would fall below 2^-10 (every ~66 steps at ζ = 0.9).
- ``state[p]["iterate_deviation"]`` is u with ``x - x_bar = k u``, ``k = group["deviation_scale"]``.
- Both are views of one flat buffer per group, device and dtype (:mod:`~lightning_o2nc.optim.flat`):
  ``||u||^2`` for V and ``||Delta||^2`` for the statistics are one reduction each, and frozen
  parameters (``requires_grad=False``) get no buffer.
- Per group, the running sums of :data:`GROUP_SCALARS` (see :func:`init_group_scalars`).
- ``param_groups[0]["o2nc"]``: the scalar generator, the pending importance weight, the mode and
  counters, as plain data (:mod:`~lightning_o2nc.optim.checkpoint_format`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .checkpoint_format import STATE_KEY, put_options, take_options
from .scaled_optimizer import ScaledOptimizer
from .sharded import load_shards, mesh_of, save_global_sums

__all__ = ["GROUP_SCALARS", "O2NCState", "init_group_scalars"]

#: The per-group running sums of :func:`init_group_scalars` and their starting values.
GROUP_SCALARS = {
    "update_scale": 1.0,
    "update_weight_sum": 0.0,
    "average_weight_sum": 0.0,
    "deviation_scale": 1.0,
    "iterate_variance": 0.0,
}


def init_group_scalars(group: dict[str, Any]) -> None:
    """Per-group running sums kept in the group, so they travel with ``state_dict()``.

    ``update_scale`` is P (``Delta = P D``, D the stored buffer; 1 in older checkpoints, whose
    buffers hold Δ), ``update_weight_sum`` is W (for ``m_hat = -Delta / W``),
    ``average_weight_sum`` is A (for x_bar's newest weight 1/A), ``deviation_scale`` is k
    (``x - x_bar = k u``) and ``iterate_variance`` is this group's V.
    """
    for key, start in GROUP_SCALARS.items():
        group.setdefault(key, start)


class O2NCState(ScaledOptimizer):
    """``ExponentiatedO2NC``'s state dicts and copies (deepcopy, pickle, ``torch.save``).

    Besides :class:`~lightning_o2nc.optim.scaled_optimizer.ScaledOptimizer`'s attributes, the
    optimizer sets ``skip_nonfinite``, ``_skipped_steps`` (``None`` until first read), ``_mesh``
    and the step's caches ``_buffers`` and ``_cache``, which a load or a copy empties.
    """

    skip_nonfinite: bool
    _skipped_steps: Tensor | None
    _mesh: Any

    def _options(self) -> dict[str, Any]:
        """What is not per parameter: the scalar generator, the mode, counters and options."""
        options = super()._options()
        skipped = self._skipped_steps
        options.update(
            skipped_steps=None if skipped is None else skipped.clone(),
            skip_nonfinite=self.skip_nonfinite,
        )
        return options

    def _load_options(self, options: dict[str, Any]) -> None:
        super()._load_options(options)
        skipped = options.get("skipped_steps")
        if skipped is None:
            self._skipped_steps = None
        else:  # an int from a state dict, a tensor from a copy
            self._skipped_steps = torch.as_tensor(skipped, dtype=torch.int64).to(self._device())

    def __getstate__(self) -> dict[str, Any]:
        """torch keeps ``defaults``, ``state`` and ``param_groups``; copies also need the rest."""
        return dict(super().__getstate__(), **{STATE_KEY: self._options()})

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        options = state.pop(STATE_KEY, None)
        super().__setstate__(state)
        self._buffers, self._cache = {}, {}  # load_state_dict and copies: new tensors
        for group in self.param_groups:
            group.setdefault("foreach", None)
            group.setdefault("maximize", False)
            init_group_scalars(group)
        self._mesh = mesh_of(p for group in self.param_groups for p in group["params"])
        if options is not None:  # a copy (deepcopy, pickle, torch.save of the whole object)
            self._restore_construction(options)
            self.skip_nonfinite = options["skip_nonfinite"]
            self._load_options(options)

    def state_dict(self) -> dict[str, Any]:
        """torch's state dict, with an ``"o2nc"`` entry in ``param_groups[0]``: the scalar
        generator's state and the pending importance weight, the train/eval mode, the skipped-step
        count and whether V is tracked, all as plain data (ints, floats, lists, ``None``).

        Why there, and the older layout that still loads: :mod:`~lightning_o2nc.optim.checkpoint_format`.

        With DTensor parameters each rank keeps V as its partial sum: the state dict holds the
        global V, added over the mesh here (so, as ``get_optimizer_state_dict``, it is called on
        every rank), and on load the first shard keeps it while the others restart from 0.
        """
        options = self._options()
        skipped = options["skipped_steps"]
        options["skipped_steps"] = None if skipped is None else int(skipped)
        state_dict = put_options(super().state_dict(), options)
        for group in state_dict["param_groups"]:  # one type whatever skip_nonfinite made them:
            for key in GROUP_SCALARS:  # a distributed checkpoint loads only into the same type
                if isinstance(group[key], Tensor):
                    group[key] = group[key].item()
        if self._mesh is not None and self.average and self.tracks_statistics:
            save_global_sums(state_dict["param_groups"], self.param_groups, "iterate_variance")
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict, options = take_options(state_dict)
        super().load_state_dict(state_dict)
        if self._mesh is not None:
            load_shards(self.param_groups, self.state, "iterate_variance")
        self._load_saved_options(options)
