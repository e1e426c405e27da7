"""Accuracy against η for SGDM and O2NC, and where each stops training: the η-sensitivity grid.

For each dataset, the train config as its sweep file fixes it (``lightning_o2nc/configs/sweeps/digits.yaml``:
the MLP, 12 epochs; ``lightning_o2nc/configs/sweeps/tuned_fashion_mnist.yaml``: SmallCNN(width=8), ``--fashion-epochs`` of its
30-batch epochs, one by default: a 2-core budget), with β = 0.9, μ = 0 and the config's own η schedule, trains every arm
(``model.scaling`` none / exponential / uniform) at every η of a log-spaced grid, with ``--seeds``.
Only η and the scaling change.

Per run it keeps the test accuracy at x, the step at which the loss became non-finite (the run
stops there) and the *blow-up step*: the first step whose training loss is non-finite or above
``BLOWUP_FACTOR`` · ln(classes) (three times the loss of a uniform guess), together with the
largest s drawn in the ``LOOKBACK`` steps before it. That is the test of whether the Exp(1) tail
explains the instability: if the blow-ups follow large draws, the s before them sits far in
the tail (P(s > t) = e^{-t}); if not, they look like ordinary draws.

A run *trains* when its mean test accuracy over seeds is at least halfway from chance to the best
mean accuracy reached on that dataset (:func:`summary`).

Run: ``python -m benchmarks.eta_sensitivity`` (or ``--quick``); writes
``benchmarks/results/eta_sensitivity.json`` and its plot.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time
from pathlib import Path
from typing import Any

from .jobs import run_jobs
from .report import REPO_ROOT, markdown_table, work_dir
from .results import RESULTS_DIR, write_result
from .tuned_parity import ARMS, parse_settings

SWEEP_FILES = {
    "digits": "lightning_o2nc/configs/sweeps/digits.yaml",
    "fashion_mnist": "lightning_o2nc/configs/sweeps/tuned_fashion_mnist.yaml",
}
BLOWUP_FACTOR = 3.0
LOOKBACK = 5
FIXED = {
    "model.beta": 0.9,
    "model.mu": 0.0,
    "model.average": False,
    "model.monitor": False,
    "trainer.enable_checkpointing": False,
}


@dataclasses.dataclass
class SensitivityConfig:
    datasets: list[str] = dataclasses.field(default_factory=lambda: list(SWEEP_FILES))
    etas: list[float] = dataclasses.field(
        default_factory=lambda: [round(10 ** (-2.5 + k / 2), 5) for k in range(8)]
    )
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1])
    fashion_epochs: int = 1  # 30 steps: enough to see where each arm stops training
    workers: int = 2
    set: list[str] = dataclasses.field(default_factory=list)

    @property
    def logdir(self) -> Path:
        return work_dir() / "eta_sensitivity"


def grid_config(config: dict[str, Any], dataset: str, arm: str, eta: float, seed: int) -> dict:
    """The trial config of one grid point: the sweep file's train config and overrides, plus ours."""
    from lightning_o2nc.sweeps.config import load_sweep_config

    sweep = load_sweep_config(REPO_ROOT / SWEEP_FILES[dataset])
    values = {
        **FIXED,
        "model.lr": eta,
        "model.scaling": ARMS[arm],
        "seed_everything": seed,
        "model.seed": seed,
        "data.init_args.seed": seed,
        **parse_settings(config["set"]),
    }
    if dataset == "fashion_mnist":
        values["trainer.max_epochs"] = config["fashion_epochs"]
    return sweep.trial_config(values)


def blowup(losses: list[float], scales: list[float], classes: int) -> dict[str, Any]:
    """The first step with a non-finite loss or one above BLOWUP_FACTOR · ln(classes), and the s before."""
    limit = BLOWUP_FACTOR * math.log(classes)
    for step, loss in enumerate(losses):
        if not math.isfinite(loss) or loss > limit:
            before = scales[max(0, step - LOOKBACK) : step]
            return {"blowup_step": step + 1, "scale_before_blowup": max(before, default=None)}
    return {"blowup_step": None, "scale_before_blowup": None}


def tail_of_largest(arm: str, s: float) -> float:
    """P(the largest of LOOKBACK independent draws of the arm's scale is >= s).

    Exp(1): 1 - (1 - e^{-s})^k; U(0, 2): 1 - (s / 2)^k. A blow-up caused by the Exp(1) tail would
    follow draws far in it (a small probability); ordinary draws give values near 0.5.
    """
    if ARMS[arm] == "exponential":
        return 1.0 - (1.0 - math.exp(-s)) ** LOOKBACK
    return 1.0 - min(s / 2.0, 1.0) ** LOOKBACK


def grid_run(trial: dict[str, Any], dataset: str, arm: str, eta: float, seed: int) -> dict:
    """Train one grid point's trial config; its result with the blow-up step and the s before."""
    from .config_runs import train_config

    result = train_config(trial, label=f"{dataset} {arm} eta {eta:g} seed {seed}")
    classes = 10
    losses, scales = result.pop("losses"), result.pop("scales")
    return {
        "dataset": dataset,
        "arm": arm,
        "eta": eta,
        "seed": seed,
        **result,
        **blowup(losses, scales, classes),
    }


def run(config: SensitivityConfig) -> dict[str, Any]:
    started = time.perf_counter()
    plain = dataclasses.asdict(config)
    # The job is the trial config itself: a cached run is reused whatever else changed.
    tasks = [
        (grid_config(plain, dataset, arm, eta, seed), dataset, arm, eta, seed)
        for dataset in config.datasets
        for eta in sorted(config.etas, reverse=True)
        for seed in config.seeds
        for arm in ARMS
    ]
    runs = run_jobs(grid_run, tasks, config.workers, config.logdir / "jobs")
    return {"config": plain, "fixed": FIXED, "runs": runs, "seconds": time.perf_counter() - started}


def curves(result: dict[str, Any], dataset: str) -> dict[str, dict[float, list[float]]]:
    """arm -> η -> test accuracies over seeds."""
    table: dict[str, dict[float, list[float]]] = {arm: {} for arm in ARMS}
    for r in result["runs"]:
        if r["dataset"] == dataset:
            table[r["arm"]].setdefault(r["eta"], []).append(r["test_acc"])
    return table


def summary(result: dict[str, Any], dataset: str) -> dict[str, dict[str, Any]]:
    """Per arm: best η and its accuracy, the largest η that trains, the blow-ups and the s before.

    "Trains": mean accuracy at least halfway from chance (0.1) to the dataset's best mean.
    """
    table = curves(result, dataset)
    means = {
        arm: {eta: statistics.fmean(v) for eta, v in row.items()} for arm, row in table.items()
    }
    best_overall = max(m for row in means.values() for m in row.values())
    threshold = 0.1 + 0.5 * (best_overall - 0.1)
    out = {}
    for arm, row in means.items():
        best_eta = max(row, key=row.get)
        training = [eta for eta, m in row.items() if m >= threshold]
        runs = [r for r in result["runs"] if r["dataset"] == dataset and r["arm"] == arm]
        blowups = [r for r in runs if r["blowup_step"] is not None]
        out[arm] = {
            "best_eta": best_eta,
            "best_acc": row[best_eta],
            "largest_training_eta": max(training, default=None),
            "threshold": threshold,
            "blowups": len(blowups),
            "runs": len(runs),
            "max_scale": max(r["max_scale"] for r in runs),
            "scales_before_blowup": [
                r["scale_before_blowup"] for r in blowups if r["scale_before_blowup"] is not None
            ],
        }
    return out


def to_markdown(result: dict[str, Any]) -> str:
    """Accuracy against η per arm and dataset, then best η, stability limit and the s before blow-ups."""
    config = result["config"]
    lines = [
        f"β = {FIXED['model.beta']}, μ = {FIXED['model.mu']}, each config's own η schedule (η is its "
        f"peak); digits: `{SWEEP_FILES['digits']}` (its train config and overrides); Fashion-MNIST: "
        f"`{SWEEP_FILES['fashion_mnist']}` at {config['fashion_epochs']} epochs. Seeds "
        f"{config['seeds']}; test accuracy at x. A *blow-up* is the first step whose training loss "
        f"is non-finite or above {BLOWUP_FACTOR:g}·ln(10); an arm *trains* at η when its mean "
        "accuracy is at least halfway from chance to the best mean of that dataset.",
    ]
    for dataset in config["datasets"]:
        table = curves(result, dataset)
        etas = sorted({eta for row in table.values() for eta in row})
        blowups: dict[tuple[str, float], int] = {}
        for r in result["runs"]:
            if r["dataset"] == dataset and r["blowup_step"] is not None:
                blowups[r["arm"], r["eta"]] = blowups.get((r["arm"], r["eta"]), 0) + 1
        rows = [
            (
                f"{eta:g}",
                *(
                    f"{100 * statistics.fmean(table[arm][eta]):.1f}"
                    + (f" ({blowups[arm, eta]}✗)" if blowups.get((arm, eta)) else "")
                    for arm in ARMS
                ),
            )
            for eta in etas
        ]
        lines += [
            "",
            f"**{dataset}**: mean test accuracy % over seeds (n✗: seeds that blew up)",
            "",
            markdown_table(["η", *ARMS], rows),
            "",
        ]
        found = summary(result, dataset)
        summary_rows = []
        for arm, row in found.items():
            before = row["scales_before_blowup"]
            summary_rows.append(
                (
                    arm,
                    f"{row['best_eta']:g}",
                    f"{100 * row['best_acc']:.1f}",
                    f"{row['largest_training_eta']:g}" if row["largest_training_eta"] else "none",
                    f"{row['blowups']}/{row['runs']}",
                    f"{row['max_scale']:.2f}",
                    (
                        f"median {statistics.median(before):.2f}, max {max(before):.2f}; "
                        f"P(largest of {LOOKBACK} draws ≥ median) = "
                        f"{tail_of_largest(arm, statistics.median(before)):.2f}"
                        if before and arm != "SGDM"
                        else "—"
                    ),
                )
            )
        lines.append(
            markdown_table(
                [
                    "arm",
                    "best η",
                    "acc at best η %",
                    "largest η that trains",
                    "runs that blew up",
                    "largest s drawn",
                    f"largest s in the {LOOKBACK} steps before a blow-up",
                ],
                summary_rows,
            )
        )
        sgdm = found["SGDM"]
        for arm in ARMS:
            if arm == "SGDM":
                continue
            row = found[arm]
            if sgdm["largest_training_eta"] and row["largest_training_eta"]:
                ratio = sgdm["largest_training_eta"] / row["largest_training_eta"]
                limit = f"SGDM's / this arm's = {ratio:.3g}"
            else:
                limit = "not defined (an arm never trains)"
            lines += [
                "",
                f"- {arm}: best η {row['best_eta']:g} against SGDM's {sgdm['best_eta']:g} "
                f"(SGDM's / this arm's = {sgdm['best_eta'] / row['best_eta']:.3g}); largest η "
                f"that trains: {limit}.",
            ]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """Test accuracy against η, one curve per arm (mean over seeds, a dot per seed), per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = result["config"]["datasets"]
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.6), dpi=90)
    axes = list(axes) if len(datasets) > 1 else [axes]
    for ax, dataset in zip(axes, datasets, strict=True):
        for i, (arm, row) in enumerate(curves(result, dataset).items()):
            etas = sorted(row)
            ax.plot(
                etas,
                [100 * statistics.fmean(row[e]) for e in etas],
                "-o",
                ms=3,
                color=f"C{i}",
                label=arm,
            )
            for eta in etas:
                ax.scatter(
                    [eta] * len(row[eta]),
                    [100 * v for v in row[eta]],
                    s=6,
                    color=f"C{i}",
                    alpha=0.5,
                )
        ax.set(
            xscale="log",
            xlabel="η (peak of the config's schedule)",
            ylabel="test accuracy (%)",
            title=f"{dataset}, β = {FIXED['model.beta']}",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = SensitivityConfig()
    parser.add_argument("--datasets", nargs="+", default=defaults.datasets, choices=SWEEP_FILES)
    parser.add_argument("--etas", type=float, nargs="+", default=defaults.etas)
    parser.add_argument("--seeds", type=int, nargs="+", default=defaults.seeds)
    parser.add_argument("--fashion-epochs", type=int, default=defaults.fashion_epochs)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE")
    parser.add_argument("--quick", action="store_true", help="digits only, 1 seed, 3 epochs")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="folder of the JSON and the PNG")
    args = parser.parse_args(argv)
    options = {k: v for k, v in vars(args).items() if k not in ("quick", "out")}
    if args.quick:
        options.update(datasets=["digits"], seeds=[0], set=["trainer.max_epochs=3", *args.set])
    result = run(SensitivityConfig(**options))
    result["command"] = "python -m benchmarks.eta_sensitivity" + (" --quick" if args.quick else "")
    name = "eta_sensitivity_quick" if args.quick else "eta_sensitivity"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(result, out / f"{name}.png")
    result["figures"] = [f"{name}.png"]
    print(f"wrote {write_result(name, result, out)} in {result['seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
