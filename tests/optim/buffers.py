"""Δ as the optimizer holds it: the buffer ``state[p]["momentum_buffer"]`` times its group's
``update_scale`` P (``Delta = P D``, see :mod:`lightning_o2nc.optim.functional`)."""

from __future__ import annotations

import torch

from lightning_o2nc import ExponentiatedO2NC


def delta_of(opt: ExponentiatedO2NC, p: torch.Tensor) -> torch.Tensor:
    """Δ of parameter ``p`` in float64 (zeros before its first step)."""
    group = next(g for g in opt.param_groups if any(q is p for q in g["params"]))
    state = opt.state.get(p, {})
    if "momentum_buffer" not in state:
        return torch.zeros_like(p, dtype=torch.float64)
    return state["momentum_buffer"].to(torch.float64) * group["update_scale"]
