"""O2NC-AdamW (RandomScaling around AdamW) under Lightning's precisions: 32-true, bf16-mixed, and
16-mixed on CUDA (run by benchmarks/gpu_check.sh's ``tests`` part on the GPU machine).

Under 16-mixed Lightning calls the closure itself and then ``GradScaler.step(optimizer)`` without
one; the scaler unscales the gradients first only because the wrapper does not claim
``_step_supports_amp_scaling``. The step post-hook records the norm of the gradients the step used
(Exp(1) scaling weights none of them): unscaled gradients of this tiny model are O(1), scaled ones
~65536 times that.
"""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import Callback, Trainer

from lightning_o2nc import O2NCAdamW
from lightning_o2nc.lightning import AveragedIterate

PRECISIONS = {
    "32-true": ("cpu", torch.float32),
    "bf16-mixed": ("cpu", torch.bfloat16),
    "16-mixed": ("cuda", torch.float16),
}


class RecordWrapperSteps:
    """Records, per wrapper step, the scalar s and the norm of the gradients the step is given."""

    def __init__(self) -> None:
        self.scales: list[float] = []
        self.grad_norms: list[float] = []
        self.output_dtypes: set[torch.dtype] = set()

    def attach(self, optimizer: O2NCAdamW, backbone: torch.nn.Module) -> None:
        optimizer.register_step_post_hook(self._after)
        backbone.register_forward_hook(lambda module, args, out: self.output_dtypes.add(out.dtype))

    def _after(self, optimizer, args, kwargs) -> None:
        self.scales.append(optimizer.last_scale)
        grads = [
            p.grad.float()
            for g in optimizer.param_groups
            for p in g["params"]
            if p.grad is not None
        ]
        self.grad_norms.append(
            float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
        )


@pytest.mark.slow
@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_o2nc_adamw_trains_under_each_precision_on_unscaled_gradients(
    precision, trainer_kwargs, make_data, make_model
):
    accelerator, half = PRECISIONS[precision]
    if accelerator == "cuda" and not torch.cuda.is_available():
        pytest.skip("16-mixed needs CUDA")
    recorder = RecordWrapperSteps()

    class Attach(Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            (optimizer,) = trainer.optimizers
            assert isinstance(optimizer, O2NCAdamW)
            recorder.attach(optimizer, pl_module.backbone)

    model = make_model(optimizer="o2nc_adamw", lr=3e-3, monitor=False)
    trainer_kwargs.update(accelerator=accelerator, precision=precision, callbacks=[Attach()])
    trainer = Trainer(**trainer_kwargs)
    trainer.fit(model, datamodule=make_data())

    steps = trainer.global_step
    assert steps > 0 and len(recorder.scales) == steps  # one s per optimizer step
    assert len(set(recorder.scales)) == steps  # Exp(1) draws, never the s = 1 of no scaling
    assert max(recorder.grad_norms) < 1e3  # GradScaler unscaled before the wrapper stepped
    assert all(math.isfinite(n) for n in recorder.grad_norms)
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    assert math.isfinite(metrics["val/loss"]) and math.isfinite(metrics["val/loss_avg"])
    assert metrics["val/loss_avg"] != metrics["val/loss"]  # x_bar was evaluated, another point
    assert any(isinstance(c, AveragedIterate) for c in trainer.callbacks)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # mixed: fp32 master weights
    assert recorder.output_dtypes == {half}  # the forward ran at the precision asked for
