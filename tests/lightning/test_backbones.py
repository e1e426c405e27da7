import pytest
import torch
from torch import nn

from lightning_o2nc.lightning import MLP, SmallCNN, build_backbone, resnet18_cifar


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("mlp", (1, 8, 8)),
        ("small_cnn", (1, 8, 8)),
        ("small_cnn", (1, 28, 28)),
        ("resnet18_cifar", (3, 32, 32)),
    ],
)
def test_every_backbone_maps_images_to_one_logit_per_class(name, shape):
    model = build_backbone(name, shape, num_classes=7)
    assert model(torch.randn(2, *shape)).shape == (2, 7)


def test_cifar_resnet18_has_a_3x3_stride_1_stem_and_no_max_pool():
    model = resnet18_cifar(num_classes=10)
    assert model.conv1.kernel_size == (3, 3)
    assert model.conv1.stride == (1, 1)
    assert model.conv1.padding == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert model.fc.out_features == 10
    # no downsampling in the stem: layer1 sees the full 32x32 resolution
    features = model.maxpool(model.relu(model.bn1(model.conv1(torch.randn(1, 3, 32, 32)))))
    assert model.layer1(features).shape[-2:] == (32, 32)


def test_small_cnn_has_batch_norm_and_mlp_has_none():
    assert any(isinstance(m, nn.BatchNorm2d) for m in SmallCNN(1, 10).modules())
    assert not any(
        isinstance(m, nn.BatchNorm2d) for m in SmallCNN(1, 10, batch_norm=False).modules()
    )
    assert not any(isinstance(m, nn.BatchNorm2d) for m in MLP(64, 10).modules())


def test_unknown_backbone_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="mlp.*resnet18_cifar.*small_cnn"):
        build_backbone("vgg", (1, 8, 8), 10)
