"""Model builders on top of torchvision's architectures."""

from models.resnet import build_model, count_parameters

__all__ = ["build_model", "count_parameters"]
