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
