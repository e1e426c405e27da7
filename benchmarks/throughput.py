"""End-to-end training throughput of a Lightning fit: O2NC against SGDM and against torch's SGD.

Three arms train the same model on the same data with the same seed, in interleaved runs (every
repetition visits the arms in a fresh random order):

- **O2NC**: ``O2NCModule(optimizer="o2nc")``, exponential scaling;
- **SGDM (factory)**: ``optimizer="sgdm"``, which is ExponentiatedO2NC with ``scaling="none"``
  (mathematically torch SGD, same code path as O2NC);
- **torch.optim.SGD**: the same module with ``configure_optimizers`` returning torch's own
  ``SGD(lr=zeta * eta, momentum=zeta)`` on the same parameter groups, so the comparison against
  torch itself is honest;

plus, optionally, **O2NC + average + monitor** (the module's defaults: x_bar kept, O2NCMonitor
logging the statistics every ``log_every_n_steps``; validation is off, so x_bar is never evaluated).

Samples per second are timed from the start of batch ``warmup_batches`` to the end of the last
training batch (CUDA synchronized at both ends), so start-up and the first slow steps are left out.
The ratio O2NC / baseline is formed per repetition (paired) and summarized by its median and range.

Run: ``python -m benchmarks.throughput [--dataset digits|fashion_mnist] [--repeats N] ...``.
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger
from typing_extensions import override

from lightning_o2nc import O2NCModule, param_groups_weight_decay

from .report import add_config_flags, config_command, machine_description, work_dir
from .results import RESULTS_DIR, write_result
from .throughput_report import to_markdown
from .workloads import (
    QUIET_TRAINER,
    make_backbone,
    make_datamodule,
    module_hyperparameters,
    with_train_hyperparameters,
)


class TorchSGDModule(O2NCModule):
    """O2NCModule whose optimizer is ``torch.optim.SGD`` in the same (eta, beta, mu) parametrization."""

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        zeta = hp.beta / (1.0 + hp.lr * hp.mu)
        groups = param_groups_weight_decay(self, hp.weight_decay)
        return torch.optim.SGD(groups, lr=zeta * hp.lr, momentum=zeta, foreach=hp.foreach)


class SamplesPerSecond(Callback):
    """Times the training batches after the first ``warmup_batches`` (CUDA synchronized at both ends)."""

    def __init__(self, warmup_batches: int):
        self.warmup_batches = warmup_batches
        self.start: float | None = None
        self.end: float | None = None
        self.samples = 0
        self.seen = 0  # batches over all epochs (small datasets run several)

    @staticmethod
    def _now(pl_module: LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    @override
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.seen == self.warmup_batches:
            self.start = self._now(pl_module)

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen += 1
        if self.seen > self.warmup_batches:
            self.samples += len(batch[1])
            self.end = self._now(pl_module)

    @property
    def samples_per_second(self) -> float:
        if self.start is None or self.end is None or self.end <= self.start:
            raise RuntimeError("no timed training batches: raise batches above warmup_batches")
        return self.samples / (self.end - self.start)


@dataclass
class ThroughputConfig:
    dataset: str = "fashion_mnist"
    backbone: str = "small_cnn"
    width: int = 16
    batch_size: int | None = None  # None: lightning_o2nc/configs/train/<dataset>_sgdm.yaml
    warmup_batches: int = 5
    batches: int = 60
    repeats: int = 5
    lr: float | None = None  # None: the train config's, as batch_size
    beta: float | None = None
    weight_decay: float | None = None
    accelerator: str = "cpu"
    num_workers: int = 0
    with_average_and_monitor: bool = True
    seed: int = 0
    threads: int = 1  # torch threads; 0 keeps torch's default (1 is robust on a shared 2-core box)


def arms(config: ThroughputConfig) -> dict[str, tuple[type[O2NCModule], dict[str, Any]]]:
    """Arm name -> (module class, module keyword arguments)."""
    found = {
        "O2NC": (O2NCModule, {"optimizer": "o2nc", "average": False, "monitor": False}),
        "SGDM (factory)": (O2NCModule, {"optimizer": "sgdm", "average": False, "monitor": False}),
        "torch.optim.SGD": (
            TorchSGDModule,
            {"optimizer": "sgdm", "average": False, "monitor": False},
        ),
    }
    if config.with_average_and_monitor:
        found["O2NC + average + monitor"] = (
            O2NCModule,
            {"optimizer": "o2nc", "average": True, "monitor": True},
        )
    return found


def fit_once(
    config: ThroughputConfig, module_class: type[O2NCModule], kwargs: dict[str, Any], seed: int
) -> float:
    """One short fit; returns its training samples per second."""
    seed_everything(seed, workers=True, verbose=False)
    datamodule = make_datamodule(
        config.dataset, config.batch_size, seed=seed, num_workers=config.num_workers
    )
    backbone = make_backbone(
        config.backbone, datamodule.input_shape, datamodule.num_classes, config.width
    )
    model = module_class(
        backbone=backbone,
        seed=seed,
        **module_hyperparameters(config),
        **kwargs,
    )
    timer = SamplesPerSecond(config.warmup_batches)
    # O2NCMonitor writes through the trainer's loggers: its arm gets a real (throwaway) one.
    logger = (
        TensorBoardLogger(str(work_dir() / "throughput_logs"), name="monitor")
        if kwargs.get("monitor")
        else False
    )
    trainer = Trainer(
        accelerator=config.accelerator,
        devices=1,
        max_epochs=-1,
        max_steps=config.warmup_batches + config.batches,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=logger,
        log_every_n_steps=50,
        **QUIET_TRAINER,
        callbacks=[timer],
    )
    trainer.fit(model, datamodule=datamodule)
    return timer.samples_per_second


def run(config: ThroughputConfig) -> dict[str, Any]:
    """Interleaved repetitions of every arm; samples/s per run and paired ratios."""
    config = with_train_hyperparameters(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    arm_table = arms(config)
    samples: dict[str, list[float]] = {name: [] for name in arm_table}
    order = list(arm_table)
    rng = random.Random(config.seed)
    for repeat in range(config.repeats):
        rng.shuffle(order)
        for name in order:
            module_class, kwargs = arm_table[name]
            samples[name].append(fit_once(config, module_class, kwargs, config.seed + repeat))
            print(
                f"throughput repeat {repeat} {name}: {samples[name][-1]:.0f} samples/s", flush=True
            )
    baselines = ("SGDM (factory)", "torch.optim.SGD")
    ratios = {}
    for name in arm_table:
        for baseline in baselines:
            if name in baselines:
                continue
            paired = [a / b for a, b in zip(samples[name], samples[baseline], strict=True)]
            ratios[f"{name} / {baseline}"] = paired
    return {"config": asdict(config), "samples_per_second": samples, "ratios": ratios}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_flags(parser, asdict(ThroughputConfig()))
    parser.add_argument("--out", default=str(RESULTS_DIR), help="folder of throughput.json")
    args = vars(parser.parse_args(argv))
    out = Path(args.pop("out"))
    config = ThroughputConfig(**args)
    started = time.perf_counter()
    result = run(config)
    result["seconds"] = time.perf_counter() - started
    result["command"] = config_command(
        "benchmarks.throughput", asdict(config), asdict(ThroughputConfig())
    ).strip("`")
    result["machine"] = machine_description()
    write_result("throughput", result, out)
    print(to_markdown(result))


if __name__ == "__main__":
    main()
