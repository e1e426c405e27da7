"""Which of the optimizer's kernels ran, read from the operators a step executed."""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

from lightning_o2nc import ExponentiatedO2NC


def kernel_that_ran(device: torch.device, numel: int = 12, **options) -> str:
    """``"single"``, ``"multi"`` or ``"masked"``: the kernel of a second step (the first one
    allocates the state) on one weight of ``numel`` elements, told apart by the operators it ran
    (torch.profiler)."""
    w = torch.zeros(numel, device=device, requires_grad=True)
    opt = ExponentiatedO2NC([w], lr=0.1, seed=0, **options)
    w.grad = torch.ones_like(w)
    opt.step()
    activities = [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        opt.step()
    names = {event.key for event in prof.key_averages()}
    if "aten::where" in names:
        return "masked"
    return "multi" if "aten::_foreach_add_" in names else "single"
