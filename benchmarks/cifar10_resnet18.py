"""The paper's experiment: CIFAR-10 with the CIFAR ResNet-18, SGDM against O2NC at equal (eta, beta).

The recipe is the project's train configs ``lightning_o2nc/configs/train/cifar10_resnet18_{sgdm,o2nc}.yaml``
(batch 128, eta 0.1, beta 0.9, weight decay 5e-4 on every parameter, cosine schedule, 200 epochs,
crop+flip; SGDM is ExponentiatedO2NC with ``scaling="none"``, i.e. torch SGD), built through
``lightning_o2nc.lightning.cli.build_run``, so this script and ``o2nc-train`` train the same thing.
Each (arm, seed) is one fit followed by a test at the final weights and at the averaged iterate x_bar.

Every finished run is written as a row of ``benchmarks/results/cifar10_resnet18.json`` (rows are
kept across invocations, keyed by arm, seed and epochs; a rerun replaces its row), so seeds can be
run on different machines or days; :mod:`benchmarks.render` shows them in RESULTS.md:

    python -m benchmarks.cifar10_resnet18 --data-root data --seeds 0 1 2            # GPU + CIFAR-10
    python -m benchmarks.cifar10_resnet18 --fixture --results /tmp/check.json       # pipeline check

``--fixture`` writes a tiny random CIFAR-format archive and trains one short epoch on the CPU: it
checks the pipeline only; its accuracies mean nothing and are never written into the results.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import pickle
import statistics
import time
from pathlib import Path
from typing import Any

import yaml

from .report import REPO_ROOT, markdown_table, work_dir
from .results import RESULTS_DIR

RESULTS_JSON = RESULTS_DIR / "cifar10_resnet18.json"
COMMAND = "python -m benchmarks.cifar10_resnet18 --data-root DATA --seeds 0 1 2"
CONFIGS = {
    "sgdm": REPO_ROOT / "lightning_o2nc" / "configs" / "train" / "cifar10_resnet18_sgdm.yaml",
    "o2nc": REPO_ROOT / "lightning_o2nc" / "configs" / "train" / "cifar10_resnet18_o2nc.yaml",
}
ARM_LABELS = {"sgdm": "SGDM", "o2nc": "O2NC (exponential)"}


def write_tiny_cifar10(root: Path, per_batch: int = 16, n_test: int = 16, seed: int = 0) -> Path:
    """A CIFAR-10 archive in the python format with random images, for pipeline checks."""
    import numpy as np

    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def dump(name: str, n: int) -> None:
        batch = {
            "batch_label": name,
            "labels": [int(v) for v in rng.integers(0, 10, n)],
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        }
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle, protocol=2)

    for i in range(1, 6):
        dump(f"data_batch_{i}", per_batch)
    dump("test_batch", n_test)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}, handle)
    return Path(root)


def recipe(arm: str) -> dict[str, Any]:
    """The train config of ``arm`` (``"sgdm"`` or ``"o2nc"``) as a dict."""
    return yaml.safe_load(CONFIGS[arm].read_text())


def run_one(
    arm: str,
    seed: int,
    data_root: str,
    logdir: Path,
    trainer_overrides: dict[str, Any],
    data_overrides: dict[str, Any],
    eta: float | None = None,
) -> dict[str, Any]:
    """Fit and test one (arm, seed); returns its row."""
    import torch
    from lightning.pytorch.loggers import TensorBoardLogger

    from lightning_o2nc.lightning.cli import build_run

    config = copy.deepcopy(recipe(arm))
    config["seed_everything"] = seed
    config["model"]["seed"] = seed
    if eta is not None:
        config["model"]["lr"] = eta
    config["data"]["init_args"].update(root=data_root, seed=seed, **data_overrides)
    logger = TensorBoardLogger(
        str(logdir), name=arm, version=f"seed{seed}", default_hp_metric=False
    )
    started = time.perf_counter()
    trainer, model, datamodule = build_run(
        config, logger=logger, trainer_overrides=trainer_overrides
    )
    trainer.fit(model, datamodule=datamodule)
    trainer.test(model, datamodule=datamodule, verbose=False)
    metrics = trainer.callback_metrics
    device = (
        torch.cuda.get_device_name(0)
        if trainer.strategy.root_device.type == "cuda"
        else str(trainer.strategy.root_device)
    )
    return {
        "arm": arm,
        "seed": seed,
        "epochs": trainer.current_epoch,
        "eta": config["model"]["lr"],
        "beta": config["model"]["beta"],
        "test_acc": float(metrics["test/acc"]),
        "test_acc_avg": float(metrics["test/acc_avg"]) if "test/acc_avg" in metrics else None,
        "minutes": (time.perf_counter() - started) / 60,
        "device": device,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d"),
    }


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows stored in the JSON file ``path`` (none when it does not exist)."""
    return json.loads(path.read_text())["rows"] if path.is_file() else []


def to_markdown(result: dict[str, Any]) -> str:
    """A per-arm summary and a per-run table of the stored rows (or how to get rows)."""
    rows = result["rows"]
    if not rows:
        return (
            "No CIFAR-10 rows yet: they need the CIFAR-10 data and a GPU. Rows appear here when "
            f"`{COMMAND}` is run where both exist (each run adds or replaces its own row)."
        )
    rows = sorted(rows, key=lambda r: (r["epochs"], r["arm"], r["seed"]))
    per_run = markdown_table(
        ["arm", "seed", "epochs", "eta, beta", "test acc %", "at x̄ %", "minutes", "device", "date"],
        [
            (
                ARM_LABELS.get(r["arm"], r["arm"]),
                r["seed"],
                r["epochs"],
                f"{r['eta']}, {r['beta']}",
                f"{100 * r['test_acc']:.2f}",
                "—" if r["test_acc_avg"] is None else f"{100 * r['test_acc_avg']:.2f}",
                f"{r['minutes']:.1f}",
                r["device"],
                r["date"],
            )
            for r in rows
        ],
    )
    summary_rows = []
    for (epochs, arm), group in _group(rows).items():
        accs = [100 * r["test_acc"] for r in group]
        avgs = [100 * r["test_acc_avg"] for r in group if r["test_acc_avg"] is not None]
        summary_rows.append(
            (
                ARM_LABELS.get(arm, arm),
                epochs,
                len(group),
                _mean_std(accs),
                _mean_std(avgs) if avgs else "—",
            )
        )
    summary = markdown_table(
        ["arm", "epochs", "seeds", "test acc % mean ± std", "at x̄ %"], summary_rows
    )
    return "\n".join(["Rows from every invocation are kept.", "", summary, "", per_run])


def _group(rows: list[dict[str, Any]]) -> dict[tuple[int, str], list[dict[str, Any]]]:
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["epochs"], row["arm"]), []).append(row)
    return groups


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def add_rows(new_rows: list[dict[str, Any]], path: Path) -> None:
    """Insert or replace rows (keyed by arm, seed, epochs) in the JSON file ``path``."""
    key = lambda r: (r["arm"], r["seed"], r["epochs"])  # noqa: E731
    rows = {key(r): r for r in read_rows(path)}
    rows.update({key(r): r for r in new_rows})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"command": COMMAND, "rows": list(rows.values())}, indent=1) + "\n")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default="data", help="folder holding cifar-10-batches-py/")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--arms", nargs="+", choices=sorted(CONFIGS), default=["sgdm", "o2nc"])
    parser.add_argument("--epochs", type=int, help="override the recipe's 200 epochs")
    parser.add_argument("--eta", type=float, help="override the recipe's eta (both arms)")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--devices", default="1")
    parser.add_argument("--precision", help="e.g. bf16-mixed (the recipe: 32-true)")
    parser.add_argument("--num-workers", type=int, help="data loader workers (recipe: 4)")
    parser.add_argument("--limit-train-batches", type=lambda v: float(v) if "." in v else int(v))
    parser.add_argument(
        "--logdir", help="TensorBoard logs (default: benchmarks/_work/cifar10_logs)"
    )
    parser.add_argument("--results", default=str(RESULTS_JSON), help="JSON file to add rows to")
    parser.add_argument(
        "--fixture",
        action="store_true",
        help="pipeline check: tiny random CIFAR-format data, 1 epoch on the CPU; rows are written "
        "only to --results, which must then not be the stored results",
    )
    args = parser.parse_args(argv)

    trainer_overrides: dict[str, Any] = {
        "accelerator": args.accelerator,
        "devices": int(args.devices) if args.devices.isdigit() else args.devices,
        "enable_progress_bar": False,
    }
    data_overrides: dict[str, Any] = {}
    if args.epochs is not None:
        trainer_overrides["max_epochs"] = args.epochs
    if args.precision:
        trainer_overrides["precision"] = args.precision
    if args.limit_train_batches is not None:
        trainer_overrides["limit_train_batches"] = args.limit_train_batches
    if args.num_workers is not None:
        data_overrides["num_workers"] = args.num_workers
    data_root = args.data_root
    if args.fixture:
        if Path(args.results).resolve().parent == RESULTS_DIR.resolve():
            parser.error(f"--fixture rows must not go into {RESULTS_DIR}: pass --results elsewhere")
        data_root = str(write_tiny_cifar10(work_dir() / "cifar10_fixture"))
        trainer_overrides.update(
            accelerator="cpu",
            max_epochs=args.epochs or 1,
            limit_val_batches=1,
            enable_checkpointing=False,
            log_every_n_steps=1,
        )
        data_overrides.update(num_workers=0, val_size=16, batch_size=16)

    logdir = Path(args.logdir) if args.logdir else work_dir() / "cifar10_logs"
    rows = []
    for seed in args.seeds:
        for arm in args.arms:
            row = run_one(arm, seed, data_root, logdir, trainer_overrides, data_overrides, args.eta)
            print(f"cifar10_resnet18 {arm} seed {seed}: {row}", flush=True)
            add_rows([row], Path(args.results))
            rows.append(row)
    return rows


if __name__ == "__main__":
    main()
