"""O2NCMonitor: the quantities of the O2NC theory, logged every ``log_every_n_steps``."""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from ..optim.factory import AVERAGING_OPTIMIZERS
from ..optim.hyperparameters import SCHEDULABLE, group_value, holds
from .compat import LoggingStepAxis
from .packages import MisconfigurationException, twins
from .process_group import EndsProcessGroupAtExit

STATISTICS = ("update_norm", "grad_ema_norm", "iterate_variance", "stationarity_certificate")


class O2NCMonitor(EndsProcessGroupAtExit):
    """Logs the drawn scalar s, ``||Delta||``, ``||m_hat||``, V, the certificate, lr, beta, mu, ...

    It watches every optimizer of the run that draws s: ``ExponentiatedO2NC`` and
    ``RandomScaling`` (``O2NCAdamW``, and the ``adamw`` baseline wrapped for x_bar). For a
    wrapper, ``update_norm`` is the norm of the applied move after s and ``grad_ema_norm`` comes
    from the wrapper's own gradient EMA, kept once the monitor asks for statistics.

    Tags (for the first such optimizer; further ones get ``o2nc/optimizer{i}/...``):
    ``o2nc/scale`` (the last s), ``o2nc/scale_mean`` (mean of the s drawn since the last log),
    ``o2nc/scale_histogram`` (TensorBoard histogram of those s), ``o2nc/update_norm``,
    ``o2nc/grad_ema_norm``, ``o2nc/iterate_variance`` and ``o2nc/stationarity_certificate``
    (with ``average=True``), ``o2nc/skipped_steps`` (with ``skip_nonfinite=True``) and
    ``o2nc/<name>/group{j}`` for every hyper-parameter a schedule may drive (``SCHEDULABLE`` in
    ``lightning_o2nc.optim.hyperparameters``) that the group holds: lr, beta, mu, weight_decay for
    O2NC; lr, beta (``betas[0]``), beta2 (``betas[1]``), weight_decay for AdamW.

    Every optimizer step of such an optimizer only appends its host float ``last_scale`` to a
    list (through a step hook, so accumulated gradients, manual optimization and several
    optimizers each give one s per step of that optimizer). The statistics are computed on the
    device and read back with one transfer at logging steps, on global rank zero (DDP ranks hold
    identical optimizer states), at the same step as the training metrics of ``self.log``.
    Works with a Trainer of either Lightning package. In a multi-process run every rank destroys
    its process group at exit, gloo's too (:mod:`lightning_o2nc.lightning.process_group`).

    Args:
        certificate_c: The constant c of the certificate ``||m_hat|| + c * V``.
        log_histogram: Also write a histogram of the scalars to TensorBoard loggers.
    """

    #: Equal-width bins of the scale histogram between the smallest and largest s since the
    #: last log. TensorBoard re-bins histograms for display (30 bins); its writer's default,
    #: ~1500 fixed exponential bins, cost ~0.4 ms per histogram for a handful of values.
    HISTOGRAM_BINS = 30

    def __init__(self, certificate_c: float = 1.0, log_histogram: bool = True):
        if certificate_c < 0:
            raise ValueError(f"certificate_c must be >= 0, got {certificate_c}")
        self.certificate_c = certificate_c
        self.log_histogram = log_histogram
        self._scales: dict[int, list[float]] = {}
        self._hooks: list[RemovableHandle] = []
        self._axis = LoggingStepAxis()
        self._restored_step: int | None = None

    @staticmethod
    def _o2nc_optimizers(trainer: Any) -> list[tuple[str, Any]]:
        found = [opt for opt in trainer.optimizers if isinstance(opt, AVERAGING_OPTIMIZERS)]
        if len(found) == 1:
            return [("o2nc", found[0])]
        return [(f"o2nc/optimizer{i}", opt) for i, opt in enumerate(found)]

    @override
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        optimizers = self._o2nc_optimizers(trainer)
        if (
            optimizers
            and type(trainer.strategy).__name__ == "FSDPStrategy"
            and trainer.world_size > 1
        ):
            raise MisconfigurationException(
                "O2NCMonitor under FSDPStrategy (FSDP1): the optimizer sees each rank's flat shards "
                "as plain tensors, so its norms, V and certificate would be per-shard; use "
                "ModelParallelStrategy (FSDP2 fully_shard), whose statistics are global, or turn "
                "the monitor off (O2NCModule(monitor=False))"
            )
        if not optimizers:
            names = [type(opt).__name__ for opt in trainer.optimizers]
            rank_zero_warn(
                f"O2NCMonitor found no ExponentiatedO2NC or RandomScaling among the optimizers "
                f"{names}: it logs nothing"
            )
        self._remove_hooks()
        self._scales = {id(opt): [] for _, opt in optimizers}
        for _, opt in optimizers:
            opt.tracks_statistics = True  # V costs a reduction per step: only when logged
            self._hooks.append(opt.register_step_post_hook(self._record_scale))
        self._axis.start(trainer, self._restored_step)
        self._restored_step = None  # a checkpoint's count serves the fit that loaded it only

    def _record_scale(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._scales[id(optimizer)].append(optimizer.last_scale)

    @override
    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        _, step = self._axis.batch_end(trainer, pl_module)
        if step is None:
            return
        if trainer.loggers:
            for prefix, opt in self._o2nc_optimizers(trainer):
                if trainer.is_global_zero:
                    self._log(trainer, prefix, opt, self._scales.get(id(opt), []), step)
                elif getattr(opt, "device_mesh", None) is not None:
                    opt.statistics(c=self.certificate_c)  # sharded: a reduction of every rank
        for scales in self._scales.values():
            scales.clear()

    def _log(self, trainer: Any, prefix: str, opt: Any, scales: list[float], step: int) -> None:
        statistics = opt.statistics(c=self.certificate_c)
        device_values = {name: statistics[name] for name in STATISTICS if name in statistics}
        if getattr(opt, "skip_nonfinite", False):
            device_values["skipped_steps"] = opt.skipped_steps
        names = list(device_values)
        values = torch.stack([device_values[n].float() for n in names]).tolist() if names else []
        metrics = {f"{prefix}/{name}": value for name, value in zip(names, values, strict=True)}
        metrics[f"{prefix}/scale"] = opt.last_scale
        histogram = None
        if scales:
            scale_sum = math.fsum(scales)
            metrics[f"{prefix}/scale_mean"] = scale_sum / len(scales)
            if self.log_histogram:
                limits, counts = equal_width_histogram(scales, self.HISTOGRAM_BINS)
                histogram = {
                    "min": min(scales),
                    "max": max(scales),
                    "num": len(scales),
                    "sum": scale_sum,
                    "sum_squares": math.fsum(s * s for s in scales),
                    "bucket_limits": limits,
                    "bucket_counts": counts,
                }
        for j, group in enumerate(opt.param_groups):
            for name in SCHEDULABLE:
                if holds(group, name):
                    metrics[f"{prefix}/{name}/group{j}"] = float(group_value(group, name))
        tensorboard = twins("loggers.TensorBoardLogger")
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            if histogram is not None and isinstance(logger, tensorboard):
                logger.experiment.add_histogram_raw(
                    f"{prefix}/scale_histogram", **histogram, global_step=step
                )

    def _remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    @override
    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._remove_hooks()

    @override
    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._remove_hooks()

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"batches_that_stepped": self._axis.batches_that_stepped}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored_step = state_dict.get("batches_that_stepped")


def equal_width_histogram(values: list[float], bins: int) -> tuple[list[float], list[int]]:
    """``(bucket_limits, bucket_counts)`` of ``values`` in ``bins`` equal-width buckets.

    Bucket k holds the values in ``[lo + k * w, lo + (k + 1) * w)``, the last one ``hi`` too,
    with ``lo, hi = min(values), max(values)`` and ``w = (hi - lo) / bins``; ``bucket_limits``
    are the right edges, as TensorBoard's HistogramProto wants them. One bucket when all values
    are equal. The monitor bins the handful of s drawn since its last log in plain Python and
    hands the buckets to the writer's ``add_histogram_raw``: the writer's own ``add_histogram``
    (numpy's histogram, then trimming) cost ~0.3 ms per log, most of the monitor's time.
    """
    lo, hi = min(values), max(values)
    if not hi > lo:
        return [hi], [len(values)]
    width = (hi - lo) / bins
    counts = [0] * bins
    for value in values:
        counts[min(int((value - lo) / width), bins - 1)] += 1
    limits = [lo + width * (k + 1) for k in range(bins - 1)] + [hi]
    return limits, counts
