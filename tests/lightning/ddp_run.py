"""A 2-process gloo DDP fit on CPU, launched by test_ddp.py as a script (Lightning's `ddp`
launcher re-runs this file once per extra rank). Each rank writes its weights, optimizer state
and synced metrics to OUT/rank{r}.pt.

    python tests/lightning/ddp_run.py OUT lightning.pytorch   # O2NCModule and our data module
    python tests/lightning/ddp_run.py OUT pytorch_lightning   # a user's pytorch_lightning module
    python tests/lightning/ddp_run.py OUT lightning.pytorch o2nc_adamw  # O2NCModule's optimizer

Both runs use lightning_o2nc's callbacks (O2NCModule adds them itself).
"""

import importlib
import sys
from pathlib import Path

import torch

from lightning_o2nc.lightning import AveragedIterate, O2NCModule, O2NCMonitor, SyntheticDataModule
from lightning_o2nc.lightning.packages import Callback


class DumpRankState(Callback):
    def __init__(self, out: Path):
        self.out = out

    def on_fit_end(self, trainer, pl_module):
        optimizer = trainer.optimizers[0]
        # this rank's share of the last validation, by hand: the synced val/loss is their mean
        loss_sum, count = 0.0, 0
        pl_module.eval()
        with torch.no_grad():
            for x, y in trainer.val_dataloaders:
                loss = torch.nn.functional.cross_entropy(pl_module(x), y, reduction="sum")
                loss_sum, count = loss_sum + float(loss), count + len(y)
        pl_module.train()
        state = {
            "val_loss_sum_and_count": (loss_sum, count),
            "weights": {k: v.detach().cpu() for k, v in pl_module.state_dict().items()},
            "x_bar": [x_bar.cpu() for x_bar in optimizer.averaged_iterate()],
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
            "world_size": trainer.world_size,
            "last_scale": optimizer.last_scale,
            "optimizer_class": type(optimizer).__name__,
            "trainer_class": f"{type(trainer).__module__}.{type(trainer).__name__}",
        }
        torch.save(state, self.out / f"rank{trainer.global_rank}.pt")


def main(out: Path, package_name: str, optimizer: str = "o2nc") -> None:
    torch.set_num_threads(1)
    package = importlib.import_module(package_name)
    package.seed_everything(0)
    callbacks = [DumpRankState(out)]
    if package_name == "pytorch_lightning":
        from pl_user_code import UserClassifier, UserData  # beside this script

        model, data = UserClassifier(lr=0.05, seed=None), UserData(batch_size=8)
        callbacks += [O2NCMonitor(), AveragedIterate(bn_update_batches=2)]
    else:
        model = O2NCModule(
            "small_cnn",
            input_shape=(1, 8, 8),
            num_classes=4,
            optimizer=optimizer,
            lr=0.05 if optimizer == "o2nc" else 3e-3,
            bn_update_batches=2,
        )
        data = SyntheticDataModule(num_samples=160, batch_size=8, seed=0)
    trainer = package.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=out,
        callbacks=callbacks,
    )
    trainer.fit(model, datamodule=data)


if __name__ == "__main__":
    main(Path(sys.argv[1]), *sys.argv[2:4])
