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
import json
import random
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger
from typing_extensions import override

from lightning_o2nc import O2NCModule, param_groups_weight_decay

from .report import config_command, markdown_table, work_dir
from .workloads import make_backbone, make_datamodule


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
    batch_size: int = 128
    warmup_batches: int = 5
    batches: int = 60
    repeats: int = 5
    lr: float = 0.05
    beta: float = 0.9
    weight_decay: float = 5e-4
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
        lr=config.lr,
        beta=config.beta,
        weight_decay=config.weight_decay,
        seed=seed,
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
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(model, datamodule=datamodule)
    return timer.samples_per_second


def run(config: ThroughputConfig) -> dict[str, Any]:
    """Interleaved repetitions of every arm; samples/s per run and paired ratios."""
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


def to_markdown(result: dict[str, Any], command: str | None = None) -> str:
    config = result["config"]
    command = command or config_command("benchmarks.throughput", config, asdict(ThroughputConfig()))
    model = (
        f"SmallCNN(width={config['width']})"
        if config["backbone"] == "small_cnn"
        else config["backbone"]
    )
    rows = []
    for name, values in result["samples_per_second"].items():
        rows.append(
            (
                name,
                f"{statistics.median(values):.0f}",
                f"{statistics.fmean(values):.0f} ± {statistics.stdev(values):.0f}"
                if len(values) > 1
                else f"{values[0]:.0f}",
            )
        )
    ratio_rows = [
        (
            name,
            f"{statistics.median(values):.3f}",
            f"{min(values):.3f} – {max(values):.3f}",
            "met" if statistics.median(values) >= 0.99 else "**missed**",
        )
        for name, values in result["ratios"].items()
    ]
    return "\n".join(
        [
            f"{model} on {config['dataset']}, batch {config['batch_size']}, "
            f"{config['accelerator']} ({config.get('threads') or 'default'} torch thread(s)); "
            f"each run times {config['batches']} training batches after "
            f"{config['warmup_batches']} warm-up batches; {config['repeats']} interleaved repetitions "
            "per arm (seed = repetition, equal across arms).",
            "",
            f"Command: {command}",
            "",
            markdown_table(["arm", "median samples/s", "mean ± std"], rows),
            "",
            markdown_table(
                ["ratio (paired per repetition)", "median", "range", "target ≥ 0.99"], ratio_rows
            ),
            *(
                [
                    "",
                    "A missed ratio whose range straddles 1 is run-to-run noise of the machine "
                    "(the optimizer step is a small part of a training step, see section 1 for "
                    "the step alone); the spread is shown so that it can be judged.",
                ]
                if any("missed" in row[-1] for row in ratio_rows)
                else []
            ),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = ThroughputConfig()
    for field, value in asdict(defaults).items():
        flag = "--" + field.replace("_", "-")
        if isinstance(value, bool):
            parser.add_argument(
                flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=value
            )
        else:
            parser.add_argument(flag, type=type(value), default=value)
    parser.add_argument("--json", help="also write the raw result here")
    args = vars(parser.parse_args(argv))
    json_path = args.pop("json")
    result = run(ThroughputConfig(**args))
    print(to_markdown(result))
    if json_path:
        with open(json_path, "w") as handle:
            json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()
