"""Backbones for the included recipes: an MLP, a small CNN and the CIFAR ResNet-18.

Each backbone maps a batch of images ``(N, C, H, W)`` to logits ``(N, num_classes)``.
:func:`build_backbone` turns a registry name into a module once the input shape and the number
of classes are known (the CLI links them from the data module).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch import nn


class MLP(nn.Module):
    """Flatten, then ``Linear -> ReLU`` blocks, then a linear classifier.

    Args:
        in_features: Number of input features after flattening.
        num_classes: Number of output logits.
        hidden_sizes: Width of each hidden layer.
    """

    def __init__(self, in_features: int, num_classes: int, hidden_sizes: Sequence[int] = (128,)):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class SmallCNN(nn.Module):
    """Two ``3x3 conv -> BatchNorm -> ReLU`` stages with pooling, for 8x8 or 28x28 grayscale.

    The first stage keeps the resolution, the second halves it; a global average pool makes the
    head independent of the image size.

    Args:
        in_channels: Channels of the input images (1 for digits and Fashion-MNIST).
        num_classes: Number of output logits.
        width: Channels of the first stage; the second has twice as many.
        batch_norm: Use BatchNorm after each convolution.
    """

    def __init__(
        self, in_channels: int, num_classes: int, width: int = 32, batch_norm: bool = True
    ):
        super().__init__()

        def stage(cin: int, cout: int) -> list[nn.Module]:
            norm: nn.Module = nn.BatchNorm2d(cout) if batch_norm else nn.Identity()
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=not batch_norm), norm, nn.ReLU()]

        self.features = nn.Sequential(
            *stage(in_channels, width),
            *stage(width, width),
            nn.MaxPool2d(2),
            *stage(width, 2 * width),
            *stage(2 * width, 2 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


def resnet18_cifar(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """The CIFAR variant of ResNet-18: torchvision's model with a 3x3 stride-1 stem and no max-pool.

    Args:
        num_classes: Number of output logits.
        in_channels: Channels of the input images.
    """
    from torchvision.models import resnet18

    model = resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def _mlp(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    return MLP(math.prod(input_shape), num_classes)


def _small_cnn(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    return SmallCNN(input_shape[0], num_classes)


def _resnet18_cifar(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    return resnet18_cifar(num_classes, in_channels=input_shape[0])


BACKBONES: dict[str, Callable[[Sequence[int], int], nn.Module]] = {
    "mlp": _mlp,
    "small_cnn": _small_cnn,
    "resnet18_cifar": _resnet18_cifar,
}


def build_backbone(name: str, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Builds a registered backbone.

    Args:
        name: One of ``"mlp"``, ``"small_cnn"``, ``"resnet18_cifar"``.
        input_shape: Shape of one example, ``(C, H, W)``.
        num_classes: Number of output logits.

    Raises:
        ValueError: For an unknown name (the message lists the valid ones) or a bad shape.
    """
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}; valid names: {sorted(BACKBONES)}")
    if len(input_shape) != 3 and name != "mlp":
        raise ValueError(f"Backbone {name!r} needs input_shape=(C, H, W), got {tuple(input_shape)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return BACKBONES[name](tuple(input_shape), num_classes)
