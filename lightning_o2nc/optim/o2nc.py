r"""Exponentiated O2NC: SGD with momentum whose every move is scaled by one random s ~ Exp(1).

Zhang & Cutkosky, "Random Scaling and Momentum for Non-smooth Non-convex Optimization" (ICML 2024).
Per step n, with hyper-parameters read from each param group (so schedules are group mutations):

.. math::

    \zeta_n &= \beta_n / (1 + \eta_n \mu_n) \\
    \Delta_n &= \zeta_n (\Delta_{n-1} - \eta_n g_n), \qquad \Delta_0 = 0 \\
    s_n &\sim \mathrm{Exp}(1) \quad \text{(one scalar for all parameters and ranks)} \\
    x_n &= x_{n-1} + s_n \Delta_n \qquad \text{(s scales the move, never the buffer)}

``g_n`` is the gradient at the current weights plus ``weight_decay * x`` (torch SGD's L2 term), negated
when ``maximize``. Under ``scaling="uniform"`` (s ~ U(0, 2)) the loss gradient is first multiplied by
the importance weight ``w_n = 2 - s_{n-1}`` (``w_1 = 1``; the L2 term is not weighted), so that
uniform scaling satisfies Lemma 3.1's identity as Exp(1) does (:mod:`~lightning_o2nc.optim.scaling`).
``lightning_o2nc.optim.reference`` is the same update written out plainly.

Time-varying hyper-parameters (the paper's online-mirror-descent form, and the authors' code): η_n
multiplies the gradient of step n once, as it enters Δ, so ``Δ_n = -Σ_k η_k (Π_{j≥k} ζ_j) g_k``;
β_n and μ_n enter through ζ_n, which discounts all of Δ at step n. torch SGD instead multiplies
its whole momentum buffer by the *current* lr. Hence, with ``s = 1``, this is exactly
``torch.optim.SGD(lr=zeta*eta, momentum=zeta)`` (momentum buffer ``-Delta / (zeta * eta)``) **only
while η is constant**. Under an η schedule the two differ; when η drops to 0, O2NC keeps moving for
about ``1 / (1 - ζ)`` steps on the Δ accumulated so far, where SGD stops at once.

Monitoring (all on the device, read only when asked, see :meth:`ExponentiatedO2NC.statistics`):

- ``W_n = zeta_n (W_{n-1} + eta_n)`` is the total weight that Δ puts on past gradients, so
  ``m_hat = -Delta / W`` is their normalized weighted average (for constant hyper-parameters the
  bias-corrected zeta-EMA of the gradients). No extra buffer is needed.
- With ``average=True``, x_bar is the bias-corrected EMA of the iterates with discount
  ``beta_bar`` (``average_beta``, else β_n) and V their weighted spread around it, updated
  Welford-style with the newest iterate's weight ``a_n = 1 / A_n``, ``A_n = beta_bar A_{n-1} + 1``:
  ``d = x_n - x_bar_{n-1}``, ``V <- (1 - a_n)(V + a_n ||d||^2)``, ``x_bar <- x_bar + a_n d``. The
  (c, eps)-stationarity certificate is ``||m_hat|| + c V``. x_bar is stored as its deviation from
  the weights, ``x - x_bar = k u`` (one buffer u per parameter, one scalar k per group), updated in
  the step's own pass over each tensor (see :func:`~lightning_o2nc.optim.functional.average_o2nc`).

The state this step updates (Δ kept as ``Delta = P D``, x_bar as ``x - x_bar = k u``, the per-group
sums), its state dicts and copies: :mod:`~lightning_o2nc.optim.o2nc_state`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .checkpoint_format import STATE_KEY
from .flat import GroupBuffers
from .functional import (
    FlatBuffers,
    all_gradients_finite,
    average_o2nc,
    averaged_iterates,
    o2nc,
    sqrt_of,
    switch_weights_,
    where,
)
from .hyperparameters import OPTIMIZER_OPTIONS, validate_hyperparameters
from .o2nc_state import O2NCState, init_group_scalars
from .scaling import ScaleSampler
from .sharded import as_dtensor_like, finite_everywhere, global_sums, local_tensor, mesh_of

__all__ = ["ExponentiatedO2NC", "o2nc", "validate_hyperparameters"]

_NUMBERS = ("lr", "beta", "mu", "weight_decay")


#: On the CPU, groups up to this many elements step with the multi-tensor kernels: they fit in
#: cache whole, so the per-tensor loop gains nothing and its one call per tensor dominates.
_SMALL_CPU_GROUP = 1 << 18


class _GroupTensors(NamedTuple):
    """What one group's step reads: ``_init_group``'s result, kept while the group is unchanged."""

    buffers: GroupBuffers  # the group's flat buffers, which the lists below are views of
    params: list[Tensor]  # the parameters stepped now (those with a gradient)
    grads: list[Tensor]
    deltas: list[Tensor]
    deviations: list[Tensor] | None
    flat: FlatBuffers | None  # the flat buffers, when the lists tile them (every parameter steps)
    idle_deltas: list[Tensor]  # buffers of parameters with state but no gradient now
    foreach_default: bool


class ExponentiatedO2NC(O2NCState):
    """Exponentiated O2NC (online-to-non-convex conversion with exponential random scaling).

    Args:
        params: iterable of tensors or param-group dicts (per-group ``lr``, ``beta``, ``mu``,
            ``weight_decay``, ``foreach``, ``maximize``). Options of the whole optimizer
            (``scaling``, ``seed``, ``average``, ``average_beta``, ``skip_nonfinite``) inside a
            group are an error.
        lr: η > 0, the online learner's step size (see the module docstring for schedules).
        beta: 0 <= β < 1, the momentum / discount factor.
        mu: μ >= 0, implicit decay of the update: ``zeta = beta / (1 + lr * mu)``.
        weight_decay: >= 0, L2 penalty added to the gradient (as torch SGD does).
        scaling: ``"exponential"`` (s ~ Exp(1), the paper), ``"uniform"`` (s ~ U(0, 2), and the
            next step's loss gradient weighted by ``w = 2 - s``, the authors' importance weight:
            ``Delta <- zeta (Delta - eta (w g + weight_decay x))``; the L2 term is not weighted) or
            ``"none"`` (s = 1: plain SGD with momentum).
        seed: seed of the scalar's own generator. ``None`` agrees on a seed across DDP ranks (rank 0's
            ``torch.initial_seed()``), so every rank draws the same s.
        average: keep x_bar (one extra buffer per parameter); enables :meth:`eval`/:meth:`train`,
            :meth:`averaged_iterate` and V in :meth:`statistics`.
        average_beta: the discount of x_bar and V, 0 <= average_beta < 1; ``None`` uses β (the
            theory's x_bar). It never changes the trajectory, only the horizon of the average
            (about ``1 / (1 - average_beta)`` steps).
        skip_nonfinite: a step whose gradients hold NaN/inf leaves weights, buffers and x_bar
            untouched and is counted in :attr:`skipped_steps`, without a host sync.
        foreach: ``True`` multi-tensor kernels, ``False`` a per-tensor loop, ``None`` the fastest for
            the device (multi-tensor on CUDA, loop on CPU).
        maximize: ascend instead of descend.

    ``lr``, ``beta`` and ``mu`` may be given as one-element tensors: they are read into floats here,
    once, at construction (one host read). ``step()`` reads floats only, so it never waits for the
    device; a tensor written into a group later is refused by ``step()`` with a ``TypeError``.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = ExponentiatedO2NC(model.parameters(), lr=0.1, beta=0.9, seed=0)
        >>> model(torch.randn(8, 4)).square().mean().backward()
        >>> opt.step()
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        beta: float = 0.9,
        mu: float = 0.0,
        weight_decay: float = 0.0,
        scaling: str = "exponential",
        seed: int | None = None,
        average: bool = False,
        average_beta: float | None = None,
        skip_nonfinite: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
    ) -> None:
        if isinstance(params, Tensor):  # before list(params), which would iterate over its rows
            raise TypeError(
                "params argument given to the optimizer should be an iterable of Tensors or "
                f"dicts, but got {torch.typename(params)}"
            )
        numbers = validate_hyperparameters(
            lr=lr, beta=beta, mu=mu, weight_decay=weight_decay, average_beta=average_beta
        )
        params = list(params)
        if not params:
            raise ValueError("Invalid params: ExponentiatedO2NC got an empty parameter list")
        self._scaling = ScaleSampler(scaling, seed)
        self.average = bool(average)
        self.average_beta = numbers.pop("average_beta")
        self.skip_nonfinite = bool(skip_nonfinite)
        self.training = True
        self.tracks_statistics = False
        self._skipped_steps: Tensor | None = None
        self._buffers: dict[int, GroupBuffers] = {}
        self._cache: dict[int, _GroupTensors] = {}
        self._mesh = None  # the device mesh of DTensor parameters (FSDP2), see .sharded
        super().__init__(params, dict(numbers, foreach=foreach, maximize=maximize))

    # ----------------------------------------------------------------- construction
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        param_group.pop(STATE_KEY, None)  # a group copied from a state dict: the options are ours
        for key in OPTIMIZER_OPTIONS:
            if key in param_group:
                raise ValueError(
                    f"Invalid param group key {key!r}: {key} applies to the whole optimizer; pass "
                    f"it to ExponentiatedO2NC(..., {key}=...) instead of a param group"
                )
        given = {k: param_group[k] for k in _NUMBERS if k in param_group}
        param_group.update(validate_hyperparameters(**given))
        super().add_param_group(param_group)
        init_group_scalars(self.param_groups[-1])
        self._mesh = mesh_of(p for group in self.param_groups for p in group["params"])

    @property
    def device_mesh(self) -> Any:
        """The device mesh of DTensor parameters (FSDP2), ``None`` for plain tensors. When set,
        :meth:`statistics` and :meth:`state_dict` reduce over it: call them on every rank."""
        return self._mesh

    @property
    def skipped_steps(self) -> Tensor:
        """Steps skipped for non-finite gradients, a 0-d int64 tensor on the parameters' device."""
        if self._skipped_steps is None:
            self._skipped_steps = torch.zeros((), dtype=torch.int64, device=self._device())
        return self._skipped_steps

    # ----------------------------------------------------------------- x_bar
    def _switch_weights(self, to_average: bool) -> None:
        switch_weights_(self.param_groups, self.state, to_average=to_average)

    def averaged_iterate(self) -> list[Tensor]:
        """x_bar for every parameter of every group, in order, as new tensors.

        Parameters that have not been stepped yet are their own average.
        """
        return averaged_iterates(self.param_groups, self.state, self.training)

    # ----------------------------------------------------------------- the step
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step.

        Args:
            closure: re-evaluates the model and returns the loss (optional).
        """
        loss = self._closure_loss(closure)
        weight = self._scaling.weight  # this step's importance weight, set by the last draw
        scale = self._scaling.draw()
        all_finite = None
        if self.skip_nonfinite:
            grads = [p.grad for group in self.param_groups for p in group["params"]]
            if self._mesh is None:
                all_finite = all_gradients_finite(grads, self._device())
            else:  # one rank's inf skips the step on every rank
                grads = [None if g is None else local_tensor(g) for g in grads]
                local_finite = all_gradients_finite(grads, self._device())
                all_finite = finite_everywhere(local_finite, self._mesh)
        for index, group in enumerate(self.param_groups):
            tensors = self._init_group(index, group)
            if tensors is not None:
                self._step_group(index, tensors, scale, weight, all_finite)
        if all_finite is not None:
            self.skipped_steps.add_((~all_finite).to(torch.int64))
        return loss

    def _init_group(self, index: int, group: dict[str, Any]) -> _GroupTensors | None:
        """The group's parameters with gradients, their buffers (views of the group's flat buffers,
        whose state entries are made at a parameter's first gradient), and the gradients.

        While every parameter of the group has a gradient, the lists are kept between steps and
        only the gradients are read anew.
        """
        group_params = group["params"]
        buffers = self._group_buffers(index)
        grads = [p.grad for p in group_params]
        if self._mesh is not None:  # the kernels step this rank's shards (see .sharded)
            grads = [None if g is None else local_tensor(g) for g in grads]
        complete = True
        for g in grads:
            if g is None:
                complete = False
            elif g.is_sparse:
                raise RuntimeError(
                    "ExponentiatedO2NC does not support sparse gradients; use dense gradients "
                    "(for example nn.Embedding(sparse=False))"
                )
        cached = self._cache.get(index)
        if complete and cached is not None and cached.buffers is buffers:
            return cached._replace(grads=grads)  # only the gradients are new
        indices = [i for i, g in enumerate(grads) if g is not None]
        if not indices:
            return None
        if not all(buffers.covers(i) for i in indices):  # a frozen parameter got a gradient
            buffers = self._group_buffers(index, rebuild=True)
        states = [buffers.claim(i) for i in indices]
        params = [local_tensor(group_params[i]) for i in indices]
        tensors = _GroupTensors(
            buffers=buffers,
            params=params,
            grads=[grads[i] for i in indices],
            deltas=[local_tensor(state["momentum_buffer"]) for state in states],
            deviations=[local_tensor(state["iterate_deviation"]) for state in states]
            if self.average
            else None,
            flat=buffers.tiling if complete else None,
            idle_deltas=[
                local_tensor(self.state[p]["momentum_buffer"])
                for p, g in zip(group_params, grads, strict=True)
                if g is None and "momentum_buffer" in self.state.get(p, {})
            ],
            foreach_default=(all(p.is_cuda for p in params) or buffers.numel <= _SMALL_CPU_GROUP)
            and not torch.jit.is_scripting(),
        )
        if complete:
            self._cache[index] = tensors
        return tensors

    def _group_buffers(self, index: int, rebuild: bool = False) -> GroupBuffers:
        """Group ``index``'s flat buffers, made anew when the group or its state was replaced."""
        params = self.param_groups[index]["params"]
        buffers = self._buffers.get(index)
        if rebuild or buffers is None or not buffers.is_current(params):
            names = (
                ("momentum_buffer", "iterate_deviation") if self.average else ("momentum_buffer",)
            )
            layout = {} if self._mesh is None else {"local": local_tensor, "wrap": as_dtensor_like}
            buffers = self._buffers[index] = GroupBuffers(params, self.state, names, **layout)
            self._cache.pop(index, None)
        return buffers

    def _step_group(
        self, index: int, t: _GroupTensors, scale: float, weight: float, all_finite: Any
    ) -> None:
        group = self.param_groups[index]
        eta, beta, mu = group["lr"], group["beta"], group["mu"]
        if isinstance(eta, Tensor) or isinstance(beta, Tensor) or isinstance(mu, Tensor):
            raise TypeError(
                "ExponentiatedO2NC reads lr, beta and mu as floats at every step (a tensor would "
                "make the step wait for the device); write floats into the param group"
            )
        k, update_scale = group["deviation_scale"], group["update_scale"]
        foreach = t.foreach_default if group["foreach"] is None else group["foreach"]
        group["update_scale"] = o2nc(
            t.params, t.grads, t.deltas, t.deviations, lr=eta, beta=beta, mu=mu,
            weight_decay=group["weight_decay"], maximize=group["maximize"], scale=scale,
            deviation_scale=k, all_finite=all_finite, foreach=foreach, flat=t.flat,
            update_scale=update_scale, grad_weight=weight,
        )  # fmt: skip
        if t.idle_deltas and group["update_scale"] != update_scale:  # they keep their Δ
            for delta in t.idle_deltas:
                delta.mul_(update_scale / group["update_scale"])
        zeta = beta / (1.0 + eta * mu)
        group["update_weight_sum"] = where(
            all_finite, zeta * (group["update_weight_sum"] + eta), group["update_weight_sum"]
        )
        if self.average:
            squared = None
            if self.tracks_statistics:  # V's one reduction, over the group's flat u
                squared = t.buffers.squared_norm("iterate_deviation", self._device())
            k, weight_sum, variance = average_o2nc(
                t.buffers.flat["iterate_deviation"], squared, deviation_scale=k,
                weight_sum=group["average_weight_sum"], variance=group["iterate_variance"],
                all_finite=all_finite,
                discount=beta if self.average_beta is None else self.average_beta,
            )  # fmt: skip
            group.update(
                deviation_scale=k, average_weight_sum=weight_sum, iterate_variance=variance
            )

    # ----------------------------------------------------------------- statistics
    def statistics(self, c: float = 1.0) -> dict[str, Any]:
        """Monitoring quantities as 0-d tensors on the parameters' device (no host sync).

        V costs one reduction per step, so it is tracked only once someone reads it: the first
        call switches :attr:`tracks_statistics` on (the monitor does so at the start of
        training) and reports V as NaN, since the steps before were not tracked. Iterates from
        before tracking began count in V as their average (a lower bound that becomes exact as
        their weight decays).

        Args:
            c: the constant of the (c, eps)-stationarity certificate ``||m_hat|| + c * V``.

        Returns:
            ``"scale"`` (host float, the last s), ``"update_norm"`` (``||Delta||``),
            ``"grad_ema_norm"`` (``||m_hat||``), and with ``average=True`` ``"iterate_variance"`` (V)
            and ``"stationarity_certificate"``. Norms are over all parameters of all groups.
        """
        device = self._device()
        update_sq, grad_ema_sq, variance = 0.0, 0.0, 0.0
        groups = [
            (group, self._group_buffers(index).squared_norm("momentum_buffer", device))
            for index, group in enumerate(self.param_groups)
            if self._group_buffers(index).has_state
        ]
        variances = [group["iterate_variance"] for group in self.param_groups]
        if self._mesh is not None:  # this rank's partial sums, added over the mesh once, here
            sums = global_sums([sq for _, sq in groups] + variances, self._mesh, device)
            groups = [(group, sums[i]) for i, (group, _) in enumerate(groups)]
            variances = list(sums[len(groups) :])
        for group, squared in groups:
            group_sq = squared * group["update_scale"] ** 2  # Δ = P D as the last step left it
            weight = group["update_weight_sum"]  # W = 0 (beta = 0): m_hat is undefined
            has_weight = isinstance(weight, Tensor) or weight > 0
            update_sq = update_sq + group_sq
            grad_ema_sq = grad_ema_sq + (
                group_sq / weight**2 if has_weight else group_sq * math.nan
            )
        for group_variance in variances:
            variance = variance + group_variance
        stats = {"update_norm": sqrt_of(update_sq), "grad_ema_norm": sqrt_of(grad_ema_sq)}
        if self.average:
            if not self.tracks_statistics:
                self.tracks_statistics = True
                variance = math.nan
            stats["iterate_variance"] = variance
            stats["stationarity_certificate"] = stats["grad_ema_norm"] + c * variance
        return self._reported(stats)
