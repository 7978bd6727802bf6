"""ResNet-20: the small CIFAR-style residual network of He et al. 2016 (section 4.2).

Three stages of three basic blocks (16, 32 and 64 channels; the second and third halve the
feature map), global average pooling and one linear layer: 269,722 parameters with 10
classes, about 40 times fewer than ResNet-18. It trains in minutes on two CPU cores, which is
what the demo needs; ResNet-50 stays the default everywhere else.

The shortcut that changes shape is the paper's option A: subsample by 2 and pad the new
channels with zeros, so every parameter is a convolution, a batch norm or the classifier
(nothing parameter-free hides from pruning, nothing extra is pruned). Initialisation follows
torchvision's ResNets: Kaiming normal (fan_out) convolutions, batch norms at 1 and 0.

The `cifar` stem is the paper's 3x3/1 convolution to 16 channels; the `imagenet` stem is the
torchvision one scaled to 16 channels (7x7/2 convolution and a 3x3/2 max-pool), so the Stem
option means the same thing for every model.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

STAGE_CHANNELS = (16, 32, 64)
BLOCKS_PER_STAGE = 3  # 6n + 2 layers with n = 3: ResNet-20


def _conv3x3(inputs: int, outputs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inputs, outputs, kernel_size=3, stride=stride, padding=1, bias=False)


class _Block(nn.Module):
    """Two 3x3 convolutions with batch norm; identity shortcut, or option A when the shape
    changes."""

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inputs, outputs, stride)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = _conv3x3(outputs, outputs)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.stride = stride
        self.pad = outputs - inputs

    def shortcut(self, x: Tensor) -> Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, 0, self.pad))
        return x

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    def __init__(self, num_classes: int, stem: str = "cifar") -> None:
        super().__init__()
        width = STAGE_CHANNELS[0]
        if stem == "cifar":
            self.conv1 = _conv3x3(3, width)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        stages = []
        for index, channels in enumerate(STAGE_CHANNELS):
            blocks = []
            for block in range(BLOCKS_PER_STAGE):
                stride = 2 if index > 0 and block == 0 else 1
                blocks.append(_Block(width, channels, stride))
                width = channels
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(width, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)
