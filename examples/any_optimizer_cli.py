"""Your own LightningModule with O2NC-AdamW named in a config: a plain ``LightningCLI`` script.

A module without ``configure_optimizers`` gets its optimizer and LR scheduler from the config's
``optimizer:`` and ``lr_scheduler:`` sections; LightningCLI builds them on the module's parameters.
``o2nc-train`` pins ``O2NCModule``, so a module of your own goes through a script like this one::

    python examples/any_optimizer_cli.py fit --config examples/any_optimizer_cli.yaml

The config names ``lightning_o2nc.O2NCAdamW`` by ``class_path`` (AdamW whose every move is scaled by
one random s ~ Exp(1)), and the ``O2NCMonitor`` and ``AveragedIterate`` callbacks, which log s, the
statistics and the validation metrics at the averaged iterate x_bar (``val/acc_avg``). With
``import pytorch_lightning as pl`` code, take ``LightningCLI`` and ``LightningModule`` from
``pytorch_lightning`` instead: the callbacks and data modules serve both packages.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LightningCLI
from torch import nn


class DigitsClassifier(LightningModule):
    """An MLP for 8x8 digit images, with no ``configure_optimizers``: the config chooses."""

    def __init__(self, hidden: int = 64, num_classes: int = 10):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log_dict(
            {
                "val/loss": nn.functional.cross_entropy(logits, y),
                "val/acc": (logits.argmax(-1) == y).float().mean(),
            }
        )


def main(args: Sequence[str] | None = None) -> LightningCLI:
    """The whole script: the data module comes from the config (``data.class_path``)."""
    return LightningCLI(DigitsClassifier, args=args)


if __name__ == "__main__":
    main()
