"""ExponentiatedO2NC with plain PyTorch (no Lightning) on scikit-learn's digits, next to SGDM.

    python examples/digits_plain_pytorch.py [--epochs 20] [--seed 0]

Trains the same small ReLU network twice from the same initialization, once with random scaling
(s ~ Exp(1)) and once with s = 1 (SGD with momentum, same eta and beta), and prints the training
loss, a few drawn scalars, the stationarity statistics and the test accuracy at the current and the
averaged weights.
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from lightning_o2nc import ExponentiatedO2NC


def load_data(seed: int) -> tuple[torch.Tensor, ...]:
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, stratify=y, random_state=seed
    )
    return x_train, x_test, y_train, y_test


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item()


def train(scaling: str, args: argparse.Namespace, data: tuple[torch.Tensor, ...]) -> dict:
    x_train, x_test, y_train, y_test = data
    torch.manual_seed(args.seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = ExponentiatedO2NC(
        model.parameters(),
        lr=args.lr,
        beta=args.beta,
        scaling=scaling,
        seed=args.seed,
        average=True,
    )
    opt.tracks_statistics = True  # keep V's per-step reduction: statistics() is read at the end
    batches = torch.Generator().manual_seed(args.seed)
    scalars = []
    for epoch in range(args.epochs):
        order = torch.randperm(len(x_train), generator=batches)
        total = 0.0
        for start in range(0, len(order), args.batch_size):
            index = order[start : start + args.batch_size]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x_train[index]), y_train[index])
            loss.backward()
            opt.step()
            scalars.append(opt.last_scale)
            total += loss.item() * len(index)
        if epoch % max(args.epochs // 6, 1) == 0 or epoch == args.epochs - 1:
            print(f"  [{scaling:>11}] epoch {epoch:3d}  train loss {total / len(x_train):.4f}")
    stats = {k: (v if isinstance(v, float) else v.item()) for k, v in opt.statistics(c=1.0).items()}
    current = accuracy(model, x_test, y_test)
    opt.eval()
    averaged = accuracy(model, x_test, y_test)
    opt.train()
    return {"current": current, "averaged": averaged, "scalars": scalars, "stats": stats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--beta", type=float, default=0.9)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = load_data(args.seed)
    results = {scaling: train(scaling, args, data) for scaling in ("exponential", "none")}
    o2nc = results["exponential"]
    drawn = ", ".join(f"{s:.3f}" for s in o2nc["scalars"][:8])
    mean = sum(o2nc["scalars"]) / len(o2nc["scalars"])
    print(f"\nfirst scalars s ~ Exp(1): {drawn} ...  (mean of {len(o2nc['scalars'])}: {mean:.3f})")
    print(
        "O2NC statistics: "
        + ", ".join(f"{k}={v:.4g}" for k, v in o2nc["stats"].items() if k != "scale")
    )
    print(f"\n{'optimizer':<24}{'test acc':>10}{'test acc (x_bar)':>18}")
    for name, key in (("O2NC (s ~ Exp(1))", "exponential"), ("SGDM (s = 1)", "none")):
        r = results[key]
        print(f"{name:<24}{r['current']:>10.4f}{r['averaged']:>18.4f}")


if __name__ == "__main__":
    main()
