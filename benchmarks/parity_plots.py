"""The fixed-η parity run's figures: training curves per arm and the stationarity panel.

Drawn at run time from the raw per-step data of :func:`benchmarks.accuracy_parity.run` (which is
not stored); the PNGs go next to ``benchmarks/results/accuracy_parity.json``.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from .parity_arms import ARMS, AVERAGED_ARM, PANEL_TAGS


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
