"""Optuna sweeps over the O2NC hyper-parameters (beta, eta, mu and their schedules).

The package never trains anything itself: each trial is the train config plus the trial's values,
built by ``lightning_o2nc.lightning.cli.build_run`` and fitted by Lightning.

Names are re-exported lazily: ``import lightning_o2nc.sweeps.storage`` (a storage benchmark's worker, the gRPC
proxy, a signal arriving during start-up) then costs optuna alone, not torch and Lightning.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "SearchSpace": "space",
    "StorageError": "storage",
    "SweepConfig": "config",
    "SweepConfigError": "errors",
    "SweepOutcome": "run",
    "build_pruner": "samplers",
    "build_sampler": "samplers",
    "load_sweep_config": "config",
    "open_storage": "storage",
    "open_study": "study",
    "parse_space": "space",
    "redact": "storage",
    "resolve_storage_url": "storage",
    "run_sweep": "run",
    "write_report": "report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
