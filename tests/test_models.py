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
        (ModelSpec(name="vgg99"), 10, "model name .vgg99."),
        (ModelSpec(name="resnet18", stem="tiny"), 10, "model stem 'tiny'"),
        (ModelSpec(name="resnet18"), 0, "num_classes"),
    ],
)
def test_bad_model_settings_are_named(spec, classes, message):
    with pytest.raises(ValueError, match=message):
        build_model(spec, classes)


# -- any torchvision classification model by name -------------------------------------------------


def test_the_named_choices_are_torchvisions_own_builders():
    """ResNet-50 by the menu's choice and by name are one model, initialised identically."""
    import torchvision

    from models.zoo import build_torchvision, classification_models

    names = classification_models()
    assert {"resnet50", "resnet18", "vit_b_16", "convnext_tiny", "mobilenet_v3_large"} <= set(names)
    assert not any(n.startswith(("fasterrcnn", "fcn_", "r3d", "quantized")) for n in names)
    torch.manual_seed(0)
    a = build_model(ModelSpec(name="resnet18"), 10)
    torch.manual_seed(0)
    b = build_torchvision("resnet18", 10, 224)
    torch.manual_seed(0)
    c = torchvision.models.resnet18(num_classes=10)
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters(), strict=True):
        assert torch.equal(pa, pb) and torch.equal(pa, pc)


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("vit_b_16", 32),
        ("convnext_tiny", 32),
        ("mobilenet_v3_small", 32),
        ("googlenet", 64),
        ("maxvit_t", 224),
        ("swin_t", 32),
    ],  # fmt: skip
)
def test_models_by_name_build_for_the_image_size_and_return_logits(name, size):
    """On the meta device (shapes only): a ViT and MaxViT are built for the image size, and
    GoogLeNet returns logits in training mode, not a tuple with auxiliary outputs."""
    with torch.device("meta"):
        model = build_model(ModelSpec(name=name), 7, size).train()
        out = model(torch.empty(2, 3, size, size))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 7)


def test_cifar_stem_applies_to_the_whole_resnet_family():
    with torch.device("meta"):
        model = build_model(ModelSpec(name="wide_resnet50_2", stem="cifar"), 10, 32)
        seen = _record_layer1_shape(model)
        model(torch.empty(2, 3, 32, 32))
    assert isinstance(model.maxpool, nn.Identity) and model.conv1.stride == (1, 1)
    assert seen["shape"][-2:] == (32, 32)
    with pytest.raises(ValueError, match="'vit_b_16' has no CIFAR stem"):
        build_model(ModelSpec(name="vit_b_16", stem="cifar"), 10, 32)


@pytest.mark.parametrize(
    ("name", "stem", "size", "setting", "words"),
    [
        ("vit_b_17", "imagenet", 224, "name", "close: vit_b_16"),
        ("vit_b_16", "cifar", 32, "stem", "the ImageNet stem for vit_b_16"),
        ("vit_b_16", "imagenet", 28, "image_size", "indivisible by patch size"),
        ("inception_v3", "imagenet", 32, "image_size", "at 32 px it fails"),
    ],
)
def test_model_problem_names_the_setting_at_fault(name, stem, size, setting, words):
    from models.zoo import model_problem

    assert model_problem("resnet34", "cifar", 32) is None
    assert model_problem("vit_b_16", "imagenet", 32) is None
    fault, accepted = model_problem(name, stem, size)
    assert fault == setting and words in accepted and "\n" not in accepted


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
