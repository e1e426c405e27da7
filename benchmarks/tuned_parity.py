"""Does the random scale cost accuracy once every arm is tuned? An equal-budget tuned comparison.

Protocol (Fashion-MNIST, the sweep file ``lightning_o2nc/configs/sweeps/tuned_fashion_mnist.yaml``):

1. **Tuning.** For every arm (SGDM = ``scaling: none``, O2NC ``exponential``, O2NC ``uniform``)
   and every budget (``--epochs``, the longer at least 3x the shorter), one ``o2nc-sweep`` study
   (:func:`lightning_o2nc.sweeps.run_sweep`) with the file's search space (η log-uniform, β through a
   log-uniform 1 - β, μ zero-or-float, the η schedule's shape), sampler seed, trial count and
   pruner. Only ``model.scaling``, ``trainer.max_epochs`` and the study name differ between the
   studies. Studies live in SQLite files under the work folder: rerunning continues them.
2. **Seeds.** Each arm's best trial at each budget is retrained with ``--seeds`` (the seed sets
   the initialization, the data split and order, and the scalar stream) with ``model.average:
   true``, and tested on the full test set at x, at the optimizer's x̄ (discount β) and at x̄ with
   the longer horizons ``--horizons`` (:mod:`benchmarks.config_runs`).

The raw result (studies, best values, every seed run) goes to ``benchmarks/results/tuned_parity.json``
with a plot; :mod:`benchmarks.tuned_report` turns it into the "Tuned comparison" section of RESULTS.md
(means ± std, Δ against SGDM with its standard error and a two-sided Welch p-value).

Run: ``python -m benchmarks.tuned_parity`` (about 90 minutes on 2 idle cores) or ``--quick``
(a few minutes). ``--set PATH=VALUE`` changes any field of every trial's config (for example
``--set data.init_args.root=/tmp/fixture``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from .jobs import run_jobs
from .report import REPO_ROOT, work_dir
from .results import RESULTS_DIR, write_result

SWEEP_FILE = REPO_ROOT / "lightning_o2nc" / "configs" / "sweeps" / "tuned_fashion_mnist.yaml"
#: Arm name -> ``model.scaling``. SGDM is the same optimizer with s = 1 (torch SGD's update).
ARMS = {"SGDM": "none", "O2NC (exponential)": "exponential", "O2NC (uniform)": "uniform"}
BASELINE = "SGDM"
QUICK = {
    "epochs": [1, 3],
    "n_trials": 3,
    "seeds": [0, 1],
    "set": [
        "trainer.limit_train_batches=10",
        "trainer.limit_val_batches=4",
        "trainer.limit_test_batches=8",
    ],
}


@dataclasses.dataclass
class TunedConfig:
    sweep_file: str = str(SWEEP_FILE.relative_to(REPO_ROOT))
    epochs: list[int] = dataclasses.field(default_factory=lambda: [2, 6])
    n_trials: int | None = None  # None: the sweep file's n_trials
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2, 3, 4])
    horizons: list[float] = dataclasses.field(default_factory=lambda: [0.99, 0.999])
    workers: int = 2
    best_from: str | None = None  # a tuned_parity.json: reuse its best values, no tuning
    set: list[str] = dataclasses.field(default_factory=list)

    @property
    def logdir(self) -> Path:
        return work_dir() / "tuned_parity"


def parse_settings(settings: list[str]) -> dict[str, Any]:
    """``["a.b=1", ...]`` -> ``{"a.b": 1}``; values are YAML (``safe_load``)."""
    parsed = {}
    for item in settings:
        path, sep, value = item.partition("=")
        if not sep or not path:
            raise SystemExit(f"--set {item!r}: expected PATH=VALUE, e.g. trainer.max_epochs=3")
        parsed[path] = yaml.safe_load(value)
    return parsed


def arm_sweep(config: TunedConfig, arm: str, epochs: int) -> Any:
    """The sweep definition of one (arm, budget) study: the file, with scaling and epochs set.

    It is written as ``<logdir>/<study>/sweep.yaml`` and loaded from there, so that
    ``o2nc-sweep --config`` that file reruns (or continues) exactly this study.
    """
    from lightning_o2nc.sweeps.config import load_sweep_config

    spec = yaml.safe_load((REPO_ROOT / config.sweep_file).read_text())
    spec["train_config"] = str((REPO_ROOT / config.sweep_file).parent / spec["train_config"])
    spec["study_name"] = f"{spec['study_name']}-{ARMS[arm]}-{epochs}ep"
    if config.n_trials is not None:
        spec["n_trials"] = config.n_trials
    spec["overrides"] = {
        **spec["overrides"],
        **parse_settings(config.set),
        "model.scaling": ARMS[arm],
        "trainer.max_epochs": epochs,
    }
    path = config.logdir / spec["study_name"] / "sweep.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return load_sweep_config(path)


def tune(config: dict[str, Any], arm: str, epochs: int) -> dict[str, Any]:
    """Run (or continue) one arm's study at one budget; returns its best trial and its counts."""
    import optuna
    import torch

    from lightning_o2nc.sweeps import run_sweep

    torch.set_num_threads(1)
    cfg = TunedConfig(**config)
    sweep = arm_sweep(cfg, arm, epochs)
    logdir = cfg.logdir / sweep.study_name
    started = time.perf_counter()
    outcome = run_sweep(
        sweep,
        logdir=logdir,
        storage=f"sqlite:///{logdir / 'study.db'}",
        progress=False,
        plots=False,
    )
    trials = outcome.study.trials
    state = optuna.trial.TrialState
    best = outcome.study.best_trial
    print(
        f"tuned {arm} {epochs} ep: best val/acc {best.value:.4f} with {best.params} "
        f"({time.perf_counter() - started:.0f} s)",
        flush=True,
    )
    return {
        "arm": arm,
        "epochs": epochs,
        "study_name": sweep.study_name,
        "n_trials": len(trials),
        "complete": sum(t.state == state.COMPLETE for t in trials),
        "pruned": sum(t.state == state.PRUNED for t in trials),
        "failed": sum(t.state == state.FAIL for t in trials),
        # workers that start together draw the same first points from the seeded sampler
        "distinct": len(
            {
                json.dumps(t.params, sort_keys=True)
                for t in trials
                if t.state in (state.COMPLETE, state.PRUNED)
            }
        ),
        "best_trial": best.number,
        "best_value": best.value,
        "best_values": best.user_attrs["values"],
        "seconds": time.perf_counter() - started,
    }


def seed_run(config: dict[str, Any], arm: str, epochs: int, values: dict, seed: int) -> dict:
    """One seed of an arm's best configuration, at x, x̄ and the longer horizons."""
    from .config_runs import train_config

    cfg = TunedConfig(**config)
    sweep = arm_sweep(cfg, arm, epochs)
    trial = sweep.trial_config(
        {
            **values,
            "seed_everything": seed,
            "model.seed": seed,
            "data.init_args.seed": seed,
            "model.average": True,
            "trainer.limit_val_batches": 0,  # the configuration is chosen: only the test counts
        }
    )
    result = train_config(trial, horizons=cfg.horizons, label=f"{arm} {epochs} ep seed {seed}")
    del result["losses"], result["scales"]
    return {"arm": arm, "epochs": epochs, "seed": seed, **result}


def run(config: TunedConfig) -> dict[str, Any]:
    """Tune every (arm, budget), then train every (arm, budget, seed) at the best values."""
    if any(later < 3 * config.epochs[0] for later in config.epochs[1:]):
        raise SystemExit(f"--epochs {config.epochs}: the longer budget must be >= 3x the shorter")
    started = time.perf_counter()
    plain = dataclasses.asdict(config)
    # Longest studies first, so two workers finish together.
    studies = [(arm, e) for e in sorted(config.epochs, reverse=True) for arm in ARMS]
    cache = config.logdir / "jobs"
    if config.best_from:
        tuned = reused_studies(Path(config.best_from), config.epochs)
    else:
        tuned = run_jobs(tune, [(plain, arm, e) for arm, e in studies], config.workers, cache)
    best = {(t["arm"], t["epochs"]): t["best_values"] for t in tuned}
    tasks = [
        (plain, arm, e, best[arm, e], seed)
        for e in sorted(config.epochs, reverse=True)
        for seed in config.seeds
        for arm in ARMS
    ]
    runs = run_jobs(seed_run, tasks, config.workers, cache)
    sweep = yaml.safe_load((REPO_ROOT / config.sweep_file).read_text())
    return {
        "config": plain,
        "sweep": {key: sweep[key] for key in ("space", "sampler", "pruner", "objective")},
        "fixed": {**sweep["overrides"], **parse_settings(config.set)},
        "steps_per_epoch": {str(e): _steps_per_epoch(runs, e) for e in config.epochs},
        "studies": tuned,
        "runs": runs,
        "seconds": time.perf_counter() - started,
    }


def reused_studies(source: Path, epochs: list[int]) -> list[dict[str, Any]]:
    """Each arm's study at the longest budget of an earlier result, as the study of every budget."""
    stored = json.loads(source.read_text())["studies"]
    longest = max(study["epochs"] for study in stored)
    return [
        {**study, "epochs": e, "tuned_at_epochs": longest, "tuned_in": str(source)}
        for e in epochs
        for study in stored
        if study["epochs"] == longest
    ]


def _steps_per_epoch(runs: list[dict], epochs: int) -> int:
    steps = [r["steps"] for r in runs if r["epochs"] == epochs and not r["diverged_at"]]
    return max(steps, default=0) // epochs


def plot(result: dict[str, Any], path: Path) -> None:
    """Test accuracy per seed, per arm and budget, at x, x̄ and the longer horizons."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = sorted({r["epochs"] for r in result["runs"]})
    fig, axes = plt.subplots(1, len(budgets), figsize=(5 * len(budgets), 3.8), dpi=90, sharey=True)
    axes = list(axes) if len(budgets) > 1 else [axes]
    horizons = [str(h) for h in result["config"]["horizons"]]
    points = [("x", "test_acc", "o"), ("x̄ (β)", "test_acc_avg", "s")] + [
        (f"x̄ ({h})", h, "^") for h in horizons
    ]
    for ax, epochs in zip(axes, budgets, strict=True):
        for offset, (label, key, marker) in enumerate(points):
            for i, arm in enumerate(ARMS):
                runs = [r for r in result["runs"] if r["arm"] == arm and r["epochs"] == epochs]
                values = [
                    100 * (r["test_acc_horizon"][key] if key in horizons else r[key]) for r in runs
                ]
                x = [i + 0.15 * (offset - 1.5)] * len(values)
                ax.scatter(
                    x,
                    values,
                    marker=marker,
                    s=14,
                    color=f"C{offset}",
                    label=label if i == 0 else None,
                )
        ax.set_xticks(range(len(ARMS)), list(ARMS), fontsize=8)
        ax.set(title=f"{epochs} epochs (tuned per arm)", ylabel="test accuracy (%)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(
        "Fashion-MNIST, each arm at its own best configuration; one point per seed", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, nargs="+", default=TunedConfig().epochs)
    parser.add_argument("--n-trials", type=int, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=TunedConfig().seeds)
    parser.add_argument("--horizons", type=float, nargs="+", default=TunedConfig().horizons)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE")
    parser.add_argument("--quick", action="store_true", help="tiny budgets: checks the pipeline")
    parser.add_argument("--fresh", action="store_true", help="delete the studies and start over")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="folder of the JSON and the PNG")
    parser.add_argument(
        "--best-from",
        help="no tuning: every arm's best values at the longest budget of this tuned_parity.json",
    )
    parser.add_argument("--name", help="results file name (default: tuned_parity[_quick])")
    args = parser.parse_args(argv)
    if args.quick:  # the quick sizes, unless given on the command line
        parser.set_defaults(**{k: v for k, v in QUICK.items() if k != "set"})
        args = parser.parse_args(argv)
        args.set = [*QUICK["set"], *args.set]
    options = {k: v for k, v in vars(args).items() if k not in ("quick", "fresh", "out", "name")}
    config = TunedConfig(**options)
    if args.fresh:
        shutil.rmtree(config.logdir, ignore_errors=True)
    result = run(config)
    given = sys.argv[1:] if argv is None else argv
    result["command"] = " ".join(["python -m benchmarks.tuned_parity", *map(shlex.quote, given)])
    name = args.name or ("tuned_parity_quick" if args.quick else "tuned_parity")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(result, out / f"{name}.png")
    result["figures"] = [f"{name}.png"]
    write_result(name, result, out)
    print(json.dumps({"written": str(out / f"{name}.json"), "minutes": result["seconds"] / 60}))


if __name__ == "__main__":
    main()
