"""Where ``ExponentiatedO2NC`` and ``RandomScaling`` put what is not per parameter in a state dict.

Both optimizers carry state that no parameter owns: the scalar generator and the pending importance
weight, the train/eval mode, whether statistics are tracked (and the skipped-step count of
``ExponentiatedO2NC``, the per-group sums of ``RandomScaling``). It is stored as plain data (ints,
floats, bools, lists, ``None``) under ``state_dict()["param_groups"][0]["o2nc"]``:

- ``torch.distributed.checkpoint``'s ``get/set_optimizer_state_dict`` keep only ``state`` and
  ``param_groups``, so a top-level entry would be lost;
- torch casts per-parameter state tensors to the parameter's dtype on load, which would corrupt
  a generator state kept there;
- ``Optimizer.load_state_dict`` copies a saved group's keys into the live group, so the entry is
  taken out of the saved groups before torch sees them, and the live groups never hold it.

Format 2 is this layout. Before it (no ``"format"``), the entry sat at the top level of the state
dict and uniform scaling had no importance weight; such state dicts still load.
"""

from __future__ import annotations

import warnings
from typing import Any

__all__ = ["STATE_FORMAT", "STATE_KEY", "put_options", "take_options", "warn_options_missing"]

STATE_KEY = "o2nc"
STATE_FORMAT = 2


def put_options(state_dict: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """``state_dict`` (torch's, whose groups are fresh dicts) with ``options`` in its first group."""
    state_dict["param_groups"][0][STATE_KEY] = dict(options, format=STATE_FORMAT)
    return state_dict


def take_options(state_dict: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A shallow copy of ``state_dict`` without the options, and the options (``None`` if absent),
    from the first group or, in the layout before format 2, the top level. The caller's dict is
    left as it was."""
    state_dict = dict(state_dict)
    options = state_dict.pop(STATE_KEY, None)
    groups = [dict(group) for group in state_dict["param_groups"]]
    if groups and STATE_KEY in groups[0]:
        options = groups[0].pop(STATE_KEY)
    state_dict["param_groups"] = groups
    return state_dict, options


def warn_options_missing(stacklevel: int = 3) -> None:
    """The warning for a state dict saved by another optimizer: the s sequence will not repeat."""
    warnings.warn(
        "This state dict has no 'o2nc' entry (it was saved by another optimizer, such as the bare "
        "base optimizer): the random-scaling generator is not restored, so the sequence of scalars "
        "s will not repeat the original run.",
        UserWarning,
        stacklevel=stacklevel,
    )
