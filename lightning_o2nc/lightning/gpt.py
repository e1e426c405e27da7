"""A tiny GPT: the decoder-only transformer of the character-level language model.

Shape (the one nanoGPT's ``model.py`` popularized): token and position embeddings, ``n_layer``
pre-LayerNorm blocks ``x <- x + Attn(LN(x))``, ``x <- x + MLP(LN(x))``, a final LayerNorm and a
linear head whose weight is the token embedding (tied). Attention is causal
``F.scaled_dot_product_attention`` (the fused kernel where the device has one); the MLP is
``Linear(d, 4d) -> GELU -> Linear(4d, d)``. Weights start at N(0, 0.02²), the residual output
projections at N(0, 0.02² / (2 n_layer)) (GPT-2's scaled init), biases at zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["GPT", "GPTConfig"]


@dataclass(frozen=True)
class GPTConfig:
    """The size of a :class:`GPT`.

    Args:
        vocab_size: Number of distinct tokens (characters).
        block_size: Longest context, in tokens (the position embedding's length).
        n_layer: Transformer blocks.
        n_head: Attention heads per block (must divide ``n_embd``).
        n_embd: Width of the residual stream.
        dropout: Dropout on attention weights and residual branches (0 = none).
        bias: Biases in the linear layers and LayerNorms.
    """

    vocab_size: int
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Invalid {name}: {value!r}; expected an int >= 1")
        if self.n_embd % self.n_head:
            raise ValueError(f"Invalid n_head: {self.n_head}; it must divide n_embd={self.n_embd}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"Invalid dropout: {self.dropout!r}; expected 0 <= dropout < 1")


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position t attends to positions 0..t only."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.proj.residual_projection = True
        self.residual_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        # (B, T, 3C) -> three (B, heads, T, C / heads)
        q, k, v = (
            part.view(batch, length, self.n_head, width // self.n_head).transpose(1, 2)
            for part in self.qkv(x).split(width, dim=2)
        )
        attended = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        merged = attended.transpose(1, 2).contiguous().view(batch, length, width)
        return self.residual_dropout(self.proj(merged))


class MLP(nn.Module):
    """``Linear(d, 4d) -> GELU -> Linear(4d, d)``, with dropout on the output."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.up = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.down = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.down.residual_projection = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.gelu(self.up(x))))


class Block(nn.Module):
    """One pre-LayerNorm transformer block: ``x + Attn(LN(x))``, then ``x + MLP(LN(x))``."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attention = CausalSelfAttention(config)
        self.mlp_norm = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    """Decoder-only transformer: ``tokens (B, T) -> logits (B, T, vocab_size)``.

    Args:
        config: The sizes (:class:`GPTConfig`).
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.n_embd)
        self.position_embedding = nn.Embedding(config.block_size, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.final_norm = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.head.weight = self.token_embedding.weight  # tied: one matrix reads and writes tokens
        self.apply(self._initialize)

    def _initialize(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            std = 0.02
            if getattr(module, "residual_projection", False):
                std /= math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        if length > self.config.block_size:
            raise ValueError(
                f"a sequence of {length} tokens is longer than block_size={self.config.block_size}"
            )
        positions = torch.arange(length, device=tokens.device)
        x = self.dropout(self.token_embedding(tokens) + self.position_embedding(positions))
        for block in self.blocks:
            x = block(x)
        return self.head(self.final_norm(x))

    @torch.no_grad()
    def generate(
        self,
        tokens: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Extend ``tokens`` ``(B, T)`` by ``max_new_tokens`` sampled tokens, one at a time.

        Each new token is drawn from ``softmax(logits / temperature)`` at the last position,
        restricted to the ``top_k`` most likely tokens when given; the context is cropped to the
        last ``block_size`` tokens.

        Args:
            tokens: Prompt token ids, ``(B, T)`` with ``T >= 1``.
            max_new_tokens: How many tokens to append.
            temperature: > 0; below 1 sharpens the distribution, above 1 flattens it.
            top_k: Sample among the ``top_k`` most likely tokens only; ``None``: all.
            generator: The random generator of the draws (``None``: torch's global one).
        """
        if temperature <= 0:
            raise ValueError(f"Invalid temperature: {temperature!r}; expected > 0")
        if top_k is not None and top_k < 1:
            raise ValueError(f"Invalid top_k: {top_k!r}; expected an int >= 1 or None")
        for _ in range(max_new_tokens):
            logits = self(tokens[:, -self.config.block_size :])[:, -1, :] / temperature
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probabilities = F.softmax(logits, dim=-1)
            following = torch.multinomial(probabilities, 1, generator=generator)
            tokens = torch.cat([tokens, following], dim=1)
        return tokens
