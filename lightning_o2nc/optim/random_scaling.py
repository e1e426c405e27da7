r"""Random scaling around any torch optimizer: :class:`RandomScaling` and :class:`O2NCAdamW`.

The authors' ``wrap_random_scaling`` (Zhang & Cutkosky, 2024) for torch. Per step n, with a base
optimizer ``B`` (AdamW, SGD, ...) and one scalar for all parameters and ranks:

.. math::

    g_n &\leftarrow w_n g_n \qquad (w_n = 2 - s_{n-1} \text{ for uniform, else } 1;\ w_1 = 1) \\
    \tilde x_n &= B(x_{n-1}, g_n) \qquad \text{(the base's own step, its state updated as usual)} \\
    s_n &\sim \mathrm{Exp}(1) \ \text{or}\ U(0, 2) \\
    x_n &= x_{n-1} + s_n (\tilde x_n - x_{n-1})

so the base's move is stretched by s and nothing else changes: the base's moments see the weighted
gradients, never s. ``ExponentiatedO2NC(lr=eta, beta=beta)`` is the case ``B = SGD(lr=beta*eta,
momentum=beta)`` (constant η and β, μ = 0), and stays the fast dedicated path for it.

The weight w multiplies the gradient in ``.grad`` before the base sees it, so it multiplies the
loss gradient only: a coupled L2 term that the base adds itself (``SGD(weight_decay=...)``) and a
decoupled decay (AdamW) are not weighted, exactly as in ``ExponentiatedO2NC``.

Averaging and statistics (:mod:`~lightning_o2nc.optim.wrapper_state` keeps the buffers): x_bar is the
bias-corrected EMA of the iterates with discount ``average_beta`` (else the base's momentum
coefficient, ``betas[0]`` or ``momentum``, read at each step), ``A_n = beta_bar A_{n-1} + 1``,
``a_n = 1 / A_n``, ``x_bar <- x_bar + a_n (x_n - x_bar)``, and V, the weighted spread of the iterates,
``V <- (1 - a_n)(V + a_n ||x_n - x_bar_{n-1}||^2)``, as in ``ExponentiatedO2NC``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import AdamW, Optimizer

from .checkpoint_format import STATE_KEY, put_options, take_options
from .scaled_optimizer import ScaledOptimizer
from .scaling import ScaleSampler
from .sharded import mesh_of
from .wrapper_state import (
    EXTRA_KEYS,
    WrapperBuffers,
    base_momentum,
    check_average_beta,
)

__all__ = ["O2NCAdamW", "RandomScaling"]


class RandomScaling(ScaledOptimizer):
    """Random scaling (and, for uniform scaling, importance weighting) around a built optimizer.

    Args:
        optimizer: the base, an already built ``torch.optim.Optimizer`` (not a ``RandomScaling``).
            The wrapper shares its ``param_groups`` list and its ``state``, so an LR scheduler or a
            ``HyperparameterScheduler`` built on the wrapper drives the base, and
            :meth:`add_param_group` adds to the base.
        scaling: ``"exponential"`` (s ~ Exp(1), the paper), ``"uniform"`` (s ~ U(0, 2) with the
            importance weight ``2 - s`` on the next gradient) or ``"none"`` (s = 1: the base alone,
            useful with ``average=True`` for a baseline's x_bar).
        seed: seed of the scalar's own generator; ``None`` agrees on one across DDP ranks. With the
            same seed the s sequence is ``ExponentiatedO2NC``'s.
        average: keep x_bar; enables :meth:`eval` / :meth:`train`, :meth:`averaged_iterate` and V.
        average_beta: the discount of x_bar and V, ``0 <= average_beta < 1``; ``None``: the base's
            momentum coefficient of each group (``betas[0]`` or ``momentum``), a ``ValueError``
            with ``average=True`` where the base has none.

    The user's gradients change: with ``scaling="uniform"`` each step multiplies ``p.grad`` in
    place by the pending importance weight before the base steps (1 at the first step).

    Memory, per parameter on top of the base's state: one copy of the weights for the move
    (scratch, never saved; none with ``scaling="none"`` unless statistics are tracked), one for
    x_bar with ``average=True``, and one for the gradient EMA once :meth:`statistics` is asked for.

    ``skip_nonfinite`` is not offered: an adaptive base changes its moments even on a zeroed
    gradient, and AMP's ``GradScaler`` already skips non-finite steps. A fused base's
    ``_step_supports_amp_scaling`` is not inherited, so ``GradScaler`` unscales before the step.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = RandomScaling(torch.optim.AdamW(model.parameters(), lr=1e-3), seed=0)
        >>> model(torch.randn(8, 4)).square().mean().backward()
        >>> opt.step()
    """

    #: The wrapper never skips a step (see the class docstring); read by monitors.
    skip_nonfinite = False

    def __init__(
        self,
        optimizer: Optimizer,
        scaling: str = "exponential",
        seed: int | None = None,
        average: bool = False,
        average_beta: float | None = None,
    ) -> None:
        if isinstance(optimizer, RandomScaling):
            raise TypeError(
                "Invalid optimizer: it is already a RandomScaling; wrap the base optimizer once"
            )
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                "Invalid optimizer: RandomScaling wraps a built torch.optim.Optimizer, got "
                f"{torch.typename(optimizer)}"
            )
        self.optimizer = optimizer
        self._scaling = ScaleSampler(scaling, seed)
        self.average = bool(average)
        self.average_beta = check_average_beta(average_beta)
        if self.average and self.average_beta is None:
            for group in optimizer.param_groups:
                if base_momentum(group) is None:
                    raise ValueError(
                        f"Invalid average_beta: None, and {type(optimizer).__name__} has no "
                        "momentum coefficient (betas[0] or momentum) to use instead; pass "
                        "average_beta=<0 <= value < 1>"
                    )
        self.training = True
        self.tracks_statistics = False
        self._buffers = WrapperBuffers(self._mesh())
        self._wrapping = True  # Optimizer.__init__ calls add_param_group: the groups exist
        super().__init__(optimizer.param_groups, optimizer.defaults)
        del self._wrapping
        self._share_base()

    def _share_base(self) -> None:
        self.defaults = self.optimizer.defaults
        self.param_groups = self.optimizer.param_groups
        self.state = self.optimizer.state

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the base (the wrapper's ``param_groups`` are the base's list)."""
        if getattr(self, "_wrapping", False):
            return
        param_group.pop(STATE_KEY, None)  # a group copied from a state dict carries no options
        self.optimizer.add_param_group(param_group)
        self._mesh()  # all plain or all sharded on one mesh

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.optimizer!r}, scaling={self.scaling!r}, "
            f"average={self.average}, average_beta={self.average_beta})"
        )

    # ----------------------------------------------------------------- the public surface
    @property
    def device_mesh(self) -> Any:
        """The device mesh of DTensor parameters (FSDP2), ``None`` for plain tensors. When set,
        :meth:`statistics` and :meth:`state_dict` reduce over it: call them on every rank."""
        return self._buffers.mesh

    @property
    def importance_weight(self) -> float:
        """The weight the next step puts on the gradients (``2 - s`` after a uniform step, else 1)."""
        return self._scaling.weight

    def _switch_weights(self, to_average: bool) -> None:
        self._buffers.switch_weights(self.param_groups, to_average=to_average)

    def averaged_iterate(self) -> list[Tensor]:
        """x_bar of every parameter of every group, in order, as new tensors (a parameter that has
        not been stepped is its own average)."""
        return self._buffers.averaged_iterates(self.param_groups, self.training)

    # ----------------------------------------------------------------- the step
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Weight the gradients (uniform only), step the base, stretch its move by s.

        Args:
            closure: re-evaluates the model and returns the loss; called once, under
                ``torch.enable_grad()``, before the gradients are weighted. The base steps without it.
        """
        loss = self._closure_loss(closure)
        weight = self._scaling.weight
        scale = self._scaling.draw()
        keep_previous = self.scaling != "none" or self.tracks_statistics
        groups = self._buffers.prepare(
            self.param_groups, self.average, self.tracks_statistics, keep_previous
        )
        for g in groups:
            if not g.params:
                continue
            if weight != 1.0:
                torch._foreach_mul_(g.grads, weight)
            if keep_previous:
                torch._foreach_copy_(g.previous, g.params)
        _step_base(self.optimizer)
        stretch = self.scaling != "none"
        for index, g in enumerate(groups):
            if not g.params:  # a group given no gradient is not stepped (as in torch.optim)
                continue
            self._buffers.move(index, g, scale, stretch)
            if not (self.tracks_statistics or self.average):
                continue
            momentum = base_momentum(self.param_groups[index])
            if self.tracks_statistics:
                self._buffers.update_gradient_ema(index, g, 0.0 if momentum is None else momentum)
            if self.average:
                discount = self.average_beta if self.average_beta is not None else momentum
                self._buffers.update_average(index, g, discount, self.tracks_statistics)
        return loss

    # ----------------------------------------------------------------- statistics
    def statistics(self, c: float = 1.0) -> dict[str, Any]:
        """Monitoring quantities as 0-d tensors on the parameters' device (no host sync).

        The first call switches :attr:`tracks_statistics` on (from then on each step keeps the
        gradient EMA and takes the reductions) and reports what was not tracked as NaN.

        Args:
            c: the constant of the (c, eps)-stationarity certificate ``||m_hat|| + c * V``.

        Returns:
            ``"scale"`` (host float, the last s), ``"update_norm"`` (``||x_n - x_{n-1}||``, the
            applied move after s), ``"grad_ema_norm"`` (``||m_hat||``, the bias-corrected EMA of
            the weighted gradients with the base's momentum coefficient, 0 where it has none), and
            with ``average=True`` ``"iterate_variance"`` (V) and ``"stationarity_certificate"``.
        """
        if not self.tracks_statistics:
            self.tracks_statistics = True
            nan = math.nan
            stats: dict[str, Any] = {"update_norm": nan, "grad_ema_norm": nan}
            if self.average:
                stats.update(iterate_variance=nan, stationarity_certificate=nan)
        else:
            stats = self._buffers.statistics(self.average, c, self._device())
        return self._reported(stats)

    def _mesh(self) -> Any:
        """The device mesh of DTensor parameters (FSDP2), ``None`` for plain tensors; refuses
        what :mod:`~lightning_o2nc.optim.sharded` cannot step."""
        return mesh_of(p for group in self.optimizer.param_groups for p in group["params"])

    # ----------------------------------------------------------------- state
    def _options(self) -> dict[str, Any]:
        """What is not per parameter, as plain data (see :meth:`state_dict`)."""
        options = super()._options()
        options["groups"] = self._buffers.group_scalars(len(self.param_groups))
        return options

    def _load_options(self, options: dict[str, Any]) -> None:
        super()._load_options(options)
        self._buffers.load_group_scalars(options.get("groups", []))

    def state_dict(self) -> dict[str, Any]:
        """The base's state dict, with the wrapper's own entries added.

        - ``state[i]`` also holds ``"averaged_iterate"`` (x_bar), ``"gradient_ema"`` and, in eval
          mode, ``"training_weights"``, where they exist;
        - ``param_groups[0]["o2nc"]`` holds the rest as plain data (ints, floats, lists): the
          scalar generator, the pending importance weight, the train/eval mode, whether statistics
          are tracked and the per-group sums of x_bar, V and the gradient EMA.

        Both survive ``torch.distributed.checkpoint``, which keeps only ``state`` and
        ``param_groups``, and ``torch.load(weights_only=True)``.
        """
        state_dict = put_options(super().state_dict(), self._options())
        index = {id(p): i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        packed = dict(state_dict["state"])
        for p, extra in self._buffers.per_parameter():
            i = index[id(p)]
            packed[i] = dict(packed.get(i, {}), **extra)
        if not self.tracks_statistics:  # the same keys whether tracked or not: a distributed
            # checkpoint loads only the entries of a fresh optimizer's state dict (load drops them)
            params = [p for g in self.param_groups for p in g["params"]]
            for i, entry in packed.items():
                if "gradient_ema" not in entry:
                    packed[i] = dict(entry, gradient_ema=torch.zeros_like(params[i]))
        return {"state": packed, "param_groups": state_dict["param_groups"]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`; the base loads its part (its own ``__setstate__`` runs)."""
        state_dict, options = take_options(state_dict)
        base_state, extras = {}, {}
        for i, entry in state_dict["state"].items():
            base_state[i] = {k: v for k, v in entry.items() if k not in EXTRA_KEYS}
            extras[i] = {k: v for k, v in entry.items() if k in EXTRA_KEYS}
            if not base_state[i]:
                del base_state[i]
        # saved keys to parameters by position, as torch does (torch.distributed.checkpoint
        # passes parameter names instead of indices)
        saved_keys = [key for g in state_dict["param_groups"] for key in g["params"]]
        current = (p for g in self.param_groups for p in g["params"])
        params = dict(zip(saved_keys, current, strict=False))  # torch checks the lengths
        self.optimizer.load_state_dict(
            {"state": base_state, "param_groups": state_dict["param_groups"]}
        )
        self._share_base()
        self._buffers = WrapperBuffers(self._mesh())
        self._buffers.adopt(
            {params[i]: extra for i, extra in extras.items() if extra and i in params}
        )
        self._load_saved_options(options)
        if not self.tracks_statistics:  # the zeros state_dict() wrote in place of the EMA
            for extra in self._buffers.extra.values():
                extra.pop("gradient_ema", None)

    def __getstate__(self) -> dict[str, Any]:
        """Copies (deepcopy, pickle) carry the base, the wrapper's buffers and options."""
        return {
            "optimizer": self.optimizer,
            "extra": dict(self._buffers.per_parameter()),
            "options": self._options(),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.optimizer = state["optimizer"]
        options = state["options"]
        self._restore_construction(options)
        self._buffers = WrapperBuffers(self._mesh())
        self._buffers.adopt(state["extra"])
        self._share_base()
        super().__setstate__({})  # torch's hook dictionaries and step patching
        self._load_options(options)


def _step_base(base: Optimizer) -> None:
    """``base.step()``, without running torch's step-hook wrapper a second time when nothing
    would see the difference.

    The wrapper's own ``step`` already goes through ``Optimizer.profile_hook_step`` (global and
    instance hooks, a profiler range); the base's wrapper around its step would repeat all of it
    (about 10 µs a step on the CPU, 5% of AdamW's step on a small MLP) and fire global hooks twice.
    So the base's undecorated step (``__wrapped__``, checked against torch 2.14) runs, unless the
    base has hooks of its own or an instance-level ``step`` (a scheduler built on the base), which
    then run as usual.
    """
    unwrapped = getattr(type(base).step, "__wrapped__", None)
    if (
        unwrapped is None
        or "step" in base.__dict__
        or base._optimizer_step_pre_hooks
        or base._optimizer_step_post_hooks
    ):
        base.step()
    else:
        unwrapped(base)


class O2NCAdamW(RandomScaling):
    """AdamW with random scaling: ``RandomScaling(torch.optim.AdamW(...), ...)`` as one class.

    For the places that take a class rather than an instance, such as a ``LightningCLI`` config
    (``optimizer: {class_path: lightning_o2nc.O2NCAdamW, init_args: {lr: 0.001}}``). The AdamW
    arguments are torch's; ``scaling``, ``seed``, ``average`` and ``average_beta`` are
    :class:`RandomScaling`'s (``average_beta=None`` uses ``betas[0]``).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
        scaling: str = "exponential",
        seed: int | None = None,
        average: bool = False,
        average_beta: float | None = None,
    ) -> None:
        base = AdamW(
            params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
            amsgrad=amsgrad, maximize=maximize, foreach=foreach,
        )  # fmt: skip
        super().__init__(
            base, scaling=scaling, seed=seed, average=average, average_beta=average_beta
        )
