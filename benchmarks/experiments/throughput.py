"""Lightning fit throughput, O2NC against SGDM (``scaling="none"``) and torch's SGD: samples/s after
the warm-up (device synchronized), paired per repetition (same seed, arms in a fresh order)."""

from __future__ import annotations

import random
import statistics
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
import yaml

from lightning_o2nc import DigitsDataModule, O2NCModule, SmallCNN, param_groups_weight_decay
from lightning_o2nc.lightning.image_datasets import FashionMNISTDataModule
from lightning_o2nc.shipped_configs import resolve_config

from ..harness import Experiment, Result
from ..stats import markdown_table, mean_std
from ..training import QUIET_TRAINER, fashion_mnist_data

BASELINES = ("SGDM (factory)", "torch.optim.SGD")
ARMS = ("O2NC", *BASELINES, "O2NC + average + monitor")  # the last: x_bar kept, O2NCMonitor on


class TorchSGDModule(O2NCModule):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        """torch's SGD: ``lr = zeta * eta``, ``momentum = zeta = beta / (1 + eta mu)``."""
        hp, groups = self.hparams, param_groups_weight_decay(self, self.hparams.weight_decay)
        zeta = hp.beta / (1.0 + hp.lr * hp.mu)
        return torch.optim.SGD(groups, lr=zeta * hp.lr, momentum=zeta, foreach=hp.foreach)


def fit(config: dict, arm: str, seed: int, work: Path) -> float:
    def tick(trainer: pl.Trainer, module: O2NCModule, outputs: dict, batch: list, i: int) -> None:
        outputs["loss"].item()  # a host sync: the clock reads once the device is done
        ticks.append((time.perf_counter(), len(batch[1])))  # at each training batch's end

    pl.seed_everything(seed, workers=True, verbose=False)
    loader = {k: config[k] for k in ("batch_size", "num_workers")} | {"seed": seed}
    fashion = fashion_mnist_data() if config["dataset"] == "fashion_mnist" else None  # or digits
    data = FashionMNISTDataModule(**fashion, **loader) if fashion else DigitsDataModule(**loader)
    if config["backbone"] == "small_cnn":
        net = SmallCNN(data.input_shape[0], data.num_classes, width=config["width"])
    else:  # resnet18_cifar (the GPU check's): the module builds it for the data module's shapes
        net = config["backbone"]
    kind, extra, ticks = TorchSGDModule if arm == BASELINES[1] else O2NCModule, arm == ARMS[-1], []
    hp = {k: config[k] for k in ("lr", "beta", "weight_decay")} | {"seed": seed, "monitor": extra}
    module = kind(net, optimizer="sgdm" if arm in BASELINES else "o2nc", average=extra, **hp)
    logger = extra and pl.loggers.TensorBoardLogger(str(work))  # O2NCMonitor logs through it
    options = {"max_steps": config["warmup_batches"] + config["batches"], "limit_val_batches": 0}
    options |= {"accelerator": config["accelerator"], "devices": 1, "logger": logger}
    clock = pl.callbacks.LambdaCallback(on_train_batch_end=tick)
    pl.Trainer(callbacks=[clock], **options, **QUIET_TRAINER).fit(module, datamodule=data)
    (start, _), *timed = ticks[config["warmup_batches"] - 1 :]
    return sum(size for _, size in timed) / (timed[-1][0] - start)


def run(settings: dict, work: Path) -> Result:
    train_config = Path(resolve_config(f"{settings['dataset']}_sgdm", "train"))
    recipe = yaml.safe_load(train_config.read_text())
    config = {k: recipe["model"][k] for k in ("lr", "beta", "weight_decay")}  # η, β, weight decay
    config |= {"batch_size": recipe["data"]["init_args"]["batch_size"], **settings}
    torch.set_num_threads(config["threads"])
    samples, rng = {arm: [] for arm in ARMS}, random.Random(config["seed"])
    for repeat in range(config["repeats"]):
        for arm in rng.sample(ARMS, len(ARMS)):  # a fresh order per repetition
            samples[arm].append(fit(config, arm, config["seed"] + repeat, work))
    pairs = [(a, b) for a in ARMS if a not in BASELINES for b in BASELINES]
    ratios = {f"{a} / {b}": [x / y for x, y in zip(samples[a], samples[b])] for a, b in pairs}
    return {"config": config, "samples_per_second": samples, "ratios": ratios}


def spans(ratios: dict[str, list[float]]) -> list[tuple[str, float, float, float, str]]:
    rows = [(k, statistics.median(v), min(v), max(v)) for k, v in ratios.items()]
    return [(*row, "met" if row[1] >= 0.99 else "**missed**") for row in rows]


def targets(result: Result) -> list[tuple[str, str, str]]:
    rows = [row for row in spans(result["ratios"]) if row[0].startswith("O2NC / ")]
    return [(f"{k} ≥ 0.99", f"{m:.3f} (range {lo:.3f}–{hi:.3f})", v) for k, m, lo, hi, v in rows]


def render(result: Result) -> str:
    c, samples, ratios = result["config"], result["samples_per_second"], result["ratios"]
    arms = [(k, f"{statistics.median(v):.0f}", mean_std(v, digits=0)) for k, v in samples.items()]
    rows = [(k, f"{m:.3f}", f"{lo:.3f} – {hi:.3f}", v) for k, m, lo, hi, v in spans(ratios)]
    model = f"SmallCNN(width={c['width']})" if c["backbone"] == "small_cnn" else c["backbone"]
    return (
        f"{model} on {c['dataset']}, batch {c['batch_size']}, {c['accelerator']} ({c['threads']} "
        f"torch thread(s)); each run times {c['batches']} training batches after "
        f"{c['warmup_batches']} warm-up batches; {c['repeats']} interleaved repetitions.\n\n"
        + markdown_table(["arm", "median samples/s", "mean ± std"], arms)
        + f"\n\n{markdown_table(['paired ratio', 'median', 'range', 'target ≥ 0.99'], rows)}"
    )


TIMING = dict(warmup_batches=5, batches=40, repeats=5, accelerator="cpu", num_workers=0, threads=1)
EXPERIMENTS = (
    Experiment(
        name="throughput",
        title="End-to-end throughput (Lightning fit)",
        workload="short Lightning fits of a SmallCNN on Fashion-MNIST (train config's η, β, batch)",
        arms=ARMS,
        measurement="samples/s after warm-up; ratios paired per repetition (median, range)",
        run=run,
        render=render,
        settings=dict(dataset="fashion_mnist", backbone="small_cnn", width=16, seed=0) | TIMING,
        quick={"dataset": "digits", "batches": 2, "warmup_batches": 1, "repeats": 1},
        targets=targets,
    ),
)
