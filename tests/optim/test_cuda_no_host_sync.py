"""On CUDA, a step (and reading statistics) never makes the host wait for the device."""

from __future__ import annotations

import pytest
import torch

from lightning_o2nc import ExponentiatedO2NC
from tests.optim.kernel_paths import kernel_that_ran

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CONFIGURATIONS = {
    "defaults": {},
    "for-loop": {"foreach": False},
    "average": {"average": True},
    "skip_nonfinite": {"skip_nonfinite": True, "average": True},
    "uniform+wd+mu+maximize": {
        "scaling": "uniform",
        "weight_decay": 1e-4,
        "mu": 0.5,
        "maximize": True,
    },
    "none": {"scaling": "none"},
    "bf16": {"dtype": torch.bfloat16, "average": True},
}


@pytest.mark.parametrize("config", list(CONFIGURATIONS), ids=list(CONFIGURATIONS))
def test_step_and_statistics_make_no_host_sync_on_cuda(config):
    options = dict(CONFIGURATIONS[config])
    dtype = options.pop("dtype", torch.float32)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.LazyLinear(10),
    ).to("cuda", dtype)
    x = torch.randn(16, 3, 12, 12, device="cuda", dtype=dtype)
    model(x)  # materialize the lazy layer
    opt = ExponentiatedO2NC(model.parameters(), lr=0.05, seed=0, **options)

    def one_step():
        opt.zero_grad(set_to_none=False)
        model(x).float().square().mean().backward()
        opt.step()

    one_step()  # state is allocated on the first step
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            one_step()
            stats = opt.statistics(c=2.0)
        if opt.average:
            opt.eval()
            opt.train()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(t.device.type == "cuda" for k, t in stats.items() if k != "scale")
    assert torch.isfinite(stats["update_norm"]).item()


def test_foreach_is_the_default_on_cuda_and_matches_the_for_loop():
    results = []
    for foreach in (None, False):
        torch.manual_seed(0)
        model = torch.nn.Linear(32, 16).cuda()
        opt = ExponentiatedO2NC(model.parameters(), lr=0.05, seed=0, foreach=foreach)
        for _ in range(5):
            opt.zero_grad()
            model(torch.randn(8, 32, device="cuda")).square().mean().backward()
            opt.step()
        assert (opt.param_groups[0]["foreach"] is None) == (foreach is None)
        expected = "multi" if foreach is None else "single"
        assert kernel_that_ran(torch.device("cuda"), foreach=foreach) == expected
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)
