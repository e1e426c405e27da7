"""Lightning's ModelParallelStrategy (FSDP2, data_parallel_size=2) on 2 CPU ranks with gloo, run by
test_model_parallel.py under ``torch.distributed.run`` (so every Trainer of this script shares the
two processes and their process group).

    python -m torch.distributed.run --nproc_per_node 2 model_parallel_run.py OUT PACKAGE OPTIMIZER

A user's module shards itself in ``configure_model`` and is optimized by ExponentiatedO2NC or
O2NCAdamW with O2NCMonitor and AveragedIterate on. The script fits 2 epochs uninterrupted, then,
per checkpoint form (a distributed checkpoint directory, and one file with
``save_distributed_checkpoint=False``), 1 epoch, a checkpoint, and a resumed fit to 2 epochs, and
tests each checkpoint with ``trainer.test(ckpt_path=...)``. Rank 0 writes OUT/results.pt.
"""

import importlib
import sys
from pathlib import Path

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader, TensorDataset

from lightning_o2nc import ExponentiatedO2NC, O2NCAdamW
from lightning_o2nc.lightning import AveragedIterate, O2NCMonitor


def main(out: Path, package_name: str, optimizer_name: str) -> None:
    torch.set_num_threads(1)
    pl = importlib.import_module(package_name)
    strategies = importlib.import_module(f"{package_name}.strategies")

    class ShardedClassifier(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4))

        def configure_model(self):
            from torch.distributed.fsdp import fully_shard

            mesh = self.device_mesh["data_parallel"]
            for layer in self.net:
                if isinstance(layer, nn.Linear):
                    fully_shard(layer, mesh=mesh)
            fully_shard(self, mesh=mesh)

        def forward(self, x):
            return self.net(x)

        def _step(self, batch, stage):
            x, y = batch
            logits = self(x)
            loss = nn.functional.cross_entropy(logits, y)
            accuracy = (logits.argmax(-1) == y).float().mean()
            self.log_dict({f"{stage}/loss": loss, f"{stage}/acc": accuracy}, sync_dist=True)
            return loss

        def training_step(self, batch, batch_idx):
            return self._step(batch, "train")

        def validation_step(self, batch, batch_idx):
            self._step(batch, "val")

        def test_step(self, batch, batch_idx):
            self._step(batch, "test")

        def configure_optimizers(self):
            if optimizer_name == "o2nc":
                return ExponentiatedO2NC(
                    self.parameters(), lr=0.1, beta=0.9, average=True, skip_nonfinite=True
                )
            return O2NCAdamW(self.parameters(), lr=0.01, average=True)

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=generator)
    y = (x[:, :4].argmax(-1) + (x[:, 4] > 1).long()) % 4
    data = TensorDataset(x, y)

    class Dump(pl.Callback):
        """Full weights, x_bar and the last s after fit (gathered on every rank)."""

        def __init__(self):
            self.result = {}

        def on_fit_end(self, trainer, pl_module):
            optimizer = trainer.optimizers[0]

            def full(tensors):
                return [t.full_tensor() if isinstance(t, DTensor) else t for t in tensors]

            statistics = {k: float(v) for k, v in optimizer.statistics().items()}
            self.result = {
                "weights": full(p.detach() for p in pl_module.parameters()),
                "x_bar": full(optimizer.averaged_iterate()),
                "last_scale": optimizer.last_scale,
                "statistics": statistics,
                "state_is_dtensor": all(
                    isinstance(v, DTensor)
                    for entries in optimizer.state.values()
                    for k, v in entries.items()
                    if k != "step"
                ),
            }

    def trainer(epochs, distributed, callbacks, logger=False):
        return pl.Trainer(
            accelerator="cpu",
            devices=2,
            strategy=strategies.ModelParallelStrategy(
                data_parallel_size=2,
                tensor_parallel_size=1,
                save_distributed_checkpoint=distributed,
            ),
            max_epochs=epochs,
            logger=logger,
            log_every_n_steps=1,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            num_sanity_val_steps=0,
            default_root_dir=out,
            callbacks=[*callbacks, O2NCMonitor(), AveragedIterate()],
        )

    def fit(epochs, ckpt_path=None, save_to=None, distributed=True):
        dump = Dump()
        fitting = trainer(epochs, distributed, [dump])
        model = ShardedClassifier()
        loader = DataLoader(data, batch_size=8)
        fitting.fit(model, loader, DataLoader(data, batch_size=16), ckpt_path=ckpt_path)
        if save_to is not None:
            fitting.save_checkpoint(save_to)
        return dump.result

    results = {}
    results["uninterrupted"] = fit(2)
    for form, distributed in (("directory", True), ("file", False)):
        path = out / f"epoch1.{form}"
        fit(1, save_to=path, distributed=distributed)
        results[form] = fit(2, ckpt_path=path, distributed=distributed)
        testing = trainer(1, distributed, [])
        metrics = testing.test(ShardedClassifier(), DataLoader(data, batch_size=16), ckpt_path=path)
        results[form]["test"] = metrics[0]
    if package_name == "lightning.pytorch":  # O2NCModule(shard=True) shards its backbone itself
        from lightning_o2nc.lightning import O2NCModule, SyntheticDataModule

        module = O2NCModule("mlp", input_shape=(1, 8, 8), num_classes=4, lr=0.05, shard=True)
        logger = pl.loggers.CSVLogger(out, name="o2nc_module")  # the monitor logs: collective
        fitting = trainer(1, True, [], logger=logger)
        fitting.fit(module, datamodule=SyntheticDataModule(num_samples=64, batch_size=8, seed=0))
        results["o2nc_module"] = {
            "sharded": all(isinstance(p, DTensor) for p in module.parameters()),
            "metrics": {k: float(v) for k, v in fitting.callback_metrics.items()},
            "csv": str(Path(logger.log_dir) / "metrics.csv"),
        }
    if torch.distributed.get_rank() == 0:
        torch.save(results, out / "results.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
