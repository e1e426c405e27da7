"""Does the random scale cost accuracy once every arm is tuned? An equal-budget tuned comparison.

Per arm and budget (``epochs``, the longer >= 3x the shortest) one ``o2nc-sweep`` study of
``sweep_file`` (SQLite in the work folder: a rerun continues it) until it holds ``min_trials``
trials of which ``min_complete`` completed; then each best trial retrained with ``seeds``, tested
at x, the optimizer's x̄ and x̄ of ``horizons``, and every O2NC arm at SGDM's best configuration."""

from __future__ import annotations

import itertools
import json
import statistics
from pathlib import Path
from typing import Any

import yaml

from .. import studies
from ..harness import REPO_ROOT, Experiment, run_jobs
from ..stats import difference_text, markdown_table, mean_std, paired_difference
from ..studies import OUTCOMES, SEEDED, run_stoppable_jobs, tune_to_counts, write_sweep
from ..training import train_config

#: Arm name -> ``model.scaling``. SGDM is the same optimizer with s = 1 (torch SGD's update).
ARMS = {"SGDM": "none", "O2NC (exponential)": "exponential", "O2NC (uniform)": "uniform"}
BASELINE = "SGDM"
FINISHED = ("COMPLETE", "PRUNED")  # a trial's states that hold a result
LIMITS = [f"trainer.limit_{split}_batches" for split in ("train", "val", "test")]


def arm_sweep(settings: dict[str, Any], work: Path, arm: str, epochs: int, n_trials: int) -> Any:
    """One (arm, budget) study: the sweep file with scaling, epochs, trials and ``fixed`` set."""
    source = REPO_ROOT / settings["sweep_file"]
    spec = yaml.safe_load(source.read_text())
    spec["train_config"] = str(source.parent / spec["train_config"])
    spec["study_name"] += f"-{ARMS[arm]}-{epochs}ep"
    spec["n_trials"] = n_trials
    spec["overrides"].update(settings["fixed"])
    spec["overrides"].update({"model.scaling": ARMS[arm], "trainer.max_epochs": epochs})
    return write_sweep(spec, work)


def tune(settings: dict[str, Any], work: Path, arm: str, epochs: int) -> dict[str, Any]:
    """Run (or continue) one arm's study at one budget until it holds the trial and completion
    counts: its best trial and its trials by outcome."""
    tuned = tune_to_counts(work, arm_sweep, (settings, work, arm, epochs), settings)
    if tuned is None:  # a stop request came before or during the study
        return {"arm": arm, "epochs": epochs, "stopped": True}
    (study, counts), best = tuned, tuned[0].best_trial
    # workers that start together draw the same first points from the seeded sampler
    done = {json.dumps(t.params, sort_keys=True) for t in study.trials if t.state.name in FINISHED}
    print(f"tuned {arm} {epochs} ep: val/acc {best.value:.4f} at {best.params}", flush=True)
    result = {"arm": arm, "epochs": epochs, "study_name": study.study_name, **counts}
    result |= {"distinct": len(done), "best_trial": best.number, "lr": studies.lr_points(study)}
    return result | {"best_value": best.value, "best_values": best.user_attrs["values"]}


def seed_run(settings: dict, work: Path, arm: str, epochs: int, values: dict, seed: int) -> dict:
    """One seed of an arm's best configuration, tested at x, x̄ and the longer horizons."""
    values = {**values, **dict.fromkeys(SEEDED, seed), "model.average": True}
    values["trainer.limit_val_batches"] = 0  # the configuration is chosen: only the test counts
    trial = arm_sweep(settings, work, arm, epochs, settings["min_trials"]).trial_config(values)
    result = train_config(trial, horizons=settings["horizons"], label=f"{arm} {epochs} ep {seed}")
    del result["losses"], result["scales"]
    return {"arm": arm, "epochs": epochs, "seed": seed, **result}


def run(settings: dict[str, Any], work: Path) -> dict[str, Any]:
    epochs = sorted(settings["epochs"], reverse=True)  # the longest first: the workers end together
    if any(longer < 3 * epochs[-1] for longer in epochs[:-1]):
        raise ValueError(f"epochs {settings['epochs']}: the longer must be >= 3x the shortest")
    jobs = {k: settings[k] for k in ("sweep_file", "min_trials", "fixed", "horizons")}  # run inputs
    tasks = [(settings, work, a, e) for e in epochs for a in ARMS]
    tuned = run_stoppable_jobs(tune, tasks, settings["workers"], work)
    best = {(t["arm"], t["epochs"]): t["best_values"] for t in tuned}
    tasks = [(jobs, work, a, e, v, s) for (a, e), v in best.items() for s in settings["seeds"]]
    at_sgdm = [(*t[:4], best[BASELINE, t[3]], t[5]) for t in tasks if t[2] != BASELINE]
    runs = run_jobs(seed_run, tasks + at_sgdm, settings["workers"], cache=work / "jobs")
    sweep = yaml.safe_load((REPO_ROOT / settings["sweep_file"]).read_text())
    result = {"config": settings, "fixed": {**sweep["overrides"], **settings["fixed"]}}
    result["sweep"] = {key: sweep[key] for key in ("space", "sampler", "pruner", "objective")}
    result |= {"studies": tuned, "runs": runs[: len(tasks)]}
    return result | {"at_sgdm_best": runs[len(tasks) :]}  # each O2NC arm at SGDM's best values


def _accuracies(result: dict, arm: str, epochs: int, key: str = "runs") -> list[list[float]]:
    """Test accuracy per seed at x, at the optimizer's x̄ and at x̄ of each longer horizon."""
    runs = [r for r in result.get(key, []) if (r["arm"], r["epochs"]) == (arm, epochs)]
    horizons = [[r["test_acc_horizon"][str(h)] for r in runs] for h in result["config"]["horizons"]]
    return [[r["test_acc"] for r in runs], [r["test_acc_avg"] for r in runs], *horizons]


def _budget(result: dict[str, Any], epochs: int) -> str:
    steps = [r["steps"] for r in result["runs"] if r["epochs"] == epochs and not r["diverged_at"]]
    return f"{epochs} ep ({max(steps, default=0) // epochs * epochs} steps)"


def targets(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    for epochs, arm in itertools.product(result["config"]["epochs"], list(ARMS)[1:]):
        values, base = _accuracies(result, arm, epochs)[0], _accuracies(result, BASELINE, epochs)[0]
        delta, test = difference_text(values, base)
        met = abs(100 * (statistics.fmean(values) - statistics.fmean(base))) <= 0.3
        target = f"tuned {arm} within 0.3 points of tuned SGDM, {_budget(result, epochs)}"
        rows.append((target, f"{delta} points ({test})", "met" if met else "**missed**"))
    return rows


def render(result: dict[str, Any]) -> str:
    config, fixed, tuned = result["config"], result["fixed"], result["studies"]
    rows, paired, best, lr_points = [], [], [], {}
    variants = [(arm, "runs", arm) for arm in ARMS]  # and each O2NC arm at SGDM's configuration:
    variants += [(arm, "at_sgdm_best", f"{arm} at SGDM's best") for arm in list(ARMS)[1:]]
    for epochs in config["epochs"]:
        base, budget = _accuracies(result, BASELINE, epochs)[0], _budget(result, epochs)
        for arm, key, label in variants:
            if (at := _accuracies(result, arm, epochs, key))[0]:  # an older result lacks some
                delta = ("—", "—") if arm == BASELINE else difference_text(at[0], base)
                rows.append([budget, label, *(mean_std(values, 100) for values in at), *delta])
                paired.append([budget, label, *(paired_difference(x̄, at[0]) for x̄ in at[1:])])
    for study in sorted(tuned, key=lambda s: (s["epochs"], list(ARMS).index(s["arm"]))):
        values = study["best_values"]
        schedule = values.get("model.schedules.lr") or {}
        arguments = ", ".join(f"{k} {v:.3g}" for k, v in schedule.items() if k != "shape")
        shape = schedule.get("shape", "config's") + (f" ({arguments})" if arguments else "")
        lr, beta, mu = (values[f"model.{k}"] for k in ("lr", "beta", "mu"))
        counts = " / ".join(str(study[key]) for key in OUTCOMES)
        counts += f" ({study['distinct']} distinct)" if "distinct" in study else ""
        cells = [f"{lr:.3g}", f"{beta:.3f}", f"{mu:.3g}", shape, f"{100 * study['best_value']:.2f}"]
        best.append([_budget(result, study["epochs"]), study["arm"], *cells, counts])
        lr_points[f"{study['arm']}, {best[-1][0]}"] = study.get("lr")
    width = fixed.get("model.backbone", {}).get("init_args", {}).get("width", "?")
    train, val, test = (fixed.get(key, "all") for key in LIMITS)
    sampler, pruner = result["sweep"]["sampler"], result["sweep"]["pruner"]
    rule = "until it held ≥ {min_trials} trials, ≥ {min_complete} completed, ≤ {max_trials}: "
    trials = rule.format(**config) + "/".join(map(str, sorted({s["trials"] for s in tuned})))
    averages = ["x̄ (β)", *(f"x̄ ({h})" for h in config["horizons"])]
    columns = ["budget", "arm", "at x", *(f"at {a}" for a in averages)]
    best_columns = ["budget", "arm", "η", "β", "μ", "η schedule", "best val acc %"]
    text = [
        f"Fashion-MNIST, SmallCNN(width={width}), batch 128; epochs of {train} batches, validation "
        f"on {val}, test on {test}. Per arm and budget one `o2nc-sweep` study of "
        f"`{config['sweep_file']}` ({trials} trials; sampler {sampler['name']} "
        f"{sampler.get('options', {})} seed 0; pruner {pruner['name']} {pruner.get('options', {})};"
        f" objective val/acc at x), then seeds {config['seeds']} of its best trial, at x and x̄.",
        "**Best configuration per arm** (from its own study):",
        markdown_table([*best_columns, " / ".join(OUTCOMES)], best),
        *studies.lr_section(lr_points, 0.005, "0.5 points of val acc", maximize=True),
        "**Test accuracy at each arm's best configuration** (%, mean ± std; Δ: x − SGDM's x; *at "
        "SGDM's best*: that O2NC arm with SGDM's best η, β, μ and schedule, the same seeds):",
        markdown_table([*columns, "Δ vs SGDM (x)", "Welch"], rows),
        "**Does a longer x̄ recover accuracy?** x̄ − x in points, paired over seeds, mean ± s.e.:",
        markdown_table(["budget", "arm", *(f"{a} − x" for a in averages)], paired),
    ]
    diverged = [f"{label} {r['epochs']} ep seed {r['seed']} at step {r['diverged_at']}"
                for arm, key, label in variants for r in result.get(key, [])
                if r["arm"] == arm and r["diverged_at"]]  # fmt: skip
    text += [f"Diverged seed runs (scored as chance): {', '.join(diverged)}."] * bool(diverged)
    return "\n\n".join(text)


def figure(result: dict[str, Any], folder: Path) -> list[str]:
    """Test accuracy per seed, per arm and budget, at x, x̄ and the longer horizons."""
    from matplotlib.figure import Figure

    budgets = sorted({r["epochs"] for r in result["runs"]})
    fig = Figure(figsize=(5 * len(budgets), 3.8), dpi=90, layout="tight")
    axes = fig.subplots(1, len(budgets), sharey=True, squeeze=False)[0]
    labels = ["x", "x̄ (β)", *(f"x̄ ({h})" for h in result["config"]["horizons"])]
    for ax, epochs in zip(axes, budgets, strict=True):
        for i, arm in enumerate(ARMS):
            for offset, values in enumerate(_accuracies(result, arm, epochs)):
                x, y = [i + 0.15 * (offset - 1.5)] * len(values), [100 * v for v in values]
                style = {"marker": "os^"[min(offset, 2)], "color": f"C{offset}", "s": 14}
                ax.scatter(x, y, label=labels[offset] if i == 0 else None, **style)
        ax.set_xticks(range(len(ARMS)), list(ARMS), fontsize=8)
        ax.set(title=f"{epochs} epochs (tuned per arm)", ylabel="test accuracy (%)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Fashion-MNIST, each arm at its best configuration; a point per seed", fontsize=10)
    fig.savefig(folder / "tuned_parity.png")
    return ["tuned_parity.png"]


#: ``fixed``: trial config fields (dotted paths) set in every study and seed run.
SWEEP_FILE = "lightning_o2nc/configs/sweeps/tuned_fashion_mnist.yaml"
SETTINGS = {"sweep_file": SWEEP_FILE, "fixed": {}, "epochs": [4]}
SETTINGS |= {"min_trials": 16, "min_complete": 8, "max_trials": 40}
SETTINGS |= {"seeds": [0, 1, 2, 3, 4], "horizons": [0.99, 0.999], "workers": 2}
QUICK = {"epochs": [1, 3], "min_trials": 3, "min_complete": 1, "max_trials": 4, "seeds": [0, 1]}
QUICK["fixed"] = dict(zip(LIMITS, (10, 4, 8)))
EXPERIMENTS = (
    Experiment(
        name="tuned_parity",
        title="Tuned comparison: SGDM against O2NC, each at its own best configuration",
        workload="Fashion-MNIST, SmallCNN; each arm and budget tuned by its own o2nc-sweep study",
        arms=tuple(ARMS),
        measurement="test accuracy at x and x̄ (several horizons) of fresh seeds of each best trial",
        run=run,
        render=render,
        settings=SETTINGS,
        quick=QUICK,
        figure=figure,
        targets=targets,
    ),
)
