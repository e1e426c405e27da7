"""Optuna sweeps over the optimizer's hyper-parameters (o2nc-sweep): each trial is a train config
plus the trial's values, built as a Lightning run and fitted by Lightning, never trained here."""

# Names are re-exported lazily: `import lightning_o2nc.sweeps.storage` (a storage benchmark's
# worker, the gRPC proxy, a signal arriving during start-up) then costs optuna alone, not torch
# and Lightning.
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
