"""Optuna sweeps over the O2NC hyper-parameters (beta, eta, mu and their schedules).

The package never trains anything itself: each trial is the train config plus the trial's values,
built by ``lightning_o2nc.lightning.cli.build_run`` and fitted by Lightning.
"""

from .config import SweepConfig, SweepConfigError, load_sweep_config
from .report import write_report
from .run import SweepOutcome, run_sweep
from .samplers import build_pruner, build_sampler
from .space import SearchSpace, parse_space
from .storage import StorageError, open_storage, redact, resolve_storage_url
from .study import open_study

__all__ = [
    "SearchSpace",
    "StorageError",
    "SweepConfig",
    "SweepConfigError",
    "SweepOutcome",
    "build_pruner",
    "build_sampler",
    "load_sweep_config",
    "open_storage",
    "open_study",
    "parse_space",
    "redact",
    "resolve_storage_url",
    "run_sweep",
    "write_report",
]
