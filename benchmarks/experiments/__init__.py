"""The experiments: each module holds ``EXPERIMENTS``, a tuple of
:class:`benchmarks.harness.Experiment`; :data:`SECTIONS` orders them as RESULTS.md does."""

from __future__ import annotations

import importlib

from ..harness import Experiment

SECTIONS: dict[str, str] = {  # experiment name -> module of this package
    "tuned_parity": "tuned_parity",
    "transformer_evidence": "transformer_evidence",
    "eta_sensitivity": "eta_sensitivity",
    "accuracy_parity": "accuracy_parity",
    "step_overhead": "step_overhead",
    "throughput": "throughput",
    "sweep_scaling": "sweep_scaling",
    "storage_throughput": "storage_throughput",
    "cifar10_resnet18": "accuracy_parity",
    "gpu_check": "gpu_check",
}


def get(name: str) -> Experiment:
    """The experiment called ``name``; a ValueError naming the valid ones otherwise."""
    if name not in SECTIONS:
        raise ValueError(f"unknown experiment {name!r}; valid: {', '.join(SECTIONS)}")
    module = importlib.import_module(f"{__name__}.{SECTIONS[name]}")
    return next(e for e in module.EXPERIMENTS if e.name == name)


def every() -> list[Experiment]:
    """Every experiment, in RESULTS.md's order."""
    return [get(name) for name in SECTIONS]
