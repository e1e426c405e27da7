"""A 2-process gloo DDP fit on CPU, launched by test_ddp.py as a script (Lightning's `ddp`
launcher re-runs this file once per extra rank). Each rank writes its weights, optimizer state
and synced metrics to OUT/rank{r}.pt.

    python tests/lightning/ddp_run.py OUT
"""

import sys
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import Callback

from lightning_o2nc.lightning import O2NCModule, SyntheticDataModule


class DumpRankState(Callback):
    def __init__(self, out: Path):
        self.out = out

    def on_fit_end(self, trainer, pl_module):
        optimizer = trainer.optimizers[0]
        state = {
            "weights": {k: v.detach().cpu() for k, v in pl_module.state_dict().items()},
            "x_bar": [x_bar.cpu() for x_bar in optimizer.averaged_iterate()],
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
            "world_size": trainer.world_size,
            "last_scale": optimizer.last_scale,
        }
        torch.save(state, self.out / f"rank{trainer.global_rank}.pt")


def main(out: Path) -> None:
    torch.set_num_threads(1)
    seed_everything(0)
    model = O2NCModule(
        "small_cnn", input_shape=(1, 8, 8), num_classes=4, lr=0.05, bn_update_batches=2
    )
    data = SyntheticDataModule(num_samples=160, batch_size=8, seed=0)
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=out,
        callbacks=[DumpRankState(out)],
    )
    trainer.fit(model, datamodule=data)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
