"""SGDM against O2NC at a train config's (η, β): the fixed-η parity run, and CIFAR-10 / ResNet-18.

Test accuracy over seeds, each O2NC arm against SGDM (Welch's test); only the random scaling
differs: s = 1 (SGDM), s ~ Exp(1) (the paper's, also read at x̄), s ~ U(0, 2) with the importance
weight 2 − s. The first exponential seed logs O2NCMonitor's ‖m̂‖, V and certificate ‖m̂‖ + c·V.
"""

from __future__ import annotations

import copy
import itertools
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure
from tbparse import SummaryReader

from lightning_o2nc.lightning.cli import build_run
from lightning_o2nc.shipped_configs import resolve_config

from ..harness import Experiment, run_jobs, work_dir
from ..stats import difference_text, markdown_table, mean_std
from ..training import QUIET_TRAINER, fashion_mnist_data

ARMS: dict[str, dict[str, Any]] = {
    "SGDM": {"optimizer": "sgdm", "average": False},
    "O2NC (exponential)": {"optimizer": "o2nc", "scaling": "exponential", "average": True},
    "O2NC (uniform)": {"optimizer": "o2nc", "scaling": "uniform", "average": False},
}
AVERAGED_ARM = "O2NC at x̄ (exponential runs)"
PANEL_TAGS = {
    "o2nc/grad_ema_norm": "‖m̂‖ (normalized gradient EMA)",
    "o2nc/iterate_variance": "V (iterate variance around x̄)",
    "o2nc/stationarity_certificate": "certificate ‖m̂‖ + c·V",
}
CURVE_TAGS = ("train/loss", "val/acc", "val/acc_avg", *PANEL_TAGS)


def config_run(config: dict[str, Any], arm: str, seed: int, work: Path) -> dict[str, Any]:
    """Fit and test a train config as ``o2nc-train`` does: test accuracy at x and x̄, the curves."""
    logger = TensorBoardLogger(work / "tensorboard" / arm, f"seed{seed}", default_hp_metric=False)
    trainer, module, datamodule = build_run(config, logger=logger)
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    trainer.test(module, datamodule=datamodule, verbose=False)
    metrics, frame = trainer.callback_metrics, SummaryReader(logger.log_dir).scalars
    curves = frame[frame["tag"].isin(CURVE_TAGS)].sort_values("step").groupby("tag")
    result = {"arm": arm, "seed": seed, "seconds": time.perf_counter() - started}
    result["test_acc"] = float(metrics["test/acc"])
    result["test_acc_avg"] = float(metrics["test/acc_avg"]) if "test/acc_avg" in metrics else None
    result["steps_per_epoch"] = trainer.global_step // max(trainer.current_epoch, 1)
    result["curves"] = {tag: [f["step"].tolist(), f["value"].tolist()] for tag, f in curves}
    print(f"{arm} seed {seed}: test acc {result['test_acc']:.4f}", flush=True)
    return result


def run_parity(settings: dict[str, Any], work: Path) -> dict[str, Any]:
    """Every (seed, arm) of the train config ``recipe`` with the settings that are not None."""
    c = {**settings, "recipe": settings["recipe"] or f"{settings['dataset']}_sgdm"}
    recipe = yaml.safe_load(Path(resolve_config(c["recipe"], "train")).read_text())
    model, data, trainer = recipe["model"], recipe["data"]["init_args"], recipe["trainer"]
    c |= {k: v for k, v in (model | data).items() if k in c and c[k] is None}  # None: the recipe's
    c["decay_bias_and_norm"] = model.get("decay_bias_and_norm", False)  # the recipe's, for the text
    data |= {"batch_size": c["batch_size"], "num_workers": c["num_workers"]}
    data |= fashion_mnist_data() if c["dataset"] == "fashion_mnist" else {}
    if c["dataset"] == "cifar10":  # the data, or (--quick only) a tiny archive in its format
        if c["fixture"] and work.parent != work_dir() / "quick":
            raise ValueError("cifar10_resnet18: the tiny fixture is for --quick runs only")
        root = write_tiny_cifar10(work / "fixture") if c["fixture"] else Path(c["data_root"])
        if not (root / "cifar-10-batches-py").is_dir():
            raise ValueError(f"data_root {c['data_root']!r} holds no cifar-10-batches-py/ folder")
        data |= {"root": str(root), "val_size": c["val_size"]}
    trainer |= {"accelerator": c["accelerator"], "devices": 1, "max_epochs": c["epochs"]}
    trainer |= {"limit_train_batches": c["limit_train_batches"] or 1.0, "num_sanity_val_steps": 0}
    trainer |= {"limit_val_batches": c["val_batches"], "log_every_n_steps": c["log_every_n_steps"]}
    trainer |= QUIET_TRAINER
    model |= {k: c[k] for k in ("lr", "beta", "weight_decay", "certificate_c")}
    model["schedules"] = {"lr": {"shape": c["lr_schedule"]}}
    if c["width"]:  # SmallCNN(width) as backbone; digits and Fashion-MNIST: one channel
        cnn = {"in_channels": 1, "num_classes": 10, "width": c["width"]}
        model["backbone"] = {"class_path": "lightning_o2nc.SmallCNN", "init_args": cnn}
    tasks, panel_run = [], ("O2NC (exponential)", c["seeds"][0])  # it logs O2NCMonitor's panel
    for seed, arm in itertools.product(c["seeds"], ARMS):
        config = copy.deepcopy(recipe) | {"seed_everything": seed}
        config["model"] |= ARMS[arm] | {"seed": seed, "monitor": (arm, seed) == panel_run}
        config["data"]["init_args"]["seed"] = seed
        tasks.append((config, arm, seed, work))
    runs = run_jobs(config_run, tasks, c["workers"], work / "jobs")
    accuracies = {arm: [r["test_acc"] for r in runs if r["arm"] == arm] for arm in ARMS}
    accuracies[AVERAGED_ARM] = [r["test_acc_avg"] for r in runs if r["test_acc_avg"] is not None]
    panel = next(r["curves"] for r in runs if (r["arm"], r["seed"]) == panel_run)
    result = {"config": c, "accuracies": accuracies, "runs": len(runs)}
    result["median_run_seconds"] = float(np.median([r["seconds"] for r in runs]))
    result["stationarity"] = {tag: [panel[tag][1][0], panel[tag][1][-1]] for tag in PANEL_TAGS}
    return result | {"curves": runs}  # each run's record, for the figures


def backbone(config: dict[str, Any]) -> str:
    return f"SmallCNN(width={config['width']})" if config.get("width") else "ResNet-18"


def comparison(accuracies: dict[str, list[float]]) -> list[tuple[str, ...]]:
    """(arm, mean ± std, Δ vs SGDM ± SE, Welch, |Δ| ≤ 0.3 verdict) per arm, SGDM first."""
    baseline = accuracies["SGDM"]
    rows = [("SGDM", mean_std(baseline, 100), "—", "—", "—")]
    for arm, values in list(accuracies.items())[1:]:
        verdict = "met" if 100 * abs(np.mean(values) - np.mean(baseline)) <= 0.3 else "**missed**"
        rows.append((arm, mean_std(values, 100), *difference_text(values, baseline), verdict))
    return rows


def parity_targets(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [
        (f"{arm} within 0.3 points of SGDM (fixed η)", f"{delta} points ({test})", verdict)
        for arm, _, delta, test, verdict in comparison(result["accuracies"])[1:]
    ]


def render_parity(result: dict[str, Any]) -> str:
    c, accuracies = result["config"], result["accuracies"]
    decay = "on every parameter" if c.get("decay_bias_and_norm") else "not on biases/BatchNorm"
    epochs = f"{c['epochs']} full epochs"
    if batches := c["limit_train_batches"]:
        epochs = f"{c['epochs']} epochs of {batches} batches ({batches * c['batch_size']} training "
        epochs += "images drawn afresh each epoch)"
    headers = ["arm", "test acc % (mean ± std)", "Δ vs SGDM (points ± SE)", "Welch two-sided"]
    seeds = [(arm, ", ".join(f"{100 * v:.2f}" for v in vs)) for arm, vs in accuracies.items()]
    panel = [
        (PANEL_TAGS[tag], f"{first:.4g}", f"{last:.4g}", f"{last / first:.3g}×" if first else "—")
        for tag, (first, last) in result["stationarity"].items()
    ]
    return (
        "This is the reading at one shared (η, β), the one chosen for SGDM, not a tuned comparison "
        f"(see the tuned comparison above for that).\n\n{c['dataset']}, {backbone(c)} from "
        f"`lightning_o2nc`, batch {c['batch_size']}, {epochs}; eta = {c['lr']}, beta = "
        f"{c['beta']}, weight decay {c['weight_decay']} ({decay}), {c['lr_schedule']} lr schedule "
        f"per step; seeds {c['seeds']} (the seed fixes the initialization, the data order and the "
        "scalar stream). Test accuracy on the full test set after the last epoch. "
        f"{result['runs']} runs on {c['workers'] or 1} process(es) (median run "
        f"{result['median_run_seconds']:.0f} s).\n\n"
        f"{markdown_table([*headers, 'target |Δ| ≤ 0.3'], comparison(accuracies))}\n\n"
        f"{markdown_table(['arm', 'test acc % per seed'], seeds)}\n\n"
        "Stationarity panel: the first seed's O2NC (exponential, average=True) run, "
        "logged by `O2NCMonitor` to TensorBoard and read back from the event files with tbparse. "
        "‖m̂‖ is the normalized EMA of gradients, V the β-weighted spread of the iterates around "
        "x̄, and ‖m̂‖ + c·V the (c, ε)-stationarity certificate of x̄.\n\n"
        + markdown_table(["quantity", "first logged", "last logged", "last / first"], panel)
    )


def figure_parity(result: dict[str, Any], folder: Path) -> list[str]:
    """Training loss (mean over quarter epochs of the logged steps) and validation accuracy per
    epoch, mean ± 1 std over seeds; the panel: ‖m̂‖, V and the certificate per logged step."""

    def band(ax, x, values, label, color, style="-", **marker):
        mean, std = np.mean(values, 0), np.std(values, 0, ddof=1) if len(values) > 1 else 0
        ax.plot(x, mean, style, color=color, label=label, **marker)
        ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2)

    c, runs = result["config"], result["curves"]
    fig = Figure(figsize=(10, 3.8), dpi=90, layout="tight")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for i, arm in enumerate(ARMS):
        mine = [{k: np.array(v) for k, v in r["curves"].items()} for r in runs if r["arm"] == arm]
        quarter = np.floor(4 * mine[0]["train/loss"][0] / runs[0]["steps_per_epoch"])
        quarters = np.unique(quarter)
        loss = [[r["train/loss"][1][quarter == q].mean() for q in quarters] for r in mine]
        band(ax_loss, (quarters + 0.5) / 4, loss, arm, f"C{i}")
        series = [("val/acc", arm, f"C{i}", "-"), ("val/acc_avg", AVERAGED_ARM, "C3", "--")]
        for tag, label, color, style in series[: 1 + ARMS[arm]["average"]]:
            acc = [100 * r[tag][1] for r in mine]
            band(ax_acc, range(1, len(acc[0]) + 1), acc, label, color, style, marker="o", ms=3)
    ax_loss.set(xlabel="epoch", ylabel="training loss", yscale="log", title="training loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="held-out validation accuracy")
    fig.suptitle(f"{c['dataset']}: {backbone(c)}, mean ± 1 std over seeds")
    ax_loss.legend(fontsize=8)
    ax_acc.legend(fontsize=8)
    names = [f"parity_{c['dataset']}.png", f"stationarity_{c['dataset']}.png"]
    fig.savefig(folder / names[0])
    panel = next(r for r in runs if set(PANEL_TAGS) <= set(r["curves"]))
    fig = Figure(figsize=(11, 3.3), dpi=90, layout="tight")
    for ax, (tag, title) in zip(fig.subplots(1, 3), PANEL_TAGS.items(), strict=True):
        ax.plot(*panel["curves"][tag], lw=1)
        ax.set(title=title, xlabel="step", yscale="log")
        for epoch in range(1, c["epochs"]):
            ax.axvline(epoch * panel["steps_per_epoch"], color="0.8", lw=0.6, zorder=0)
    fig.suptitle(f"O2NC (exponential) on {c['dataset']}, seed {panel['seed']}; grey: epochs")
    fig.savefig(folder / names[1])
    return names


def write_tiny_cifar10(root: Path) -> Path:
    """A CIFAR-10 archive in the python format, 16 random images a file, for pipeline checks."""
    folder, rng = root / "cifar-10-batches-py", np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        batch = {"labels": rng.integers(0, 10, 16).tolist()}
        batch["data"] = rng.integers(0, 256, (16, 3072), dtype=np.uint8)
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list("0123456789")}))
    return root


# fmt: off
PARITY = {  # None: the recipe's (recipe: {dataset}_sgdm); workers: processes, num_workers: loaders
    "dataset": "fashion_mnist", "recipe": None, "width": 16, "epochs": 4, "accelerator": "cpu",
    "limit_train_batches": 250, "val_batches": 16, "lr_schedule": "cosine",  # 0 batches: all
    "certificate_c": 1.0, "log_every_n_steps": 10, "seeds": [0, 1, 2, 3, 4], "workers": 2,
    "num_workers": 0, "batch_size": None, "lr": None, "beta": None, "weight_decay": None,
}
PARITY_QUICK = {"dataset": "digits", "epochs": 1, "limit_train_batches": 0, "batch_size": 64,
                "val_batches": 2, "log_every_n_steps": 2, "seeds": [0, 1], "workers": 0}
CIFAR = {  # the recipe's backbone (ResNet-18) and epochs; one fit at a time
    **PARITY, "dataset": "cifar10", "recipe": "cifar10_resnet18_sgdm", "width": None, "epochs": 200,
    "limit_train_batches": 0, "val_batches": None, "log_every_n_steps": 50, "seeds": [0, 1, 2],
    "workers": 0, "accelerator": "auto", "num_workers": None, "data_root": "data", "fixture": False,
    "val_size": 5000,
}
CIFAR_QUICK = {"fixture": True, "val_size": 16, "accelerator": "cpu", "epochs": 1, "seeds": [0],
               "limit_train_batches": 2, "batch_size": 16, "val_batches": 1, "num_workers": 0,
               "log_every_n_steps": 1}
# fmt: on
PARTS = {"arms": (*ARMS, AVERAGED_ARM), "run": run_parity, "render": render_parity}
PARTS |= {"figure": figure_parity, "targets": parity_targets}
PARTS["measurement"] = "test accuracy over seeds, Δ vs SGDM with Welch's test; O2NCMonitor's panel"
EXPERIMENTS = (
    Experiment(
        name="accuracy_parity",
        title="Fixed-η parity (every arm at SGDM's η) and the stationarity panel",
        workload="SmallCNN(width) on Fashion-MNIST at SGDM's (η, β); quick: digits",
        settings=PARITY,
        quick=PARITY_QUICK,
        **PARTS,
    ),
    Experiment(
        name="cifar10_resnet18",
        title="CIFAR-10 / ResNet-18 (the paper's experiment)",
        workload="ResNet-18 on CIFAR-10 at its SGDM recipe's (η, β); quick: a tiny fixture",
        settings=CIFAR,
        quick=CIFAR_QUICK,
        command="python -m benchmarks run cifar10_resnet18 --set data_root=DATA",
        **PARTS,
    ),
)
