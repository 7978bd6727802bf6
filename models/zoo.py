"""Any classification model of the installed torchvision, by name (`torchvision.models`).

    python -m models          # the names this torchvision offers, one per line

`build_torchvision(name, num_classes, image_size)` builds one randomly initialised
(`weights=None`). The few builders that need to know the input size get it (a ViT's and MaxViT's
position grids); GoogLeNet and Inception v3 are built without their auxiliary classifiers,
which would make training return a tuple instead of the logits.

`model_problem(name, stem, image_size)` is the config-time check: an unknown name, a CIFAR stem
on a model that has none, or an image size the architecture cannot take, found by running the
model once on the meta device (no memory, no compute), before any run starts.
"""

from __future__ import annotations

import difflib
from typing import Any

import torch
import torchvision
from torch import nn

# The CIFAR stem replaces conv1 + maxpool of torchvision's ResNet class (resnet*, resnext*,
# wide_resnet*); other architectures have no such stem to swap.
CIFAR_STEM_MODULE = "torchvision.models.resnet"


def classification_models() -> tuple[str, ...]:
    """The classification models of the installed torchvision (detection, segmentation,
    video and quantized models are left out: they are not image classifiers of this loop)."""
    return tuple(torchvision.models.list_models(module=torchvision.models))


def _module_of(name: str) -> str:
    return torchvision.models.get_model_builder(name).__module__


def has_cifar_stem(name: str) -> bool:
    """True when the CIFAR stem applies to `name` (torchvision's ResNet family)."""
    return _module_of(name) == CIFAR_STEM_MODULE


def _builder_arguments(name: str, image_size: int) -> dict[str, Any]:
    module = _module_of(name)
    if module.endswith(".vision_transformer"):
        return {"image_size": image_size}
    if module.endswith(".maxvit"):
        return {"input_size": (image_size, image_size)}
    if name in ("googlenet", "inception_v3"):
        return {"aux_logits": False, "init_weights": True}
    return {}


def build_torchvision(name: str, num_classes: int, image_size: int) -> nn.Module:
    """torchvision.models.get_model(name, weights=None, num_classes=...), randomly initialised."""
    if name not in classification_models():
        raise ValueError(f"model name {name!r} is not a torchvision classification model")
    return torchvision.models.get_model(
        name, weights=None, num_classes=num_classes, **_builder_arguments(name, image_size)
    )


def model_problem(name: str, stem: str, image_size: int) -> tuple[str, str] | None:
    """What is wrong with training `name` with `stem` on `image_size` pixel images: the
    setting at fault ("name", "stem" or "image_size") and what is accepted for it, in words
    that complete "(accepted: ...)"; None when nothing is."""
    names = classification_models()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; close: {', '.join(close)}" if close else ""
        return "name", (
            f"a classification model of torchvision {torchvision.__version__}{hint}; "
            f"all: {', '.join(names)}"
        )
    if stem == "cifar" and not has_cifar_stem(name):
        return "stem", (
            f"the ImageNet stem for {name}: the CIFAR stem replaces conv1 and the max-pool of "
            "torchvision's ResNet family (resnet*, resnext*, wide_resnet*), which "
            f"{name} does not have"
        )
    try:
        with torch.device("meta"):
            model = build_torchvision(name, 10, image_size).eval()
            model(torch.empty(2, 3, image_size, image_size))
    except (AssertionError, RuntimeError, ValueError, TypeError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return "image_size", f"an image size {name} can take; at {image_size} px it fails: {reason}"
    return None


def main() -> int:
    print("\n".join(classification_models()))
    return 0
