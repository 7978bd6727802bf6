import pytest
import torch
from torch import nn

from lib.spec import ModelSpec
from models import build_model, count_parameters


def _record_layer1_shape(model: nn.Module) -> dict:
    seen: dict = {}

    def hook(module, inputs, output):
        seen["shape"] = output.shape

    model.layer1.register_forward_hook(hook)
    return seen


def test_resnet50_imagenet_has_the_reference_parameter_count():
    model = build_model(ModelSpec(name="resnet50", stem="imagenet"), 1000)
    assert count_parameters(model) == 25_557_032


def test_cifar_stem_keeps_resolution_and_sets_classes():
    model = build_model(ModelSpec(name="resnet18", stem="cifar"), 10)
    assert model.conv1.kernel_size == (3, 3)
    assert model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert model.fc.out_features == 10
    # The stem must not downsample: layer1 sees the input's full 8x8 resolution.
    seen = _record_layer1_shape(model)
    model.eval()
    out = model(torch.randn(2, 3, 8, 8))
    assert out.shape == (2, 10)
    assert seen["shape"][-2:] == (8, 8)


def test_imagenet_stem_downsamples_by_four():
    model = build_model(ModelSpec(name="resnet18", stem="imagenet"), 7)
    seen = _record_layer1_shape(model)
    model.eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)
    assert seen["shape"][-2:] == (8, 8)


def test_same_seed_same_initialisation():
    torch.manual_seed(3)
    a = build_model(ModelSpec(name="resnet18", stem="cifar"), 10)
    torch.manual_seed(3)
    b = build_model(ModelSpec(name="resnet18", stem="cifar"), 10)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


@pytest.mark.parametrize(
    ("spec", "classes", "message"),
    [
        (ModelSpec(name="vgg16"), 10, "model name 'vgg16'"),
        (ModelSpec(name="resnet18", stem="tiny"), 10, "model stem 'tiny'"),
        (ModelSpec(name="resnet18"), 0, "num_classes"),
    ],
)
def test_bad_model_settings_are_named(spec, classes, message):
    with pytest.raises(ValueError, match=message):
        build_model(spec, classes)


def test_resnet20_is_the_papers_cifar_network():
    """He et al. 2016, section 4.2: 3 stages x 3 basic blocks (16/32/64 channels), parameter-free
    (option A) shortcuts: 0.27 M parameters with 10 classes, 19 convolutions + 1 linear."""
    model = build_model(ModelSpec(name="resnet20", stem="cifar"), 10)
    assert count_parameters(model) == 269_722
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19 and all(c.kernel_size == (3, 3) for c in convs)
    assert [model.layer1[0].conv1.out_channels, model.layer3[0].conv1.out_channels] == [16, 64]
    seen = _record_layer1_shape(model)
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    assert model(x).shape == (2, 10)
    assert seen["shape"][-3:] == (16, 16, 16)  # the cifar stem keeps the resolution
    # layer3 sees a quarter of the side; the shortcut pads the new channels with zeros
    block = model.layer2[0]
    inputs = torch.randn(1, 16, 8, 8)
    shortcut = block.shortcut(inputs)
    assert shortcut.shape == (1, 32, 4, 4)
    assert torch.equal(shortcut[:, :16], inputs[:, :, ::2, ::2])
    assert not shortcut[:, 16:].any()


def test_resnet20_imagenet_stem_downsamples_by_four_and_seeds_reproduce():
    model = build_model(ModelSpec(name="resnet20", stem="imagenet"), 7)
    seen = _record_layer1_shape(model)
    model.eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)
    assert seen["shape"][-2:] == (8, 8)
    torch.manual_seed(5)
    a = build_model(ModelSpec(name="resnet20", stem="cifar"), 10)
    torch.manual_seed(5)
    b = build_model(ModelSpec(name="resnet20", stem="cifar"), 10)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
