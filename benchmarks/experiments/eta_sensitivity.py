"""Accuracy against η for SGDM and O2NC, and where each stops training: the η-sensitivity grid.

A run's *blow-up step* is its first with a non-finite training loss or one above
``BLOWUP_FACTOR`` · ln(10) (three times a uniform guess's). Had the Exp(1) tail caused it
(P(s > t) = e^{-t}), the largest s of the ``LOOKBACK`` steps before would sit far in the tail. An
arm *trains* at η when its mean accuracy is at least halfway from chance to the dataset's best.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from statistics import fmean, median
from typing import Any

from matplotlib.figure import Figure

from lightning_o2nc.sweeps.config import load_sweep_config

from ..harness import REPO_ROOT, Experiment, run_jobs
from ..stats import markdown_table
from ..training import train_config

SWEEP_FILES = {
    "digits": "lightning_o2nc/configs/sweeps/digits.yaml",
    "fashion_mnist": "lightning_o2nc/configs/sweeps/tuned_fashion_mnist.yaml",
}
#: Arm -> ``model.scaling``. SGDM is the same optimizer with s = 1 (torch SGD's update).
ARMS = {"SGDM": "none", "O2NC (exponential)": "exponential", "O2NC (uniform)": "uniform"}
BLOWUP_FACTOR, LOOKBACK, CHANCE = 3.0, 5, 0.1  # both datasets have 10 classes
FIXED = {"model.beta": 0.9, "model.mu": 0.0, "model.average": False, "model.monitor": False}
FIXED["trainer.enable_checkpointing"] = False
#: The small Fashion-MNIST run this grid measures (the tuned comparison's sweep file trains larger):
#: SmallCNN(width=8), epochs of 30 batches of 128, validation on 8 batches, test on 40.
FASHION_WORKLOAD = {"model.backbone.init_args.width": 8, "trainer.limit_train_batches": 30}
FASHION_WORKLOAD |= {"trainer.limit_val_batches": 8, "trainer.limit_test_batches": 40}
HEADERS = ["arm", "best η", "acc at best η %", "largest η that trains", "runs that blew up"]
HEADERS += ["largest s drawn", f"largest s in the {LOOKBACK} steps before a blow-up"]
HEADERS += ["SGDM's best η / this arm's", "SGDM's largest η that trains / this arm's"]


def grid_run(dataset: str, arm: str, eta: float, seed: int, overrides: dict) -> dict[str, Any]:
    """One grid point: the sweep file's trial config with ours on top, with its blow-up step."""
    values = {**FIXED, "model.lr": eta, "model.scaling": ARMS[arm], "seed_everything": seed}
    values |= {"model.seed": seed, "data.init_args.seed": seed, **overrides}
    trial = load_sweep_config(REPO_ROOT / SWEEP_FILES[dataset]).trial_config(values)
    result = train_config(trial, label=f"{dataset} {arm} eta {eta:g} seed {seed}")
    result |= blowup(result.pop("losses"), result.pop("scales"))
    return {"dataset": dataset, "arm": arm, "eta": eta, "seed": seed, **result}


def blowup(losses: list[float], scales: list[float]) -> dict[str, Any]:
    """The first step with a non-finite loss or one above BLOWUP_FACTOR · ln(10), and the s before."""
    for step, loss in enumerate(losses):
        if not math.isfinite(loss) or loss > BLOWUP_FACTOR * math.log(1 / CHANCE):
            before = scales[max(0, step - LOOKBACK) : step]
            return {"blowup_step": step + 1, "scale_before_blowup": max(before, default=None)}
    return {"blowup_step": None, "scale_before_blowup": None}


def tail_of_largest(arm: str, s: float) -> float:
    """P(the largest of k = LOOKBACK draws of the arm's scale is ≥ s) = 1 − F(s)^k, with F(s) =
    1 − e^{-s} for Exp(1), s / 2 for U(0, 2): small far in the Exp(1) tail, ~0.5 for usual draws."""
    cdf = 1.0 - math.exp(-s) if ARMS[arm] == "exponential" else min(s / 2.0, 1.0)
    return 1.0 - cdf**LOOKBACK


def run(settings: dict[str, Any], work: Path) -> dict[str, Any]:
    """Every (dataset, η, seed, arm), largest η first, cached: a rerun trains only what it lacks."""
    if unknown := sorted(set(settings["datasets"]) - set(SWEEP_FILES)):
        raise ValueError(f"eta_sensitivity: unknown datasets {unknown}; valid: {list(SWEEP_FILES)}")
    extra = {"fashion_mnist": FASHION_WORKLOAD | {"trainer.max_epochs": settings["fashion_epochs"]}}
    etas = sorted(settings["etas"], reverse=True)
    grid = itertools.product(settings["datasets"], etas, settings["seeds"], ARMS)
    tasks = [(d, a, e, s, {**settings["overrides"], **extra.get(d, {})}) for d, e, s, a in grid]
    runs = run_jobs(grid_run, tasks, settings["workers"], work / "jobs")
    return {"config": settings, "fixed": FIXED, "runs": runs}


def summary(result: dict[str, Any], dataset: str) -> dict[str, dict[str, Any]]:
    """Per arm: the test accuracies at each η (over seeds), the best η and its mean accuracy, the
    largest η that trains, the blow-ups and the largest s drawn, overall and before a blow-up."""
    out: dict[str, dict[str, Any]] = {arm: {"accuracies": {}} for arm in ARMS}
    for r in result["runs"]:
        if r["dataset"] == dataset:
            out[r["arm"]]["accuracies"].setdefault(r["eta"], []).append(r["test_acc"])
    means = {arm: {e: fmean(v) for e, v in o["accuracies"].items()} for arm, o in out.items()}
    threshold = CHANCE + 0.5 * (max(m for row in means.values() for m in row.values()) - CHANCE)
    for arm, row in means.items():
        runs = [r for r in result["runs"] if r["dataset"] == dataset and r["arm"] == arm]
        blown = [r for r in runs if r["blowup_step"] is not None]
        before = [r["scale_before_blowup"] for r in blown if r["blowup_step"] > 1]
        out[arm] |= {
            "best_eta": (best := max(row, key=row.get)),
            "best_acc": row[best],
            "largest_training_eta": max([e for e, m in row.items() if m >= threshold] or [None]),
            "blowups": f"{len(blown)}/{len(runs)}",
            "blown_at": [r["eta"] for r in blown],
            "max_scale": max(r["max_scale"] for r in runs),
            "scales_before_blowup": before,
        }
    return out


def _summary_row(arm: str, row: dict[str, Any], sgdm: dict[str, Any]) -> tuple:
    before, trains, tail = row["scales_before_blowup"], row["largest_training_eta"], "—"
    if before and ARMS[arm] != "none":
        m = median(before)
        tail = f"median {m:.2f}, max {max(before):.2f}; P(largest of {LOOKBACK} draws ≥ median) = "
        tail += f"{tail_of_largest(arm, m):.2f}"
    limit = sgdm["largest_training_eta"] / trains if trains and sgdm["largest_training_eta"] else 0
    ratios = (f"{sgdm['best_eta'] / row['best_eta']:.3g}", f"{limit:.3g}" if limit else "—")
    trained = f"{trains:g}" if trains else "none"
    cells = (f"{row['best_eta']:g}", f"{100 * row['best_acc']:.1f}", trained)
    return (arm, *cells, row["blowups"], f"{row['max_scale']:.2f}", tail, *ratios)


def _cell(found: dict[str, Any], eta: float) -> str:
    mean, blown = fmean(found["accuracies"][eta]), found["blown_at"].count(eta)
    return f"{100 * mean:.1f}" + (f" ({blown}✗)" if blown else "")


def render(result: dict[str, Any]) -> str:
    config = result["config"]
    lines = [
        f"β = {FIXED['model.beta']}, μ = {FIXED['model.mu']}, each config's own η schedule (η is its "
        f"peak): `{SWEEP_FILES['digits']}`; `{SWEEP_FILES['fashion_mnist']}` at "
        f"{config['fashion_epochs']} epochs. Seeds {config['seeds']}; test accuracy at x. A *blow-up* "
        f"is the first step whose training loss is non-finite or above {BLOWUP_FACTOR:g}·ln(10); an "
        "arm *trains* at η when its mean accuracy is at least halfway from chance to the best mean.",
    ]
    for dataset in config["datasets"]:
        found = summary(result, dataset)
        etas = sorted({eta for row in found.values() for eta in row["accuracies"]})
        rows = [(f"{e:g}", *(_cell(found[a], e) for a in ARMS)) for e in etas]
        summary_rows = [_summary_row(arm, row, found["SGDM"]) for arm, row in found.items()]
        lines += ["", f"**{dataset}**: mean test accuracy % over seeds (n✗: seeds that blew up)"]
        lines += ["", markdown_table(["η", *ARMS], rows), "", markdown_table(HEADERS, summary_rows)]
    return "\n".join(lines)


def figure(result: dict[str, Any], folder: Path) -> list[str]:
    """Test accuracy against η, one curve per arm (mean over seeds, a dot per seed), per dataset."""
    datasets = result["config"]["datasets"]
    fig = Figure(figsize=(5 * len(datasets), 3.6), dpi=90, layout="tight")
    for ax, dataset in zip(fig.subplots(1, len(datasets), squeeze=False)[0], datasets, strict=True):
        for i, (arm, found) in enumerate(summary(result, dataset).items()):
            row = found["accuracies"]
            etas = sorted(row)
            ax.plot(etas, [100 * fmean(row[e]) for e in etas], "-o", ms=3, color=f"C{i}", label=arm)
            dots = [(eta, 100 * v) for eta in etas for v in row[eta]]
            ax.scatter(*zip(*dots), s=6, color=f"C{i}", alpha=0.5)
        ax.set(xscale="log", xlabel="η (peak of the config's schedule)", ylabel="test accuracy (%)")
        ax.set(title=f"{dataset}, β = {FIXED['model.beta']}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(folder / "eta_sensitivity.png")
    return ["eta_sensitivity.png"]


# fmt: off
SETTINGS = {
    "datasets": list(SWEEP_FILES), "etas": [round(10 ** (-2.5 + k / 2), 5) for k in range(8)],
    "seeds": [0, 1], "workers": 2, "fashion_epochs": 1,  # 30 steps: enough to see where arms stop
    "overrides": {},  # trial config path -> value, on top of the sweep file's
}
QUICK = {"datasets": ["digits"], "etas": [0.1, 1.0, 100.0], "seeds": [0],
         "overrides": {"trainer.max_epochs": 3}}
# fmt: on
EXPERIMENTS = (
    Experiment(
        name="eta_sensitivity",
        title="η-sensitivity and stability limits",
        workload="digits (MLP) and Fashion-MNIST (SmallCNN) as their sweep files train them",
        arms=tuple(ARMS),
        measurement="test accuracy at x per η and seed; the blow-up step and the s drawn before it",
        run=run,
        render=render,
        settings=SETTINGS,
        quick=QUICK,
        figure=figure,
    ),
)
