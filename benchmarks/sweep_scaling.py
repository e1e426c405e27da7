"""Sweep cost on the digits demo: per-trial overhead against a bare loop, and scaling with workers.

Every arm runs as its own processes (one torch thread each) against a fresh SQLite study, and
every time comes from the study itself (``datetime_start`` / ``datetime_complete``), so process
start-up and the report are excluded.

- **Per-trial overhead**: ``o2nc-sweep`` on ``lightning_o2nc/configs/sweeps/digits.yaml`` (random sampler, no
  pruning, full monitoring and TensorBoard as the demo has them) against a bare hand-written
  Optuna + Lightning loop of the same size: the same MLP and digits split, batch 64, torch SGD,
  no logger, no checkpoint, no progress bar. The two arms alternate over several rounds; each
  round gives the ratio of the median trial durations.
- **Workers**: one study run by 1 worker, then by 2 workers started together. What counts is
  the number of *distinct* configurations evaluated per hour (a repeat is no progress) and the
  best value reached within the same wall time.
- **Pruning**: the demo's TPE sweep with its median pruner against the same sweep without
  pruning: epochs trained and best value of each.

Run: ``python -m benchmarks.sweep_scaling [--quick]``. The raw results go to
``benchmarks/results/sweep_scaling.json`` (quick runs: the scratch folder); ``run(quick)``
returns the markdown section (rendered by :mod:`benchmarks.sweep_scaling_report`) for ``benchmarks/run_all.py``. ``--only-overhead`` measures the
per-trial part alone and, at full size, replaces that part of the stored results (with its own
command, date and commit; the other parts stay). Each round records the 1-minute load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from subprocess import STDOUT
from typing import Any

import yaml

from .report import BENCH_DIR, REPO_ROOT, work_dir
from .sweep_scaling_report import SweepTiming, targets, to_markdown

# the section's renderers stay importable from here, as render.py and run_all.py knew them
__all__ = [
    "SweepTiming",
    "measure",
    "measure_overhead",
    "record_overhead",
    "run",
    "targets",
    "to_markdown",
]
from .workloads import QUIET_TRAINER

DEMO = REPO_ROOT / "lightning_o2nc" / "configs" / "sweeps" / "digits.yaml"
RESULTS_JSON = BENCH_DIR / "results" / "sweep_scaling.json"
OVERHEAD_SIZE = {"quick": (3, 3, 1), "full": (8, 10, 3)}  # (trials, epochs, rounds)


def _scratch() -> Path:
    return work_dir() / "sweep_scaling"


def _sweep_file(
    name: str,
    trials: int,
    epochs: int,
    random: bool = False,
    overrides: dict[str, Any] | None = None,
    **changes: Any,
) -> Path:
    """The demo sweep file with ``trials`` x ``epochs``; ``random``: random sampler, no pruning;
    ``overrides`` added to the demo's."""
    spec = yaml.safe_load(DEMO.read_text())
    spec["train_config"] = str((DEMO.parent / spec["train_config"]).resolve())
    spec["overrides"] = {
        **(spec.get("overrides") or {}),
        "trainer.max_epochs": epochs,
        **(overrides or {}),
    }
    spec.update(study_name=name, n_trials=trials, **changes)
    if random:
        spec.update(sampler={"name": "random"}, pruner={"name": "none"})
    path = _scratch() / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _sweep_command(sweep: Path) -> Callable[[Path], list[str]]:
    options = ["--config", str(sweep), "--no-progress", "--no-plots", "--logdir"]
    return lambda logdir: [sys.executable, "-m", "lightning_o2nc.sweeps.cli", *options, str(logdir)]


def _bare_command(trials: int, epochs: int) -> Callable[[Path], list[str]]:
    return lambda logdir: [
        *(sys.executable, "-m", "benchmarks.sweep_scaling", "--bare-worker", str(logdir)),
        *("--bare-trials", str(trials), "--bare-epochs", str(epochs)),
    ]


def _run_arm(
    label: str, command: Callable[[Path], list[str]], workers: int, study_name: str
) -> SweepTiming:
    """Start ``workers`` copies of ``command(logdir)`` together and read their study back."""
    import optuna

    from lightning_o2nc.sweeps.distinct import DUPLICATE_OF
    from lightning_o2nc.sweeps.study import is_finished_for_good

    logdir = _scratch() / label
    shutil.rmtree(logdir, ignore_errors=True)
    logdir.mkdir(parents=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.pop("O2NC_SWEEP_STORAGE", None)
    logs = [logdir / f"worker{i}.log" for i in range(workers)]
    started = time.perf_counter()
    processes = [
        subprocess.Popen(
            command(logdir), env=env, cwd=REPO_ROOT, stdout=log.open("w"), stderr=STDOUT
        )
        for log in logs
    ]
    for log, process in zip(logs, processes, strict=True):
        if process.wait() != 0:
            raise RuntimeError(f"{label}: {log.name} failed:\n{log.read_text()[-3000:]}")
    wall = time.perf_counter() - started
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{logdir / 'optuna.db'}")
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    ended = [t for t in study.trials if is_finished_for_good(t) or DUPLICATE_OF in t.user_attrs]
    finished = sorted(
        (t for t in ended if DUPLICATE_OF not in t.user_attrs), key=lambda t: t.datetime_complete
    )
    first = min(t.datetime_start for t in finished)
    curve: list[tuple[float, float]] = []
    for t in finished:
        if t.value is not None and (not curve or (t.value > curve[-1][1]) == maximize):
            curve.append(((t.datetime_complete - first).total_seconds(), t.value))
    return SweepTiming(
        label=label,
        workers=workers,
        trials=len(finished),
        distinct=len({tuple(sorted(t.params.items())) for t in finished}),
        duplicates_skipped=len(ended) - len(finished),
        span_s=(finished[-1].datetime_complete - first).total_seconds(),
        wall_s=wall,
        epochs=sum(int(t.user_attrs.get("epochs_trained", 0)) for t in finished),
        best=curve[-1][1] if curve else None,
        trial_s=[
            (t.datetime_complete - t.datetime_start).total_seconds()
            for t in finished
            if t.state == optuna.trial.TrialState.COMPLETE
        ],
        best_curve=curve,
    )


# ---------------------------------------------------------------------------- the bare loop
def bare_worker(logdir: Path, trials: int, epochs: int) -> None:
    """The reference: Optuna + Lightning written by hand, nothing that a sweep of ours adds.

    The same backbone (``mlp``), data module (digits, batch 64, seed 0), storage (SQLite) and
    sampler (random) as the o2nc arm; torch SGD with momentum, one validation per epoch, no
    logger, checkpoint, progress bar or model summary.
    """
    import lightning.pytorch as pl
    import optuna
    import torch
    from torch.nn import functional

    from lightning_o2nc.lightning.backbones import build_backbone
    from lightning_o2nc.lightning.data import DigitsDataModule

    class BareClassifier(pl.LightningModule):
        def __init__(self, lr: float, momentum: float):
            super().__init__()
            self.net = build_backbone("mlp", DigitsDataModule.input_shape, 10)
            self.lr, self.momentum = lr, momentum

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return functional.cross_entropy(self.net(x), y)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val/acc", (self.net(x).argmax(-1) == y).float().mean())

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum)

    def objective(trial: optuna.Trial) -> float:
        model = BareClassifier(
            trial.suggest_float("lr", 1e-2, 1.0, log=True),
            trial.suggest_float("momentum", 0.5, 0.999),
        )
        trainer = pl.Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            devices=1,
            logger=False,
            **QUIET_TRAINER,
        )
        trainer.fit(model, datamodule=DigitsDataModule(batch_size=64, seed=0))
        return float(trainer.callback_metrics["val/acc"])

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name="bare",
        storage=f"sqlite:///{Path(logdir) / 'optuna.db'}",
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    study.optimize(objective, n_trials=trials)


# ---------------------------------------------------------------------------- the three parts
def _train_config_logging_interval() -> int:
    """``trainer.log_every_n_steps`` of the demo's train config (the demo sweep overrides it)."""
    demo = yaml.safe_load(DEMO.read_text())
    train = yaml.safe_load((DEMO.parent / demo["train_config"]).read_text())
    return int(train["trainer"].get("log_every_n_steps", 50))


def measure_overhead(quick: bool) -> dict[str, Any]:
    """Rounds of o2nc-sweep and the bare loop, rotating which arm goes first.

    A third arm, ``o2nc_dense``, is the same sweep at the train config's logging interval
    instead of the demo sweep's one point per epoch: what each logging step costs.
    """
    trials, epochs, rounds = OVERHEAD_SIZE["quick" if quick else "full"]
    sweep = _sweep_file("overhead", trials, epochs, random=True)
    dense_interval = _train_config_logging_interval()
    dense = _sweep_file(
        "overhead_dense", trials, epochs, random=True,
        overrides={"trainer.log_every_n_steps": dense_interval},
    )  # fmt: skip
    arms = {
        "o2nc": (_sweep_command(sweep), "overhead"),
        "o2nc_dense": (_sweep_command(dense), "overhead_dense"),
        "bare": (_bare_command(trials, epochs), "bare"),
    }
    measured: dict[str, list[SweepTiming]] = {name: [] for name in arms}
    loads = []  # the 1-minute load average as each round starts: the machine may be shared
    for i in range(rounds):
        loads.append(os.getloadavg()[0])
        order = list(arms)[i % len(arms) :] + list(arms)[: i % len(arms)]
        for name in order:
            command, study_name = arms[name]
            measured[name].append(_run_arm(f"overhead_{name}_{i}", command, 1, study_name))
    medians = [{name: measured[name][i].median_trial_s for name in arms} for i in range(rounds)]
    ratios = [m["o2nc"] / m["bare"] for m in medians]
    dense_ratios = [m["o2nc_dense"] / m["bare"] for m in medians]
    return {
        "trials": trials,
        "epochs": epochs,
        "dense_log_every_n_steps": dense_interval,
        "rounds": [
            {
                "o2nc_median_s": m["o2nc"],
                "o2nc_dense_median_s": m["o2nc_dense"],
                "bare_median_s": m["bare"],
                "ratio": r,
                "dense_ratio": d,
                "load_1min": load,
            }
            for m, r, d, load in zip(medians, ratios, dense_ratios, loads, strict=True)
        ],
        **{f"{name}_trial_s": [s for t in measured[name] for s in t.trial_s] for name in arms},
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "dense_ratio_median": statistics.median(dense_ratios),
    }


def measure(quick: bool) -> dict[str, Any]:
    """All three parts; the sizes are the demo's (full) or a few trials (quick)."""
    demo = yaml.safe_load(DEMO.read_text())
    demo_size = (demo["n_trials"], demo["overrides"]["trainer.max_epochs"])
    n_scale, epochs_scale = (4, 4) if quick else (16, demo_size[1])
    n_prune, epochs_prune = (12, 6) if quick else demo_size  # full: the demo itself
    overhead = measure_overhead(quick)
    scaling = _sweep_command(_sweep_file("scaling", n_scale, epochs_scale, random=True))
    one = _run_arm("workers_1", scaling, 1, "scaling")
    two = _run_arm("workers_2", scaling, 2, "scaling")
    pruning = {}
    for label, pruner in (("pruned", {}), ("unpruned", {"pruner": {"name": "none"}})):
        sweep = _sweep_file(label, n_prune, epochs_prune, **pruner)
        pruning[label] = _run_arm(label, _sweep_command(sweep), 1, label)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "quick": quick,
        "cpus": cpus,
        "overhead": overhead,
        "workers": {"one": asdict(one), "two": asdict(two)},
        "pruning": {label: asdict(timing) for label, timing in pruning.items()},
    }


def run(quick: bool, output: Path | None = None) -> str:
    """Measure, write the raw results as JSON and return the Markdown section."""
    from .report import machine_description
    from .results import write_result

    started = time.perf_counter()
    results = measure(quick)
    results["command"] = "python -m benchmarks.sweep_scaling" + (" --quick" if quick else "")
    results["seconds"] = time.perf_counter() - started
    results["machine"] = machine_description()
    output = output or (_scratch() / "sweep_scaling.json" if quick else RESULTS_JSON)
    written = write_result(output.stem, results, output.parent)
    section = to_markdown(results)
    print(section)
    print(f"raw results: {written}")
    return section


def record_overhead(overhead: dict[str, Any], output: Path = RESULTS_JSON) -> Path | None:
    """Replace the per-trial part of a full run's results with ``overhead`` (a full-size
    ``--only-overhead`` run); the workers and pruning parts stay as measured. ``None`` (nothing
    written) where no full run has written ``output`` yet."""
    from .report import machine_description
    from .results import read_result, write_result

    results = read_result(output.stem, output.parent)
    if results is None or results.get("quick"):
        return None
    overhead = dict(
        overhead,
        command="python -m benchmarks.sweep_scaling --only-overhead",
        machine=machine_description(),
    )
    return write_result(output.stem, {**results, "overhead": overhead}, output.parent)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few short trials per part")
    parser.add_argument("--only-overhead", action="store_true", help="only the per-trial part")
    parser.add_argument("--output", type=Path, help=f"raw results (default: {RESULTS_JSON})")
    parser.add_argument("--bare-worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--bare-trials", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--bare-epochs", type=int, default=10, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare_worker is not None:
        bare_worker(args.bare_worker, args.bare_trials, args.bare_epochs)
    elif args.only_overhead:
        overhead = measure_overhead(args.quick)
        print(json.dumps(overhead, indent=1))
        if not args.quick:  # a full-size measurement replaces the stored one
            written = record_overhead(overhead, args.output or RESULTS_JSON)
            print(f"raw results: {written}" if written else "not recorded: no full run stored")
    else:
        run(args.quick, args.output)


if __name__ == "__main__":
    main()
