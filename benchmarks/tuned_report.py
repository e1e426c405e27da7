"""The "Tuned comparison" section of RESULTS.md, from ``benchmarks/results/tuned_parity.json``.

The file (written by :mod:`benchmarks.tuned_parity`) holds ``config`` (epochs, seeds, horizons,
the sweep file), ``sweep`` (its space, sampler, pruner and objective), ``fixed`` (its overrides),
``steps_per_epoch`` (per budget), ``studies`` (per arm and budget: trial counts, the best
validation accuracy and the best values) and ``runs`` (per arm, budget and seed: ``test_acc`` at
x, ``test_acc_avg`` at the optimizer's x̄, ``test_acc_horizon`` {discount: accuracy},
``diverged_at``, ``max_scale``, ``seconds``).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from .compare import difference_text
from .report import markdown_table, mean_std
from .tuned_parity import ARMS, BASELINE


def _schedule_text(schedule: dict[str, Any] | None) -> str:
    if not schedule:
        return "config's"
    arguments = ", ".join(f"{k} {v:.3g}" for k, v in schedule.items() if k != "shape")
    return schedule["shape"] + (f" ({arguments})" if arguments else "")


def _accuracies(result: dict[str, Any], arm: str, epochs: int, key: str) -> list[float]:
    runs = sorted(
        (r for r in result["runs"] if r["arm"] == arm and r["epochs"] == epochs),
        key=lambda r: r["seed"],
    )
    if key in ("test_acc", "test_acc_avg"):
        return [r[key] for r in runs]
    return [r["test_acc_horizon"][key] for r in runs]


def _budget(result: dict[str, Any], epochs: int) -> str:
    return f"{epochs} ep ({epochs * result['steps_per_epoch'][str(epochs)]} steps)"


def targets(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Each tuned O2NC arm within 0.3 points of tuned SGDM, at x, per budget."""
    rows = []
    for epochs in result["config"]["epochs"]:
        base = _accuracies(result, BASELINE, epochs, "test_acc")
        for arm in ARMS:
            if arm == BASELINE:
                continue
            values = _accuracies(result, arm, epochs, "test_acc")
            delta, test = difference_text(values, base)
            diff = 100 * (statistics.fmean(values) - statistics.fmean(base))
            rows.append(
                (
                    f"tuned {arm} within 0.3 points of tuned SGDM, {_budget(result, epochs)}",
                    f"{delta} points ({test})",
                    "met" if abs(diff) <= 0.3 else "**missed**",
                )
            )
    return rows


def to_markdown(result: dict[str, Any]) -> str:
    """Protocol, the tuned configurations, test accuracy at x and x̄, Δ vs SGDM, x̄ horizons."""
    config, fixed = result["config"], result["fixed"]
    horizons = [str(h) for h in config["horizons"]]
    width = fixed.get("model.backbone", {}).get("init_args", {}).get("width", "?")
    sampler, pruner = result["sweep"]["sampler"], result["sweep"]["pruner"]
    n_trials = {s["n_trials"] for s in result["studies"]}
    lines = [
        f"Fashion-MNIST, SmallCNN(width={width}), batch 128, epochs of "
        f"{fixed.get('trainer.limit_train_batches', 'all')} batches, validation on "
        f"{fixed.get('trainer.limit_val_batches', 'all')} held-out batches, test on the first "
        f"{fixed.get('trainer.limit_test_batches', 'all')} test batches of 128; weight decay from "
        "`lightning_o2nc/configs/train/fashion_mnist_o2nc.yaml`. Each arm and budget is one `o2nc-sweep` study "
        f"of `{config['sweep_file']}` ({'/'.join(map(str, sorted(n_trials)))} trials, sampler "
        f"{sampler['name']} {sampler.get('options', {})} seed 0, pruner {pruner['name']} "
        f"{pruner.get('options', {})}, objective val/acc at x) over η (log-uniform), β (through a "
        "log-uniform 1 − β), μ (zero or log-uniform) and the η schedule's shape; then "
        f"{len(config['seeds'])} seeds ({config['seeds']}) of each arm at its best trial, tested at "
        "x, at the optimizer's x̄ (discount β) and at x̄ with the discounts "
        f"{', '.join(horizons)} (same trajectory; BatchNorm recomputed at each x̄).",
        "",
        "**Best configuration per arm** (from its own study"
        + (
            f", tuned at {result['studies'][0]['tuned_at_epochs']} epochs in "
            f"`{result['studies'][0]['tuned_in']}` and not tuned again here):"
            if result["studies"] and "tuned_in" in result["studies"][0]
            else "):"
        ),
        "",
    ]
    best_rows = []
    for study in sorted(result["studies"], key=lambda s: (s["epochs"], list(ARMS).index(s["arm"]))):
        values = study["best_values"]
        best_rows.append(
            (
                _budget(result, study["epochs"]),
                study["arm"],
                f"{values['model.lr']:.3g}",
                f"{values['model.beta']:.3f}",
                f"{values['model.mu']:.3g}",
                _schedule_text(values.get("model.schedules.lr")),
                f"{100 * study['best_value']:.2f}",
                f"{study['complete']}/{study['pruned']}/{study['failed']}"
                + (f" ({study['distinct']} distinct)" if "distinct" in study else ""),
            )
        )
    lines += [
        markdown_table(
            [
                "budget",
                "arm",
                "η",
                "β",
                "μ",
                "η schedule",
                "best val acc %",
                "trials done/pruned/failed",
            ],
            best_rows,
        ),
        "",
        "**Test accuracy at each arm's best configuration** (mean ± std over seeds, in %; Δ is "
        "the arm's x against SGDM's x, with its standard error and a two-sided Welch test):",
        "",
    ]
    rows = []
    for epochs in config["epochs"]:
        base = _accuracies(result, BASELINE, epochs, "test_acc")
        for arm in ARMS:
            cells = [
                mean_std(_accuracies(result, arm, epochs, k), 100)
                for k in ("test_acc", "test_acc_avg", *horizons)
            ]
            if arm == BASELINE:
                delta, test = "—", "—"
            else:
                delta, test = difference_text(_accuracies(result, arm, epochs, "test_acc"), base)
            rows.append((_budget(result, epochs), arm, *cells, delta, test))
    lines += [
        markdown_table(
            [
                "budget",
                "arm",
                "at x",
                "at x̄ (β)",
                *(f"at x̄ ({h})" for h in horizons),
                "Δ vs SGDM (x)",
                "Welch",
            ],
            rows,
        ),
        "",
        "**Does a longer x̄ recover accuracy?** Paired over seeds (same run): x̄ minus x, in "
        "points, mean ± standard error:",
        "",
    ]
    paired_rows = []
    for epochs in config["epochs"]:
        for arm in ARMS:
            at_x = _accuracies(result, arm, epochs, "test_acc")
            cells = []
            for key in ("test_acc_avg", *horizons):
                diffs = [
                    100 * (a - b)
                    for a, b in zip(_accuracies(result, arm, epochs, key), at_x, strict=True)
                ]
                error = (
                    statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
                )
                cells.append(f"{statistics.fmean(diffs):+.2f} ± {error:.2f}")
            paired_rows.append((_budget(result, epochs), arm, *cells))
    lines.append(
        markdown_table(
            ["budget", "arm", "x̄ (β) − x", *(f"x̄ ({h}) − x" for h in horizons)], paired_rows
        )
    )
    diverged = [r for r in result["runs"] if r["diverged_at"]]
    if diverged:
        lines += [
            "",
            f"{len(diverged)} seed run(s) diverged (scored as chance): "
            + ", ".join(
                f"{r['arm']} {r['epochs']} ep seed {r['seed']} at step {r['diverged_at']}"
                for r in diverged
            )
            + ".",
        ]
    return "\n".join(lines)
