"""The random scalar s of Exponentiated O2NC: one draw per step, shared by every parameter and rank.

Lemma 3.1 of Zhang & Cutkosky (2024) integrates the loss along the segment travelled by one step,
``F(x + sΔ) - F(x) = E_s[<∇F(x + sΔ), Δ>]`` for s ~ Exp(1). That identity needs a single scalar for the
whole model: per-coordinate or per-rank scalars would break it. This module owns that scalar:

- ``"exponential"``: s ~ Exp(1), the paper's choice;
- ``"uniform"``: s ~ U(0, 2), mean 1, with the authors' importance weight (below);
- ``"none"``: s = 1, plain SGD with momentum.

For a scalar S with density p, ``E[F(x + S Delta)] - F(x) = E[<∇F(x + S Delta), Delta> P(S > s)/p(s)]``.
The factor ``P(S > s)/p(s)`` is 1 for Exp(1) and ``2 - s`` for U(0, 2), so uniform scaling carries an
importance weight: the gradient of the *next* step (taken at ``x + s Delta``) is multiplied by
``w = 2 - s`` before it enters the update (Zhang & Cutkosky's code: ``use_importance_sampling``).
:attr:`ScaleSampler.weight` is that pending weight: 1 before the first step, always 1 for
``"exponential"`` and ``"none"``. It is part of the saved state.

The scalar comes from a private Mersenne Twister (Python's :class:`random.Random`), so it is a host
float drawn without any tensor round trip: applying it to the weights never reads the device, and
neither torch's nor Python's global RNG is consumed. Its state (625 integers) goes into the
optimizer's state dict as plain data, so a resumed run draws the same sequence bit for bit. With ``seed=None`` the
generator is seeded lazily, at the first draw, from rank 0's ``torch.initial_seed()`` (one broadcast,
once, when ``torch.distributed`` is initialized). Every rank then draws the same sequence without any
per-step communication, even when the user seeded each rank's global RNG differently.
"""

from __future__ import annotations

import random
import warnings
from typing import Any

import torch
import torch.distributed as dist

SCALINGS = ("exponential", "uniform", "none")

# Mixes the user's seed so the scalar stream differs from torch's global stream seeded alike.
_SEED_MIX = 0x9E3779B97F4A7C15
_UINT64 = 2**64


def agreed_initial_seed() -> int:
    """Rank 0's ``torch.initial_seed()``, broadcast once when a process group is initialized."""
    seed = torch.initial_seed()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [seed]
        dist.broadcast_object_list(box, src=0)
        seed = int(box[0])
    return seed


class ScaleSampler:
    """Draws the per-step scalar s, keeps the pending importance weight and the generator state.

    Args:
        kind: one of ``"exponential"``, ``"uniform"``, ``"none"``.
        seed: seed of the scalar's own generator; ``None`` agrees on one across DDP ranks.
    """

    def __init__(self, kind: str = "exponential", seed: int | None = None) -> None:
        if kind not in SCALINGS:
            raise ValueError(f"Invalid scaling: {kind!r}; expected one of {', '.join(SCALINGS)}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"Invalid seed: {seed!r}; expected an int or None")
        self.kind = kind
        self.seed = seed
        self.generator = random.Random()
        self._seeded = False
        self.last = 1.0
        #: the importance weight w for the next step's gradient (``2 - s`` after a uniform draw)
        self.weight = 1.0

    def _ensure_seeded(self) -> None:
        if self._seeded:
            return
        seed = self.seed if self.seed is not None else agreed_initial_seed()
        self.generator.seed((seed * _SEED_MIX + 1) % _UINT64)
        self._seeded = True

    def draw(self) -> float:
        """Return the next scalar s as a host float (1.0 for ``"none"``, without touching the RNG).

        Read :attr:`weight` *before* drawing: it belongs to this step's gradient; the draw sets the
        weight of the next one.
        """
        if self.kind == "none":
            s = 1.0
        else:
            if not self._seeded:
                self._ensure_seeded()
            if self.kind == "exponential":
                s = self.generator.expovariate(1.0)
            else:
                s = self.generator.uniform(0.0, 2.0)
                self.weight = 2.0 - s
        self.last = s
        return s

    def state_dict(self) -> dict[str, Any]:
        """The generator's state as plain data (``weights_only``-loadable), ``None`` before the
        first draw.

        Never seeds here: with ``seed=None`` seeding may broadcast, and ``state_dict()`` can be
        called on one rank only (a checkpoint written by rank 0 before training), which must not
        wait for the others.
        """
        return {
            "kind": self.kind,
            "seed": self.seed,
            "generator_state": _plain_state(self.generator.getstate()) if self._seeded else None,
            "last": self.last,
            "weight": self.weight,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["kind"] != self.kind:
            raise ValueError(
                f"Checkpoint was saved with scaling={state['kind']!r}, "
                f"but this optimizer uses scaling={self.kind!r}"
            )
        self.last = float(state["last"])
        if "weight" in state:
            self.weight = float(state["weight"])
        else:  # saved before the importance weight existed
            self.weight = 2.0 - self.last if self.kind == "uniform" else 1.0
            if self.kind == "uniform":
                warnings.warn(
                    "This checkpoint was saved by an older lightning-o2nc, whose scaling='uniform' "
                    "drew s ~ U(0, 2) without an importance weight. The meaning of 'uniform' changed: "
                    "from now on the next gradient is weighted by 2 - s (the authors' method), so "
                    "the resumed run is not the run that was saved",
                    UserWarning,
                    stacklevel=3,
                )
        saved = state["generator_state"]
        if saved is None:  # saved before the first draw: seed as usual later
            self._seeded = False
            return
        if isinstance(saved, torch.Tensor):  # a torch.Generator state, written by an older version
            warnings.warn(
                "This checkpoint holds the scalar generator of an older lightning-o2nc (a "
                "torch.Generator state): the sequence of s starts afresh from the seed",
                UserWarning,
                stacklevel=3,
            )
            return
        version, internal, gauss_next = saved
        self.generator.setstate((int(version), tuple(int(i) for i in internal), gauss_next))
        self._seeded = True


def _plain_state(state: tuple[Any, ...]) -> list[Any]:
    """``random.Random.getstate()`` as lists and ints, which ``torch.load(weights_only=True)`` reads."""
    version, internal, gauss_next = state
    return [version, list(internal), gauss_next]
