"""What the accuracy experiments measure beside the final weights: x̄ at longer horizons."""

from __future__ import annotations

import pytest
import torch

from benchmarks.training import HorizonAverages, optimizer_average
from lightning_o2nc import ExponentiatedO2NC


@pytest.mark.parametrize("beta", [0.5, 0.9])
def test_horizon_average_at_beta_is_the_optimizers_own_x_bar(beta):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    optimizer = ExponentiatedO2NC(model.parameters(), lr=0.1, beta=beta, average=True, seed=0)
    averages = HorizonAverages([beta, 0.999])
    for _ in range(25):
        optimizer.zero_grad()
        model(torch.randn(16, 4)).pow(2).mean().backward()
        optimizer.step()
        averages.on_train_batch_end(None, model, None, None, 0)
    for ours, theirs in zip(
        averages.averaged(beta), optimizer_average(model, optimizer), strict=True
    ):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    far = averages.averaged(0.999)
    assert any(not torch.allclose(a, b) for a, b in zip(far, averages.averaged(beta), strict=True))
