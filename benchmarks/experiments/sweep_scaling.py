"""What a sweep costs on the digits demo: per trial against a bare loop, and with more workers.

Each arm runs as its own processes (one torch thread each) on a fresh SQLite study, timed by its
trials' stamps. Overhead = median over rounds (arms in turn) of median o2nc-sweep / bare trial.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import optuna
import torch
import yaml

from lightning_o2nc.lightning.backbones import build_backbone
from lightning_o2nc.lightning.data import DigitsDataModule
from lightning_o2nc.sweeps.distinct import DUPLICATE_OF
from lightning_o2nc.sweeps.study import is_finished_for_good

from ..harness import REPO_ROOT, Experiment
from ..stats import markdown_table
from ..training import QUIET_TRAINER

DEMO = REPO_ROOT / "lightning_o2nc" / "configs" / "sweeps" / "digits.yaml"
RANDOM = {"sampler": {"name": "random"}, "pruner": {"name": "none"}}
ROUND = "{i}|{o2nc_median_s:.3f}|{bare_median_s:.3f}|{ratio:.2f}×|{o2nc_dense_median_s:.3f}|{dense_ratio:.2f}×|{load_1min:.1f}"
SWEEP = "{label}|{workers}|{trials}|{distinct}|{span_s:.1f}|{wall_s:.1f}|{trials_per_hour:.0f}|{distinct_per_hour:.0f}|{epochs}|{value}"


def run_sweep(work: Path, label: str, trials: int, epochs: int, workers=1, **changes):
    """:func:`run_arm` of o2nc-sweep on the demo, ``trials`` x ``epochs``, ``changes`` to its file."""
    spec = yaml.safe_load(DEMO.read_text())
    spec["train_config"] = str((DEMO.parent / spec["train_config"]).resolve())
    overrides = {**spec["overrides"], "trainer.max_epochs": epochs, **changes.pop("overrides", {})}
    spec.update(study_name=label, n_trials=trials, overrides=overrides, **changes)
    (path := work / f"{label}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    cli = [sys.executable, "-m", "lightning_o2nc.sweeps.cli", "--config", str(path), "--no-plots"]
    return run_arm(work, label, [*cli, "--no-progress", "--logdir"], workers)


class BareClassifier(pl.LightningModule):  # the o2nc arm's backbone with torch SGD
    def __init__(self, **sgd: float):
        super().__init__()
        self.net, self.sgd = build_backbone("mlp", DigitsDataModule.input_shape, 10), sgd

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("val/acc", (self.net(batch[0]).argmax(-1) == batch[1]).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), **self.sgd)


def bare_worker(logdir: str, trials: int, epochs: int) -> None:
    """The o2nc arm's data, storage and sampler, one validation per epoch, and nothing else."""
    storage, sampler = f"sqlite:///{Path(logdir) / 'optuna.db'}", optuna.samplers.RandomSampler(0)
    study = optuna.create_study(storage=storage, direction="maximize", sampler=sampler)
    for _ in range(trials):
        trial = study.ask()
        lr = trial.suggest_float("lr", 1e-2, 1.0, log=True)
        model = BareClassifier(lr=lr, momentum=trial.suggest_float("momentum", 0.5, 0.999))
        trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, **QUIET_TRAINER)
        trainer.fit(model, datamodule=DigitsDataModule(batch_size=64, seed=0))
        study.tell(trial, float(trainer.callback_metrics["val/acc"]))


def run_arm(work: Path, label: str, command: list[str], workers: int = 1) -> dict:
    """Start ``workers`` copies of ``command`` together; what their study holds once they end."""
    logdir = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=work))  # a fresh study each time
    env = {**os.environ, "O2NC_SWEEP_STORAGE": "", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    popen = partial(subprocess.Popen, [*command, str(logdir)], env=env, cwd=REPO_ROOT)
    started, log = time.perf_counter(), logdir / "workers.log"
    with log.open("w") as out:
        if any([p.wait() for p in [popen(stdout=out, stderr=out) for _ in range(workers)]]):
            raise RuntimeError(f"{label} failed:\n{log.read_text()[-3000:]}")
    wall = time.perf_counter() - started
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{logdir / 'optuna.db'}")
    done = [t for t in study.trials if is_finished_for_good(t) and DUPLICATE_OF not in t.user_attrs]
    first, maximize = min(t.datetime_start for t in done), study.direction.name == "MAXIMIZE"
    ends = sorted(((t.datetime_complete - first).total_seconds(), t.value)
                  for t in done if t.value is not None)  # fmt: skip
    # (seconds since the first start, best value so far) at each trial better than all before
    curve = [p for i, p in enumerate(ends) if all((p[1] > q[1]) == maximize for q in ends[:i])]
    return {"label": label, "workers": workers, "trials": len(done), "wall_s": wall,
            "distinct": len({tuple(sorted(t.params.items())) for t in done}),
            "duplicates_skipped": sum(DUPLICATE_OF in t.user_attrs for t in study.trials),
            "span_s": (max(t.datetime_complete for t in done) - first).total_seconds(),
            "epochs": sum(int(t.user_attrs.get("epochs_trained", 0)) for t in done),
            "trial_s": [t.duration.total_seconds() for t in done if t.state.name == "COMPLETE"],
            "best": curve[-1][1] if curve else None, "best_curve": curve}  # fmt: skip


def run(settings: dict, work: Path) -> dict:
    sizes = [settings[k] for k in ("overhead", "scaling", "pruning")]
    if list(map(len, sizes)) != [3, 2, 2] or min(map(min, sizes)) < 1:
        raise ValueError(f"sweep_scaling: overhead is [trials, epochs, rounds], scaling and pruning [trials, epochs], all >= 1; got {sizes}")  # fmt: skip
    (trials, epochs, rounds), scaling, pruning = sizes
    train = yaml.safe_load((DEMO.parent / yaml.safe_load(DEMO.read_text())["train_config"]).open())
    dense = {"trainer.log_every_n_steps": train["trainer"].get("log_every_n_steps", 50)}
    bare = f"import sys; from {__name__} import bare_worker; bare_worker(sys.argv[1], "
    arms = {"o2nc": partial(run_sweep, trials=trials, epochs=epochs, **RANDOM)}
    arms["o2nc_dense"] = partial(arms["o2nc"], overrides=dense)
    arms["bare"] = partial(run_arm, command=[sys.executable, "-c", bare + f"{trials}, {epochs})"])
    measured = []
    for i in range(rounds):  # each round starts with the next arm; the machine may be shared:
        load, order = os.getloadavg()[0], [*arms][i % 3 :] + [*arms][: i % 3]  # load at the start
        m = {n: statistics.median(arms[n](work, f"overhead_{n}_{i}")["trial_s"]) for n in order}
        ratio = {"ratio": m["o2nc"] / m["bare"], "dense_ratio": m["o2nc_dense"] / m["bare"]}
        measured.append({f"{n}_median_s": m[n] for n in arms} | ratio | {"load_1min": load})
    ratios = [r["ratio"] for r in measured]
    return {
        "overhead": {
            "trials": trials, "epochs": epochs, "rounds": measured,
            "dense_log_every_n_steps": dense["trainer.log_every_n_steps"],
            "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "dense_ratio_median": statistics.median(r["dense_ratio"] for r in measured),
        },
        "workers": {k: run_sweep(work, f"workers_{n}", *scaling, n, **RANDOM)
                    for k, n in (("one", 1), ("two", 2))},
        "pruning": {"pruned": run_sweep(work, "pruned", *pruning),
                    "unpruned": run_sweep(work, "unpruned", *pruning, pruner={"name": "none"})},
    }  # fmt: skip


def targets(result: dict) -> list[tuple[str, str, str]]:
    o, one, two = result["overhead"], result["workers"]["one"], result["workers"]["two"]
    ratio, distinct = o["ratio_median"], all(t["distinct"] == t["trials"] for t in (one, two))
    return [("o2nc-sweep trial ≤ 1.5× a bare Optuna + Lightning trial (median)",
             f"{ratio:.2f}× ({o['ratio_min']:.2f}–{o['ratio_max']:.2f}×)",
             "met" if ratio <= 1.5 else "**missed**"),
            ("2 workers never evaluate a configuration twice",
             f"{two['distinct']} distinct of {two['trials']} "
             f"(1 worker: {one['distinct']} of {one['trials']})",
             "met" if distinct else "**missed**")]  # fmt: skip


def _best(sweep: dict, until: float = float("inf")) -> str:
    return next((f"{v:.4f}" for at, v in reversed(sweep["best_curve"]) if at <= until + 1e-6), "-")


def render(result: dict) -> str:
    o, one, two = result["overhead"], result["workers"]["one"], result["workers"]["two"]
    pruned, unpruned = result["pruning"]["pruned"], result["pruning"]["unpruned"]
    cores = (result.get("env") or result["machine"])["CPU"].split(" usable cores")[0].split()[-1]
    horizon = min(one["span_s"], two["span_s"])
    rounds = [ROUND.format(i=i, **r).split("|") for i, r in enumerate(o["rounds"])]
    sweeps = []
    for t in (one, two, pruned, unpruned):
        hourly = {f"{k}_per_hour": 3600 * t[k] / t["span_s"] for k in ("trials", "distinct")}
        sweeps.append(SWEEP.format(**t, **hourly, value=_best(t)).split("|"))
    return f"""The digits demo sweep on {cores} CPU cores, one torch thread per process, SQLite storage. Times come from the trials' own start and end stamps in the study.

### Per-trial overhead: o2nc-sweep against a bare Optuna + Lightning loop ({o["trials"]} trials × {o["epochs"]} epochs, no pruning)

{markdown_table(["round", "o2nc-sweep median (s)", "bare median (s)", "ratio", f"every {o['dense_log_every_n_steps']} steps (s)", "ratio", "load (1 min)"], rounds)}

- Ratio of the median trial times: **{o["ratio_median"]:.2f}×** (rounds {o["ratio_min"]:.2f}–{o["ratio_max"]:.2f}×; target ≤ 1.5×), with full monitoring, x̄ validation and TensorBoard on, as the demo sweep runs them. The bare loop is the same MLP, digits split and batch size with torch SGD and no logger.
- At the train config's `log_every_n_steps: {o["dense_log_every_n_steps"]}` instead of the demo sweep's one point per epoch: **{o["dense_ratio_median"]:.2f}×**, the cost of the additional logging steps (training metrics through `self.log`, the monitor's statistics, their TensorBoard events).

### Workers and pruning

{markdown_table(["sweep", "workers", "trials", "distinct", "trial span (s)", "wall (s)", "trials/hour", "distinct/hour", "epochs", "best val/acc_avg"], sweeps)}

- 2 workers against 1: **{two["distinct"] / two["span_s"] / (one["distinct"] / one["span_s"]):.2f}×** distinct configurations per hour ({two["trials"] / two["span_s"] / (one["trials"] / one["span_s"]):.2f}× trials per hour); best value within the first {horizon:.1f} s: {_best(two, horizon)} with 2 workers, {_best(one, horizon)} with 1.
- Median pruning: **{1 - pruned["epochs"] / unpruned["epochs"]:.0%}** of the epochs saved ({pruned["epochs"]} against {unpruned["epochs"]}); best value {_best(pruned)} with pruning, {_best(unpruned)} without."""


EXPERIMENTS = (
    Experiment(
        name="sweep_scaling", title="Sweep scaling", run=run, render=render, targets=targets,
        workload="o2nc-sweep on the digits demo sweep, one torch thread per worker, SQLite",
        arms=("o2nc-sweep", "dense logging", "bare Optuna + Lightning", "1 vs 2 workers", "pruning"),
        measurement="the trials' own stamps: o2nc/bare median trial, distinct trials/hour, epochs pruned",
        settings={"overhead": [8, 10, 3], "scaling": [16, 12], "pruning": [30, 12]},
        quick={"overhead": [3, 3, 1], "scaling": [4, 4], "pruning": [12, 6]},
    ),
)  # fmt: skip
