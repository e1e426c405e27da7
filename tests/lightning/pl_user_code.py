"""A user's own code, written the way much Lightning code still is: ``import pytorch_lightning as pl``.

The tests hand these to ``pytorch_lightning.Trainer`` together with lightning_o2nc's callbacks.
"""

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_o2nc import ExponentiatedO2NC


class UserNet(pl.LightningModule):
    """A small classifier with a BatchNorm layer and no ``configure_optimizers``: a LightningCLI
    config names its optimizer."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 4)
        )

    def forward(self, x):
        return self.net(x)

    def _loss_and_accuracy(self, batch):
        x, y = batch
        logits = self(x)
        return nn.functional.cross_entropy(logits, y), (logits.argmax(-1) == y).float().mean()

    def training_step(self, batch, batch_idx):
        loss, _ = self._loss_and_accuracy(batch)
        self.log("train/loss", loss, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, accuracy = self._loss_and_accuracy(batch)
        self.log_dict({"val/loss": loss, "val/acc": accuracy}, sync_dist=True)


class UserClassifier(UserNet):
    """:class:`UserNet` optimized by ExponentiatedO2NC with x_bar."""

    def __init__(self, lr: float = 0.1, seed: int | None = 0):
        super().__init__()
        self.save_hyperparameters()

    def configure_optimizers(self):
        return ExponentiatedO2NC(
            self.parameters(), lr=self.hparams.lr, seed=self.hparams.seed, average=True
        )


class UserData(pl.LightningDataModule):
    """Four Gaussian clusters in 1x8x8 images; 128 training and 64 validation examples."""

    def __init__(self, batch_size: int = 16):
        super().__init__()
        self.batch_size = batch_size

    def setup(self, stage):
        generator = torch.Generator().manual_seed(0)
        means = 2.0 * torch.randn(4, 1, 8, 8, generator=generator)
        labels = torch.arange(192) % 4
        images = means[labels] + torch.randn(192, 1, 8, 8, generator=generator)
        self.train_set = TensorDataset(images[:128], labels[:128])
        self.val_set = TensorDataset(images[128:], labels[128:])

    def train_dataloader(self):
        # in order, so an interrupted and resumed fit sees the same batches as an uninterrupted one
        return DataLoader(self.train_set, batch_size=self.batch_size)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.batch_size)
