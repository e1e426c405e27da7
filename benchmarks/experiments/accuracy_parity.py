"""SGDM against O2NC at one shared (η, β): the fixed-η parity run and the paper's CIFAR-10 run.

Each fits train configs as ``o2nc-train`` builds them and compares test accuracy over seeds, each
O2NC arm against SGDM with Welch's test; only the random scaling differs: s = 1 (SGDM), s ~ Exp(1)
(the paper's, also read at x̄), s ~ U(0, 2) with the importance weight 2 − s. The first exponential
seed logs O2NCMonitor's ‖m̂‖, V and certificate ‖m̂‖ + c·V: the stationarity panel.
"""

from __future__ import annotations

import datetime as dt
import itertools
import pickle
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure
from tbparse import SummaryReader

from lightning_o2nc.lightning.cli import build_run
from lightning_o2nc.shipped_configs import shipped_configs

from ..harness import RESULTS_DIR, Experiment, quick_dir, read_result, run_jobs, work_dir
from ..stats import difference_text, markdown_table, mean_std
from ..training import DATA_ROOT, QUIET_TRAINER, fashion_mnist_dirs, train_hyperparameters

ARMS: dict[str, dict[str, Any]] = {
    "SGDM": {"optimizer": "sgdm", "average": False},
    "O2NC (exponential)": {"optimizer": "o2nc", "scaling": "exponential", "average": True},
    "O2NC (uniform)": {"optimizer": "o2nc", "scaling": "uniform", "average": False},
}
AVERAGED_ARM = "O2NC at x̄ (exponential runs)"
PANEL_ARM = "O2NC (exponential)"  # its first seed logs the stationarity panel
PANEL_TAGS = {
    "o2nc/grad_ema_norm": "‖m̂‖ (normalized gradient EMA)",
    "o2nc/iterate_variance": "V (iterate variance around x̄)",
    "o2nc/stationarity_certificate": "certificate ‖m̂‖ + c·V",
}
CURVE_TAGS = ("train/loss", "val/acc", "val/acc_avg", *PANEL_TAGS)
CIFAR_ARMS = {"sgdm": "SGDM", "o2nc": "O2NC (exponential)"}
CIFAR_COMMAND = "python -m benchmarks run cifar10_resnet18 --set data_root=DATA"


def config_run(recipe: str, arm: str, seed: int, work: Path, overrides: dict) -> dict[str, Any]:
    """Fit and test the train config ``recipe`` with ``seed``, its ``model``, ``data`` and
    ``trainer`` arguments updated by ``overrides``, logged to TensorBoard: accuracy at x and
    (``average``) x̄, and the curves."""
    config = yaml.safe_load(shipped_configs("train")[recipe].read_text())
    config["model"] |= overrides["model"]
    config["data"]["init_args"] |= overrides["data"]
    config["trainer"] |= overrides["trainer"]
    config["seed_everything"] = config["model"]["seed"] = config["data"]["init_args"]["seed"] = seed
    logger = TensorBoardLogger(work / "tensorboard" / arm, f"seed{seed}", default_hp_metric=False)
    trainer, module, datamodule = build_run(config, logger=logger)
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    trainer.test(module, datamodule=datamodule, verbose=False)
    metrics, device = trainer.callback_metrics, trainer.strategy.root_device
    frame = SummaryReader(logger.log_dir).scalars
    curves = frame[frame["tag"].isin(CURVE_TAGS)].sort_values("step").groupby("tag")
    eta, beta, epochs = config["model"]["lr"], config["model"]["beta"], trainer.current_epoch
    result = {"arm": arm, "seed": seed, "eta": eta, "beta": beta, "epochs": epochs}
    result["test_acc"] = float(metrics["test/acc"])
    result["test_acc_avg"] = float(metrics["test/acc_avg"]) if "test/acc_avg" in metrics else None
    result |= {"seconds": time.perf_counter() - started, "date": dt.date.today().isoformat()}
    result["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    result["steps_per_epoch"] = trainer.global_step // max(epochs, 1)
    result["curves"] = {tag: [f["step"].tolist(), f["value"].tolist()] for tag, f in curves}
    print(f"{arm} seed {seed}: test acc {result['test_acc']:.4f}", flush=True)
    return result


def run_parity(settings: dict[str, Any], work: Path) -> dict[str, Any]:
    """Every (seed, arm) of the dataset's SGDM train config with SmallCNN(width) and the settings'
    values (None: the config's), on ``workers`` processes, finished runs cached under ``work``."""
    known = train_hyperparameters(settings["dataset"])
    c = {**settings, **{k: v for k, v in known.items() if settings[k] is None}}
    data = {"batch_size": c["batch_size"], "num_workers": 0}
    if c["dataset"] == "fashion_mnist":
        data |= {"root": str(DATA_ROOT), "system_dirs": [str(d) for d in fashion_mnist_dirs()]}
    trainer = {"accelerator": "cpu", "devices": 1, "max_epochs": c["epochs"], **QUIET_TRAINER}
    trainer |= {"limit_train_batches": c["limit_train_batches"] or 1.0, "num_sanity_val_steps": 0}
    trainer |= {"limit_val_batches": c["val_batches"], "log_every_n_steps": c["log_every_n_steps"]}
    model = {k: c[k] for k in ("lr", "beta", "weight_decay", "certificate_c")}
    model["schedules"] = {"lr": {"shape": c["lr_schedule"]}}
    cnn = {"in_channels": 1, "num_classes": 10, "width": c["width"]}  # digits and Fashion-MNIST
    model["backbone"] = {"class_path": "lightning_o2nc.SmallCNN", "init_args": cnn}
    shared, tasks = {"data": data, "trainer": trainer}, []
    for seed, arm in itertools.product(c["seeds"], ARMS):
        arm_model = model | ARMS[arm] | {"monitor": arm == PANEL_ARM and seed == c["seeds"][0]}
        tasks.append((f"{c['dataset']}_sgdm", arm, seed, work, {**shared, "model": arm_model}))
    runs = run_jobs(config_run, tasks, c["workers"], work / "jobs")
    accuracies = {arm: [r["test_acc"] for r in runs if r["arm"] == arm] for arm in ARMS}
    accuracies[AVERAGED_ARM] = [r["test_acc_avg"] for r in runs if r["test_acc_avg"] is not None]
    panel = next(r["curves"] for r in runs if r["arm"] == PANEL_ARM)  # the first seed's
    result = {"config": c, "accuracies": accuracies, "runs": len(runs)}
    result["median_run_seconds"] = statistics.median(r["seconds"] for r in runs)
    result["stationarity"] = {tag: [panel[tag][1][0], panel[tag][1][-1]] for tag in PANEL_TAGS}
    keep = ("arm", "seed", "steps_per_epoch", "curves")  # what the figures need
    return result | {"curves": [{k: r[k] for k in keep} for r in runs]}


def comparison(accuracies: dict[str, list[float]]) -> list[tuple[str, ...]]:
    """(arm, mean ± std, Δ vs SGDM ± SE, Welch, |Δ| ≤ 0.3 verdict) per arm that has runs."""
    baseline, rows = accuracies.get("SGDM", []), []
    for arm, values in ((arm, values) for arm, values in accuracies.items() if values):
        cells = ("—", "—", "—")
        if arm != "SGDM" and baseline:
            met = abs(100 * (statistics.fmean(values) - statistics.fmean(baseline))) <= 0.3
            cells = (*difference_text(values, baseline), "met" if met else "**missed**")
        rows.append((arm, mean_std(values, 100), *cells))
    return rows


def accuracy_tables(accuracies: dict[str, list[float]]) -> str:
    """The comparison table and the accuracy of every seed."""
    headers = ["arm", "test acc % (mean ± std)", "Δ vs SGDM (points ± SE)", "Welch two-sided"]
    table = markdown_table([*headers, "target |Δ| ≤ 0.3"], comparison(accuracies))
    seeds = [(arm, ", ".join(f"{100 * v:.2f}" for v in vs)) for arm, vs in accuracies.items() if vs]
    return f"{table}\n\n{markdown_table(['arm', 'test acc % per seed'], seeds)}"


def parity_targets(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [
        (f"{arm} within 0.3 points of SGDM (fixed η)", f"{delta} points ({test})", verdict)
        for arm, _, delta, test, verdict in comparison(result["accuracies"])[1:]
    ]


def render_parity(result: dict[str, Any]) -> str:
    """The fixed-η tables and the stationarity panel's first and last values."""
    c, batches = result["config"], result["config"]["limit_train_batches"]
    epochs = f"{c['epochs']} full epochs"
    if batches:
        epochs = f"{c['epochs']} epochs of {batches} batches ({batches * c['batch_size']} training "
        epochs += "images drawn afresh each epoch)"
    text = (
        "This is the reading at one shared (η, β), the one chosen for SGDM, not a tuned comparison "
        "(see the tuned comparison above for that).\n\n"
        f"{c['dataset']}, SmallCNN(width={c['width']}) from `lightning_o2nc`, batch "
        f"{c['batch_size']}, {epochs}; eta = {c['lr']}, beta = {c['beta']}, weight decay "
        f"{c['weight_decay']} (not on biases/BatchNorm), {c['lr_schedule']} lr schedule per step; "
        f"seeds {c['seeds']} (the seed fixes the initialization, the data order and the scalar "
        "stream). Test accuracy on the full test set after the last epoch. "
        f"{result['runs']} runs on {c['workers'] or 1} process(es) (median run "
        f"{result['median_run_seconds']:.0f} s).\n\n" + accuracy_tables(result["accuracies"])
    )
    if not result.get("stationarity"):
        return text
    panel = [
        (PANEL_TAGS[tag], f"{first:.4g}", f"{last:.4g}", f"{last / first:.3g}×")
        for tag, (first, last) in result["stationarity"].items()
    ]
    return (
        f"{text}\n\nStationarity panel: the first seed's O2NC (exponential, average=True) run, "
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
    fig.suptitle(f"{c['dataset']}: SmallCNN(width={c['width']}), mean ± 1 std over seeds")
    ax_loss.legend(fontsize=8)
    ax_acc.legend(fontsize=8)
    names = [f"parity_{c['dataset']}.png"]
    fig.savefig(folder / names[0])
    if panel := next((r for r in runs if set(PANEL_TAGS) <= set(r["curves"])), None):
        fig = Figure(figsize=(11, 3.3), dpi=90, layout="tight")
        for ax, (tag, title) in zip(fig.subplots(1, 3), PANEL_TAGS.items(), strict=True):
            ax.plot(*panel["curves"][tag], lw=1)
            ax.set(title=title, xlabel="step", yscale="log")
            for epoch in range(1, c["epochs"]):
                ax.axvline(epoch * panel["steps_per_epoch"], color="0.8", lw=0.6, zorder=0)
        fig.suptitle(f"O2NC (exponential) on {c['dataset']}, seed {panel['seed']}; grey: epochs")
        names.append(f"stationarity_{c['dataset']}.png")
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


def run_cifar(settings: dict[str, Any], work: Path) -> dict[str, Any]:
    """Every (seed, arm), one at a time (finished runs cached under ``work``), and the rows of the
    JSON it replaces that it did not rerun (keyed by arm, seed and epochs)."""
    folder = quick_dir() if work.parent == work_dir() / "quick" else RESULTS_DIR
    data = {"root": str(settings["data_root"]), **settings["data"]}
    if settings["fixture"] and folder == RESULTS_DIR:
        raise ValueError(f"cifar10_resnet18: fixture rows never go into {RESULTS_DIR}; add --quick")
    if settings["fixture"]:
        fixture = str(write_tiny_cifar10(work / "fixture"))
        data = {"root": fixture, "num_workers": 0, "val_size": 16, "batch_size": 16}
    elif not (Path(data["root"]) / "cifar-10-batches-py").is_dir():
        raise ValueError(
            f"cifar10_resnet18: data_root {data['root']!r} holds no cifar-10-batches-py/ folder "
            "(extract cifar-10-python.tar.gz there, or --set data_root=FOLDER)"
        )
    trainer = {"enable_progress_bar": False, "devices": 1, **settings["trainer"]}
    overrides = {"model": settings["model"], "data": data, "trainer": trainer}
    grid = itertools.product(settings["seeds"], settings["arms"])
    tasks = [(f"cifar10_resnet18_{arm}", arm, seed, work, overrides) for seed, arm in grid]
    rows = (read_result("cifar10_resnet18", folder) or {}).get("rows", [])
    for run in run_jobs(config_run, tasks, 0, work / "jobs"):
        rows.append({k: v for k, v in run.items() if k not in ("steps_per_epoch", "curves")})
    return {"rows": list({(r["arm"], r["seed"], r["epochs"]): r for r in rows}.values())}


def render_cifar(result: dict[str, Any]) -> str:
    """Per budget (epochs): the comparison tables, and where and how long the runs took."""
    if not result["rows"]:
        return (
            "No CIFAR-10 rows yet: they need the CIFAR-10 data and a GPU. Rows appear here when "
            f"`{CIFAR_COMMAND}` is run where both exist (each run adds or replaces its own row)."
        )
    parts = ["Rows from every invocation are kept."]
    for epochs in sorted({r["epochs"] for r in result["rows"]}):
        rows = sorted((r for r in result["rows"] if r["epochs"] == epochs), key=lambda r: r["seed"])
        by_arm = {label: [r for r in rows if r["arm"] == arm] for arm, label in CIFAR_ARMS.items()}
        accuracies = {label: [r["test_acc"] for r in runs] for label, runs in by_arm.items()}
        accuracies[AVERAGED_ARM] = [r["test_acc_avg"] for r in by_arm["O2NC (exponential)"]]
        eta = ", ".join(sorted({f"{CIFAR_ARMS[r['arm']]} {r['eta']:.4g}" for r in rows}))
        runs = f"median run {statistics.median(r['seconds'] for r in rows) / 60:.1f} min"
        where = ", ".join(sorted({f"{r['device']} ({r['date']})" for r in rows}))
        parts += [f"**{epochs} epochs**, η: {eta}; {runs} on {where}.", accuracy_tables(accuracies)]
    return "\n\n".join(parts)


# fmt: off
PARITY = {
    "dataset": "fashion_mnist", "width": 16, "epochs": 4, "limit_train_batches": 250,  # 0: all
    "val_batches": 16, "lr_schedule": "cosine", "certificate_c": 1.0, "log_every_n_steps": 10,
    "seeds": [0, 1, 2, 3, 4], "workers": 2,
    "batch_size": None, "lr": None, "beta": None, "weight_decay": None,  # None: the train config's
}
PARITY_QUICK = {
    "dataset": "digits", "epochs": 1, "limit_train_batches": 0, "batch_size": 64, "val_batches": 2,
    "log_every_n_steps": 2, "seeds": [0, 1], "workers": 0,
}
CIFAR = {
    "data_root": "data", "seeds": [0, 1, 2], "arms": list(CIFAR_ARMS), "fixture": False,
    "trainer": {}, "model": {}, "data": {},  # over the recipe's, e.g. {"max_epochs": 30}
}
CIFAR_QUICK = {"fixture": True, "seeds": [0], "trainer": {
    "accelerator": "cpu", "max_epochs": 1, "limit_val_batches": 1, "log_every_n_steps": 1,
}}
# fmt: on
EXPERIMENTS = (
    Experiment(
        name="accuracy_parity",
        title="Fixed-η parity (every arm at SGDM's η) and the stationarity panel",
        workload="SmallCNN(width) on Fashion-MNIST at SGDM's (η, β); quick: digits",
        arms=(*ARMS, AVERAGED_ARM),
        measurement="test accuracy over seeds, Δ vs SGDM with Welch's test; O2NCMonitor's panel",
        run=run_parity,
        render=render_parity,
        settings=PARITY,
        quick=PARITY_QUICK,
        figure=figure_parity,
        targets=parity_targets,
    ),
    Experiment(
        name="cifar10_resnet18",
        title="CIFAR-10 / ResNet-18 (the paper's experiment)",
        workload="CIFAR-10 with ResNet-18: lightning_o2nc/configs/train/cifar10_resnet18_*.yaml",
        arms=(*CIFAR_ARMS.values(), AVERAGED_ARM),
        measurement="test accuracy at x and x̄ per (arm, seed); Δ vs SGDM with Welch's test",
        run=run_cifar,
        render=render_cifar,
        settings=CIFAR,
        quick=CIFAR_QUICK,
        command=CIFAR_COMMAND,
    ),
)
