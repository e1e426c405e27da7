"""CharLanguageModule: a tiny GPT trained on characters, optimized through the factory."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch.nn import functional as F
from typing_extensions import override

from .compat import EpochMeans
from .errors import RunConfigError
from .gpt import GPT, GPTConfig
from .optimized_module import OptimizedModule, optimizer_arguments, resolve_average
from .packages import lightning_class

_LN2 = math.log(2.0)


@lightning_class("LightningModule")  # one body; for_package() puts it on pytorch_lightning too
class CharLanguageModule(OptimizedModule):
    """Character-level language modelling with a tiny GPT (:mod:`.gpt`) and any factory optimizer.

    Logs ``train/loss`` (per step, at the steps loggers write), ``val/loss`` (nats per character)
    and ``val/bpc`` (bits per character, ``val/loss / ln 2``) per validation, and the same for
    ``test``; all with ``sync_dist=True``. With ``average`` the :class:`AveragedIterate` callback
    adds ``val/loss_avg`` and ``val/bpc_avg`` at the averaged iterate x_bar. The optimizer, its
    schedules and callbacks are wired as for :class:`~.module.O2NCModule`
    (:class:`~.optimized_module.OptimizedModule`), with the same config keys.

    The GPT is built once ``vocabulary`` and ``block_size`` are known: in ``__init__`` when both
    are given (a checkpoint stores them), otherwise in :meth:`configure_model` from the data
    module (:class:`~.text_data.CharTextDataModule`). The vocabulary is kept in ``hparams``, so
    ``CharLanguageModule.load_from_checkpoint(path).sample("ROMEO:")`` works without the data.

    Args:
        vocabulary: The characters of the token ids, in order; ``None``: the data module's.
        block_size: Longest context; ``None``: the data module's ``block_size``.
        n_layer: Transformer blocks.
        n_head: Attention heads.
        n_embd: Width.
        dropout: Dropout probability.
        bias: Biases in the linear layers and LayerNorms.
        optimizer: Factory name: ``"adamw"``, ``"o2nc"``, ``"sgdm"``, ...
        decay_bias_and_norm: Also decay biases, LayerNorm weights and the embeddings' 1-D params.
        schedules: ``{"lr" | ...: {"shape": ..., "interval": "step" | "epoch", ...}}``.
        certificate_c: The constant c of the stationarity certificate.
        monitor: Add the :class:`O2NCMonitor` callback (for o2nc / sgdm).
        leave_averaged_in_model: Leave x_bar in the model at the end of fit.
        **hyperparameters: The optimizer's (``lr``, ``beta``, ``mu``, ``weight_decay``, ...),
            as for :class:`~.module.O2NCModule` (:func:`~.optimized_module.optimizer_arguments`).
    """

    def __init__(
        self,
        vocabulary: str | None = None,
        block_size: int | None = None,
        n_layer: int = 4,
        n_head: int = 4,
        n_embd: int = 128,
        dropout: float = 0.0,
        bias: bool = True,
        optimizer: str = "adamw",
        decay_bias_and_norm: bool = False,
        schedules: Mapping[str, Any] | None = None,
        certificate_c: float = 1.0,
        monitor: bool = True,
        leave_averaged_in_model: bool = False,
        **hyperparameters: Any,
    ):
        super().__init__()
        hyperparameters = optimizer_arguments(**hyperparameters)  # save_hyperparameters reads it
        # a plain read: jsonargparse follows **hyperparameters only through calls that pass it whole
        average = hyperparameters["average"]
        average = resolve_average(optimizer, average)
        self.save_hyperparameters()
        self.hparams["average"] = average
        self._sizes(vocab_size=1, block_size=block_size or 1)  # checks the sizes now
        self.backbone: GPT | None = None
        self._epoch_means = EpochMeans()
        self.check_optimizer()
        if vocabulary is not None and block_size is not None:
            self.backbone = GPT(self._sizes(len(vocabulary), block_size))

    def _sizes(self, vocab_size: int, block_size: int) -> GPTConfig:
        hp = self.hparams
        return GPTConfig(
            vocab_size=vocab_size,
            block_size=block_size,
            n_layer=hp.n_layer,
            n_head=hp.n_head,
            n_embd=hp.n_embd,
            dropout=hp.dropout,
            bias=hp.bias,
        )

    @override
    def configure_model(self) -> None:
        """Builds the GPT from the data module's ``vocabulary`` and ``block_size``.

        Values given to ``__init__`` take precedence; a data module with another vocabulary, or
        with longer windows than the model's ``block_size``, is an error.
        """
        try:
            datamodule = self.trainer.datamodule
        except RuntimeError:  # called by hand, without a Trainer
            datamodule = None
        declared_vocabulary = getattr(datamodule, "vocabulary", None)
        declared_block = getattr(datamodule, "block_size", None)
        hp = self.hparams
        if hp.vocabulary is not None and declared_vocabulary not in (None, hp.vocabulary):
            raise RunConfigError(
                f"CharLanguageModule's vocabulary ({len(hp.vocabulary)} characters) is not the data "
                f"module's ({len(declared_vocabulary)}): train and evaluate on the same text",
                "model.vocabulary",
            )
        if (
            hp.block_size is not None
            and declared_block is not None
            and declared_block > hp.block_size
        ):
            raise RunConfigError(
                f"CharLanguageModule(block_size={hp.block_size}) is shorter than the data module's "
                f"windows, block_size={declared_block}",
                "model.block_size",
            )
        if hp.vocabulary is None:
            hp.vocabulary = declared_vocabulary
        if hp.block_size is None:
            hp.block_size = declared_block
        if self.backbone is not None:
            return
        if hp.vocabulary is None or hp.block_size is None:
            raise RunConfigError(
                "CharLanguageModule needs vocabulary and block_size: pass them, or fit with a "
                "datamodule that declares them (CharTextDataModule)"
            )
        self.backbone = GPT(self._sizes(len(hp.vocabulary), hp.block_size))

    @override
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, T, vocab_size)`` of token ids ``(B, T)``."""
        if self.backbone is None:
            raise RuntimeError(
                "the GPT is built in configure_model() (by the Trainer, from its data module); pass "
                "vocabulary and block_size to use the module before that"
            )
        return self.backbone(tokens)

    def _loss(self, batch: Any) -> torch.Tensor:
        inputs, targets = batch
        logits = self(inputs)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        if self._train_metrics_read(batch_idx):
            self.log(
                "train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, sync_dist=True,
                batch_size=len(batch[0]),
            )  # fmt: skip
        return loss

    def _evaluate(self, batch: Any, stage: str, batch_idx: int) -> None:
        loss = self._loss(batch)
        metrics = {f"{stage}/loss": loss, f"{stage}/bpc": loss / _LN2}
        self._epoch_means.log(
            self, metrics, batch_idx, len(batch[0]), sync_dist=True, prog_bar=stage == "val"
        )

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val", batch_idx)

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test", batch_idx)

    def sample(
        self,
        prompt: str,
        max_new_tokens: int = 200,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int | None = None,
    ) -> str:
        """The ``prompt`` followed by ``max_new_tokens`` sampled characters.

        Args:
            prompt: Characters of the vocabulary (at least one).
            max_new_tokens: Characters to generate.
            temperature: > 0; below 1 is more conservative.
            top_k: Sample among the ``top_k`` most likely characters only.
            seed: Seed of the draws; ``None``: torch's global generator.
        """
        vocabulary = self.hparams.vocabulary
        if self.backbone is None or vocabulary is None:
            raise RuntimeError("sample() needs a built model: fit it, or load a checkpoint")
        if not prompt:
            raise ValueError("Invalid prompt: ''; expected at least one character")
        index = {character: i for i, character in enumerate(vocabulary)}
        unknown = sorted(set(prompt) - set(index))
        if unknown:
            raise ValueError(f"Invalid prompt: characters {unknown} are not in the vocabulary")
        device = next(self.backbone.parameters()).device
        tokens = torch.tensor([[index[c] for c in prompt]], device=device)
        generator = None if seed is None else torch.Generator(device).manual_seed(seed)
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            out = self.backbone.generate(tokens, max_new_tokens, temperature, top_k, generator)
        finally:
            self.backbone.train(was_training)
        return "".join(vocabulary[int(i)] for i in out[0])
