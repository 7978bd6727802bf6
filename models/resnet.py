"""ResNet-50 / ResNet-18 from torchvision, the small CIFAR-style ResNet-20
(models/resnet_cifar.py), or any torchvision classification model by name, with an ImageNet or
(for the ResNet family) a CIFAR stem."""

from __future__ import annotations

import torchvision
from torch import nn

from lib.spec import STEMS, ModelSpec
from models.resnet_cifar import ResNet20
from models.zoo import build_torchvision, has_cifar_stem

_ARCHITECTURES = {
    "resnet50": torchvision.models.resnet50,
    "resnet18": torchvision.models.resnet18,
}


def build_model(spec: ModelSpec, num_classes: int, image_size: int = 224) -> nn.Module:
    """Build a randomly initialised torchvision model (`weights=None`).

    `spec.name` is ResNet-50 / ResNet-18 / ResNet-20 (the menu's named choices) or any name of
    `models.zoo.classification_models()`; `image_size` reaches the builders that need it (ViT).
    The `cifar` stem swaps the 7x7/2 convolution and the max-pool for a 3x3/1 convolution, the
    usual adaptation for 32x32 inputs (He et al. 2016, section 4.2): on small images the
    ImageNet stem would shrink a 32x32 input to 8x8 before the first residual stage.
    torchvision's own initialisation (Kaiming normal, fan_out) is applied to the new conv so
    both stems start from the same distribution.
    """
    if spec.stem not in STEMS:
        raise ValueError(f"model stem {spec.stem!r} is not supported; accepted: {', '.join(STEMS)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if spec.name == "resnet20":
        return ResNet20(num_classes, spec.stem)
    if spec.name in _ARCHITECTURES:
        model = _ARCHITECTURES[spec.name](weights=None, num_classes=num_classes)
    else:
        model = build_torchvision(spec.name, num_classes, image_size)
    if spec.stem == "cifar":
        if not has_cifar_stem(spec.name):
            raise ValueError(
                f"model {spec.name!r} has no CIFAR stem; it applies to torchvision's ResNet "
                "family (resnet*, resnext*, wide_resnet*)"
            )
        stem_conv = nn.Conv2d(3, model.conv1.out_channels, 3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(stem_conv.weight, mode="fan_out", nonlinearity="relu")
        model.conv1 = stem_conv
        model.maxpool = nn.Identity()
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (ResNet-50, 1000 classes: 25,557,032)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
