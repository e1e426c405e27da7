r"""The plain reference implementation of Exponentiated O2NC: an executable definition.

Deliberately slow and obvious: float64, one tensor at a time, the paper's formulas written out, and
every iterate and gradient kept so that x_bar, V and m_hat are computed from their definitions
(sums over the whole history), not incrementally. The fast optimizer
(:class:`~lightning_o2nc.optim.o2nc.ExponentiatedO2NC`) is tested against it step by step; read it
to know what the optimizer computes. Per step n and param group (hyper-parameters read at step n):

.. math::

    \zeta_n = \beta_n / (1 + \eta_n \mu_n), \quad
    g_n \leftarrow \pm w_n g_n + \lambda x_{n-1}, \quad
    \Delta_n = \zeta_n (\Delta_{n-1} - \eta_n g_n), \quad
    x_n = x_{n-1} + s_n \Delta_n

    \bar x_n = \frac{\sum_k w_k x_k}{\sum_k w_k}, \quad
    w_k = \prod_{j > k} \bar\beta_j, \quad
    V_n = \frac{\sum_k w_k \lVert x_k - \bar x_n \rVert^2}{\sum_k w_k}

with :math:`\bar\beta = ` ``average_beta`` when given, else :math:`\beta_n`, and the importance
weight :math:`w_n = 2 - s_{n-1}` under uniform scaling (:math:`w_1 = 1`; always 1 under Exp(1)),
which multiplies the loss gradient only, not the L2 term :math:`\lambda x` (as it does when
``RandomScaling`` weights ``.grad`` before torch SGD adds its weight decay). A param group given no
gradient at a step is not stepped: its iterate, Δ and weights do not change.

:class:`ReferenceSGDMomentum` is torch SGD's placement of the step size, for comparison: the momentum
buffer sums raw gradients and the *current* step size multiplies the whole buffer,
``b_n = ζ b_{n-1} + g_n``, ``x_n = x_{n-1} - ζ η_n b_n``. The two agree when η is constant
(``Δ_n = -ζ η b_n``) and differ when η changes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["ReferenceO2NC", "ReferenceSGDMomentum"]


class ReferenceO2NC:
    """Exponentiated O2NC, written from its definition.

    Args:
        weights: the initial iterate x_0, one tensor per parameter (copied to float64).
        groups: ``[{"indices": [...], "lr", "beta", "mu", "weight_decay", "maximize"}]``; the
            hyper-parameters may be changed between steps (schedules).
        average_beta: the discount of x_bar and V; ``None`` uses each step's ``beta``.

    The scalar s of each step is given to :meth:`step`, so a trajectory can be compared with the
    optimizer's own draws.
    """

    def __init__(
        self,
        weights: list[Tensor],
        groups: list[dict[str, Any]],
        average_beta: float | None = None,
    ) -> None:
        self.weights = [w.detach().to(torch.float64).clone() for w in weights]
        self.deltas = [torch.zeros_like(w) for w in self.weights]
        self.groups = groups
        self.average_beta = average_beta
        self.history: list[dict[str, Any]] = []  # per step: iterates, gradients, hyper-parameters

    def step(self, grads: list[Tensor | None], s: float, weight: float = 1.0) -> None:
        """One step with gradients ``grads`` (at the current weights) and scalar ``s``; a weight
        whose gradient is ``None`` sits the step out, its Δ unchanged (as in torch.optim).

        ``weight`` is the importance weight w of this step's gradient: ``2 - s`` of the previous
        step under uniform scaling (1 at the first step), 1 under Exp(1). It multiplies the loss
        gradient only, not the L2 term."""
        grads = [None if g is None else g.to(torch.float64) for g in grads]
        effective: list[Tensor | None] = [None] * len(grads)
        for group in self.groups:
            eta, beta, mu, wd = group["lr"], group["beta"], group["mu"], group["weight_decay"]
            zeta = beta / (1 + eta * mu)
            for i in group["indices"]:
                if grads[i] is None:
                    continue
                g = -grads[i] if group.get("maximize", False) else grads[i]
                g = weight * g + wd * self.weights[i]
                effective[i] = g
                self.deltas[i] = zeta * (self.deltas[i] - eta * g)
                self.weights[i] = self.weights[i] + s * self.deltas[i]
        self.history.append(
            {
                "iterates": [w.clone() for w in self.weights],
                "grads": effective,
                "hyper": [dict(g) for g in self.groups],
            }
        )

    def _average_weights(self, group_index: int) -> list[float]:
        """w_k = prod_{j > k} beta_bar_j for every past step k."""
        n = len(self.history)
        weights = []
        for k in range(n):
            w = 1.0
            for j in range(k + 1, n):
                w *= (
                    self.average_beta
                    if self.average_beta is not None
                    else self.history[j]["hyper"][group_index]["beta"]
                )
            weights.append(w)
        return weights

    def averaged_iterate_and_variance(self) -> tuple[list[Tensor], float]:
        """x_bar per parameter and V summed over all parameters, from their definitions."""
        averages: list[Tensor] = [w.clone() for w in self.weights]
        variance = 0.0
        for gi, group in enumerate(self.groups):
            weights = self._average_weights(gi)
            total = sum(weights)
            for i in group["indices"]:
                iterates = [h["iterates"][i] for h in self.history]
                mean = sum(w * x for w, x in zip(weights, iterates, strict=True)) / total
                averages[i] = mean
                variance += (
                    sum(
                        w * (x - mean).square().sum().item()
                        for w, x in zip(weights, iterates, strict=True)
                    )
                    / total
                )
        return averages, variance

    def gradient_ema_norm(self) -> float:
        """||m_hat||: the gradients weighted as Δ weights them, normalized to sum to one.

        ``Delta_n = -sum_k w_k g_k`` with ``w_k = eta_k prod_{j >= k} zeta_j``, so
        ``m_hat = sum_k w_k g_k / sum_k w_k``: for constant hyper-parameters the bias-corrected
        zeta-EMA of the gradients.
        """
        total = 0.0
        for gi, group in enumerate(self.groups):
            n = len(self.history)
            weights = []
            for k in range(n):
                w = self.history[k]["hyper"][gi]["lr"]
                for j in range(k, n):
                    h = self.history[j]["hyper"][gi]
                    w *= h["beta"] / (1 + h["lr"] * h["mu"])
                weights.append(w)
            for i in group["indices"]:
                m = sum(w * h["grads"][i] for w, h in zip(weights, self.history, strict=True))
                total += (m / sum(weights)).square().sum().item()
        return math.sqrt(total)


class ReferenceSGDMomentum:
    """torch SGD's form with ``lr = zeta * eta``, ``momentum = zeta`` (s = 1), from its definition.

    ``b_n = zeta_n b_{n-1} + g_n`` and ``x_n = x_{n-1} - zeta_n eta_n b_n``: the step size of step n
    multiplies every past gradient in the buffer, where O2NC's ``eta_k`` multiplies each gradient
    once, as it enters Δ.
    """

    def __init__(self, weights: list[Tensor], groups: list[dict[str, Any]]) -> None:
        self.weights = [w.detach().to(torch.float64).clone() for w in weights]
        self.buffers = [torch.zeros_like(w) for w in self.weights]
        self.groups = groups

    def step(self, grads: list[Tensor]) -> None:
        for group in self.groups:
            eta, beta, mu, wd = group["lr"], group["beta"], group["mu"], group["weight_decay"]
            zeta = beta / (1 + eta * mu)
            for i in group["indices"]:
                g = grads[i].to(torch.float64) + wd * self.weights[i]
                self.buffers[i] = zeta * self.buffers[i] + g
                self.weights[i] = self.weights[i] - zeta * eta * self.buffers[i]
