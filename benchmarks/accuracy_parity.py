"""Accuracy parity on real data: SGDM against O2NC (exponential, uniform, and at the averaged iterate).

Every arm trains the same small CNN with the same seeds, epochs, (eta, beta), weight decay and lr
schedule through the Lightning layer (``O2NCModule`` + the data module); only the optimizer's
random scaling differs:

- **SGDM**: ``optimizer="sgdm"`` (ExponentiatedO2NC with ``scaling="none"``, i.e. torch SGD);
- **O2NC (exponential)**: ``optimizer="o2nc"``, s ~ Exp(1), the paper's method;
- **O2NC (uniform)**: s ~ U(0, 2), the ablation;
- **O2NC at x_bar**: the exponential runs (built with ``average=True``, which does not change the
  training trajectory) evaluated at the averaged iterate by the ``AveragedIterate`` callback, with
  BatchNorm statistics recomputed at x_bar.

Reported: test accuracy mean ± std over seeds, each O2NC arm's difference to SGDM with a two-sided
Welch t-test, and one PNG with the training loss and the held-out validation accuracy per epoch
(mean over seeds with a ±1 std band). The exponential run of the first seed also logs the theory's
quantities (``O2NCMonitor`` to TensorBoard); :func:`stationarity_panel` reads them back with tbparse
and plots ||m_hat||, V and the certificate.

Runs are spread over ``workers`` processes with one torch thread each (on 2 cores this is both the
fastest and the most robust layout against other load).

Run: ``python -m benchmarks.accuracy_parity [--dataset digits|fashion_mnist] [--epochs N] ...``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing
import shutil
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .report import config_command, markdown_table, mean_std, work_dir

ARMS: dict[str, dict[str, Any]] = {
    "SGDM": {"optimizer": "sgdm", "average": False},
    "O2NC (exponential)": {"optimizer": "o2nc", "scaling": "exponential", "average": True},
    "O2NC (uniform)": {"optimizer": "o2nc", "scaling": "uniform", "average": False},
}
AVERAGED_ARM = "O2NC at x̄ (exponential runs)"
BASELINE = "SGDM"
PANEL_TAGS = {
    "o2nc/grad_ema_norm": "‖m̂‖ (normalized gradient EMA)",
    "o2nc/iterate_variance": "V (iterate variance around x̄)",
    "o2nc/stationarity_certificate": "certificate ‖m̂‖ + c·V",
}


@dataclass
class ParityConfig:
    dataset: str = "fashion_mnist"
    width: int = 16
    epochs: int = 4
    limit_train_batches: int = 250  # 0: full epochs
    val_batches: int = 16
    batch_size: int = 128
    lr: float = 0.05
    beta: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "cosine"
    certificate_c: float = 1.0
    log_every_n_steps: int = 10
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    workers: int = 2  # 0: run in this process

    @property
    def logdir(self) -> Path:
        return work_dir() / "parity_logs" / self.dataset


def train_one(config: dict[str, Any], arm: str, seed: int) -> dict[str, Any]:
    """One fit + test of ``arm`` with ``seed``; returns accuracies and per-step / per-epoch curves."""
    import torch
    from lightning.pytorch import Callback, Trainer, seed_everything
    from lightning.pytorch.loggers import TensorBoardLogger

    from lightning_o2nc import O2NCModule

    from .workloads import make_backbone, make_datamodule

    cfg = ParityConfig(**config)
    if cfg.workers:
        torch.set_num_threads(1)

    class Curves(Callback):
        def __init__(self) -> None:
            self.train_loss: list[float] = []
            self.val: list[dict[str, float]] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.train_loss.append(float(outputs["loss"]))

        def on_validation_end(self, trainer, pl_module) -> None:
            if trainer.sanity_checking:
                return
            metrics = trainer.callback_metrics
            self.val.append(
                {
                    k: float(metrics[k])
                    for k in ("val/acc", "val/acc_avg", "val/loss")
                    if k in metrics
                }
            )

    started = time.perf_counter()
    seed_everything(seed, workers=True, verbose=False)
    datamodule = make_datamodule(cfg.dataset, cfg.batch_size, seed=seed)
    backbone = make_backbone("small_cnn", datamodule.input_shape, datamodule.num_classes, cfg.width)
    options = ARMS[arm]
    with_panel = options["optimizer"] == "o2nc" and options.get("average") and seed == cfg.seeds[0]
    model = O2NCModule(
        backbone=backbone,
        lr=cfg.lr,
        beta=cfg.beta,
        weight_decay=cfg.weight_decay,
        seed=seed,
        schedules={"lr": {"shape": cfg.lr_schedule}},
        certificate_c=cfg.certificate_c,
        monitor=bool(with_panel),
        **options,
    )
    logger: Any = False
    if with_panel:
        logger = TensorBoardLogger(str(cfg.logdir), name="stationarity", version=f"seed{seed}")
    curves = Curves()
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=cfg.epochs,
        limit_train_batches=cfg.limit_train_batches or 1.0,
        limit_val_batches=cfg.val_batches,
        num_sanity_val_steps=0,
        logger=logger,
        log_every_n_steps=cfg.log_every_n_steps,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[curves],
        deterministic=False,
    )
    trainer.fit(model, datamodule=datamodule)
    trainer.test(model, datamodule=datamodule, verbose=False)
    metrics = trainer.callback_metrics
    result = {
        "arm": arm,
        "seed": seed,
        "test_acc": float(metrics["test/acc"]),
        "test_acc_avg": float(metrics["test/acc_avg"]) if "test/acc_avg" in metrics else None,
        "train_loss": curves.train_loss,
        "val": curves.val,
        "steps_per_epoch": len(curves.train_loss) // max(cfg.epochs, 1),
        "seconds": time.perf_counter() - started,
        "tensorboard_dir": getattr(logger, "log_dir", None) if logger else None,
    }
    print(
        f"parity {cfg.dataset} {arm} seed {seed}: test acc {result['test_acc']:.4f}"
        + (f", at x̄ {result['test_acc_avg']:.4f}" if result["test_acc_avg"] is not None else "")
        + f" ({result['seconds']:.0f} s)",
        flush=True,
    )
    return result


def run(config: ParityConfig) -> dict[str, Any]:
    """Train every (arm, seed); returns the per-run results and the config."""
    shutil.rmtree(config.logdir, ignore_errors=True)
    tasks = [(arm, seed) for seed in config.seeds for arm in ARMS]
    started = time.perf_counter()
    if config.workers:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(config.workers, mp_context=context) as pool:
            futures = [pool.submit(train_one, asdict(config), arm, seed) for arm, seed in tasks]
            runs = [future.result() for future in futures]
    else:
        runs = [train_one(asdict(config), arm, seed) for arm, seed in tasks]
    return {"config": asdict(config), "runs": runs, "seconds": time.perf_counter() - started}


def test_accuracies(result: dict[str, Any]) -> dict[str, list[float]]:
    """Arm -> test accuracies in seed order (the averaged iterate as its own arm)."""
    accuracies: dict[str, list[float]] = {arm: [] for arm in ARMS}
    accuracies[AVERAGED_ARM] = []
    for run in sorted(result["runs"], key=lambda r: r["seed"]):
        accuracies[run["arm"]].append(run["test_acc"])
        if run["test_acc_avg"] is not None:
            accuracies[AVERAGED_ARM].append(run["test_acc_avg"])
    return accuracies


def standard_error_of_difference(a: list[float], b: list[float]) -> float:
    """Standard error of mean(a) - mean(b) (Welch): sqrt(var_a / n_a + var_b / n_b)."""
    if len(a) < 2 or len(b) < 2:
        return math.nan
    return math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))


def welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """Two-sided Welch t-test of mean(a) - mean(b): (t, p); NaN when a test is undefined."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan
    test = stats.ttest_ind(a, b, equal_var=False)
    return float(test.statistic), float(test.pvalue)


def plot_curves(result: dict[str, Any], path: Path) -> None:
    """Training loss (per epoch fraction) and validation accuracy per epoch, mean ± std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    config = result["config"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=90)
    colors = dict(zip([*ARMS, AVERAGED_ARM], ["C0", "C1", "C2", "C3"], strict=True))
    bins_per_epoch = 4
    for arm in ARMS:
        runs = [r for r in result["runs"] if r["arm"] == arm]
        steps = min(len(r["train_loss"]) for r in runs)
        n_bins = max(1, min(steps, config["epochs"] * bins_per_epoch))
        edges = np.linspace(0, steps, n_bins + 1).astype(int)
        binned = np.array(
            [
                [np.mean(r["train_loss"][lo:hi]) for lo, hi in itertools.pairwise(edges)]
                for r in runs
            ]
        )
        x = (edges[:-1] + edges[1:]) / 2 / max(steps / config["epochs"], 1)
        mean, std = binned.mean(0), binned.std(0, ddof=1) if len(runs) > 1 else 0 * binned[0]
        ax_loss.plot(x, mean, color=colors[arm], label=arm)
        ax_loss.fill_between(x, mean - std, mean + std, color=colors[arm], alpha=0.2)
        series = [("val/acc", arm, "-")]
        if ARMS[arm].get("average"):
            series.append(("val/acc_avg", AVERAGED_ARM, "--"))
        for key, label, style in series:
            values = np.array([[100 * v[key] for v in r["val"]] for r in runs])
            epochs = np.arange(1, values.shape[1] + 1)
            mean = values.mean(0)
            std = values.std(0, ddof=1) if len(runs) > 1 else 0 * mean
            ax_acc.plot(epochs, mean, style, color=colors[label], label=label, marker="o", ms=3)
            ax_acc.fill_between(epochs, mean - std, mean + std, color=colors[label], alpha=0.2)
    ax_loss.set(xlabel="epoch", ylabel="training loss", yscale="log", title="training loss")
    ax_acc.set(
        xlabel="epoch",
        ylabel="accuracy (%)",
        title=f"held-out validation accuracy ({config['val_batches']} batches)",
    )
    ax_loss.legend(fontsize=8)
    ax_acc.legend(fontsize=8)
    fig.suptitle(
        f"{config['dataset']}: SmallCNN(width={config['width']}), {len(config['seeds'])} seeds, "
        "mean ± 1 std",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def stationarity_panel(result: dict[str, Any], path: Path) -> dict[str, float] | None:
    """Plot ||m_hat||, V and the certificate of the first exponential run from its TensorBoard events.

    Returns the first and last logged values of each quantity, or None without a logged run.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tbparse import SummaryReader

    logged = [r for r in result["runs"] if r["tensorboard_dir"]]
    if not logged:
        return None
    run = logged[0]
    scalars = SummaryReader(run["tensorboard_dir"]).scalars
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.3), dpi=90)
    summary = {}
    for ax, (tag, title) in zip(axes, PANEL_TAGS.items(), strict=True):
        series = scalars[scalars["tag"] == tag].sort_values("step")
        if series.empty:
            raise RuntimeError(
                f"tag {tag} not in {run['tensorboard_dir']}: is O2NCMonitor logging?"
            )
        ax.plot(series["step"], series["value"], lw=1)
        ax.set(title=title, xlabel="step", yscale="log")
        summary[tag] = (float(series["value"].iloc[0]), float(series["value"].iloc[-1]))
    steps_per_epoch = run["steps_per_epoch"]
    for ax in axes:
        for epoch in range(1, result["config"]["epochs"]):
            ax.axvline(epoch * steps_per_epoch, color="0.8", lw=0.6, zorder=0)
    fig.suptitle(
        f"O2NC (exponential, average=True) on {result['config']['dataset']}, seed {run['seed']}: "
        f"read back from TensorBoard (O2NCMonitor, every {result['config']['log_every_n_steps']} "
        f"steps, c = {result['config']['certificate_c']}); grey lines: epochs",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return summary


def to_markdown(
    result: dict[str, Any],
    curves_png: str | None = None,
    command: str | None = None,
) -> str:
    config = result["config"]
    command = command or config_command(
        "benchmarks.accuracy_parity", config, asdict(ParityConfig())
    )
    accuracies = test_accuracies(result)
    baseline = accuracies[BASELINE]
    rows = []
    for arm, values in accuracies.items():
        if not values:
            continue
        if arm == BASELINE:
            rows.append((arm, mean_std(values, 100), "—", "—", "—"))
            continue
        diff = 100 * (statistics.fmean(values) - statistics.fmean(baseline))
        error = 100 * standard_error_of_difference(values, baseline)
        t, p = welch(values, baseline)
        verdict = "met" if abs(diff) <= 0.3 else "**missed**"
        rows.append(
            (
                arm,
                mean_std(values, 100),
                f"{diff:+.2f} ± {error:.2f}",
                f"t = {t:.2f}, p = {p:.3f}",
                verdict,
            )
        )
    per_seed = [
        (arm, ", ".join(f"{100 * v:.2f}" for v in values))
        for arm, values in accuracies.items()
        if values
    ]
    epochs_text = (
        f"{config['epochs']} epochs of {config['limit_train_batches']} batches "
        f"({config['limit_train_batches'] * config['batch_size']} training images drawn afresh each "
        "epoch)"
        if config["limit_train_batches"]
        else f"{config['epochs']} full epochs"
    )
    seconds = [r["seconds"] for r in result["runs"]]
    lines = [
        f"{config['dataset']}, SmallCNN(width={config['width']}) from `lightning_o2nc`, batch "
        f"{config['batch_size']}, {epochs_text}; eta = {config['lr']}, beta = {config['beta']}, "
        f"weight decay {config['weight_decay']} (not on biases/BatchNorm), {config['lr_schedule']} "
        f"lr schedule per step; seeds {config['seeds']} (the seed fixes the initialization, the "
        "data order and the scalar stream). Test accuracy on the full test set after the last epoch. "
        f"Wall time: {result['seconds'] / 60:.1f} min for {len(seconds)} runs on "
        f"{config['workers'] or 1} process(es) (median run {statistics.median(seconds):.0f} s).",
        "",
        f"Command: {command}",
        "",
        markdown_table(
            [
                "arm",
                "test acc % (mean ± std)",
                "Δ vs SGDM (points ± SE)",
                "Welch two-sided",
                "target |Δ| ≤ 0.3",
            ],
            rows,
        ),
        "",
        markdown_table(["arm", "test acc % per seed"], per_seed),
    ]
    means = {arm: statistics.fmean(v) for arm, v in accuracies.items() if v}
    if means.get(BASELINE, 0) > means.get("O2NC (uniform)", 1) > means.get("O2NC (exponential)", 1):
        lines += [
            "",
            "Reading: the arms are ordered by the spread of the random scale — SGDM (s = 1), "
            "uniform (E[s²] = 4/3), exponential (E[s²] = 2), all with E[s] = 1 — so in this short "
            "budget the extra step-size noise costs accuracy, and the averaged iterate (a β-EMA "
            "over about 1/(1−β) recent iterates, taken when the cosine schedule has already "
            "brought η near zero) does not recover it. The paper's claim of parity is for "
            "200-epoch CIFAR-10 training (section 6), which this CPU budget cannot reach.",
        ]
    missed = [r for r in rows if "missed" in r[-1]]
    if missed:
        significant = [r[0] for r in missed if float(r[3].rsplit("p = ", 1)[-1]) < 0.05]
        lines += [
            "",
            "Δ is shown with its standard error (SE), and the Welch p-value tests Δ = 0: a miss "
            "of the 0.3-point target with p ≥ 0.05 is within the seed-to-seed noise, one with "
            "p < 0.05 is a real difference at this budget"
            + (f" (here: {', '.join(significant)})." if significant else " (none here)."),
        ]
    if curves_png:
        lines += ["", f"![training curves]({curves_png})"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = asdict(ParityConfig())
    for name, value in defaults.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, list):
            parser.add_argument(flag, type=int, nargs="+", default=value)
        else:
            parser.add_argument(flag, type=type(value), default=value)
    parser.add_argument("--json", help="also write the raw result here")
    parser.add_argument("--png", help="write the curves here")
    args = vars(parser.parse_args(argv))
    json_path, png = args.pop("json"), args.pop("png")
    result = run(ParityConfig(**args))
    if png:
        plot_curves(result, Path(png))
    print(to_markdown(result, png))
    if json_path:
        with open(json_path, "w") as handle:
            json.dump(result, handle)


if __name__ == "__main__":
    main()
