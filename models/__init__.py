"""Model builders on top of torchvision's architectures."""
