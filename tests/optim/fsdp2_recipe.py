"""The model, data and training recipe of the FSDP2 exactness test, shared by the 2-rank script
(fsdp2_run.py) and the test's one-process reference (test_fsdp2.py)."""

import torch

from lightning_o2nc import ExponentiatedO2NC, O2NCAdamW

STEPS = 6
POISONED_STEP = 2  # rank 1's gradient holds an inf at this step: every rank skips it
#: ExponentiatedO2NC (exponential, skip_nonfinite) and O2NCAdamW (uniform: the pending weight)
OPTIMIZERS = ("o2nc", "o2nc_adamw")


def build_model() -> torch.nn.Sequential:
    """10 hidden units shard 5/5 over 2 ranks; the 3-unit output layer shards unevenly (2/1)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.Tanh(), torch.nn.Linear(10, 3))


def build_optimizer(params, name: str = "o2nc"):
    if name == "o2nc":
        optimizer = ExponentiatedO2NC(
            params, lr=0.1, beta=0.9, mu=0.5, weight_decay=0.01, average=True,
            skip_nonfinite=True, seed=3,
        )  # fmt: skip
    else:
        optimizer = O2NCAdamW(params, lr=0.05, scaling="uniform", seed=3, average=True)
    optimizer.statistics()  # track V from the first step
    return optimizer


def batches(seed: int = 0, steps: int = STEPS):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        yield torch.randn(8, 6, generator=generator), torch.randn(8, 3, generator=generator)


def train_step(model, optimizer, step, x, y, poison: bool) -> None:
    """One step on the (global or per-rank) batch; lr follows a schedule; ``poison`` puts an inf
    into the first parameter's gradient at POISONED_STEP (for ExponentiatedO2NC's skip)."""
    poison = poison and isinstance(optimizer, ExponentiatedO2NC)
    optimizer.param_groups[0]["lr"] = 0.1 * (1.0 - step / 10)
    torch.nn.functional.mse_loss(model(x), y).backward()
    if poison and step == POISONED_STEP:
        grad = next(iter(model.parameters())).grad
        local = grad.to_local() if hasattr(grad, "to_local") else grad
        local.view(-1)[0] = float("inf")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
