"""A PyTorch ResNet with torchvision's exact module names, for parity tests.

torchvision is not installed here, so this re-states its ResNet (v1.5:
stride on the 3x3 conv of Bottleneck and on the downsample conv) with the
same attribute names, so ``state_dict()`` keys are torchvision's
(conv1.weight, bn1.*, layer1.0.conv1.weight, layer1.0.downsample.0.weight,
layer1.0.downsample.1.*, fc.*). ``forward`` returns layer4's map [B, C, h, w].
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class TorchResNet(nn.Module):
    """torchvision.models.ResNet trunk (+ optional fc), forward -> layer4 map."""

    def __init__(self, block, layers, width=64, num_classes=None):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for s, n in enumerate(layers, start=1):
            stride = 1 if s == 1 else 2
            setattr(self, f"layer{s}", self._make_layer(block, width * 2 ** (s - 1), n, stride))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        if num_classes is not None:
            self.fc = nn.Linear(width * 8 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for s in range(1, 5):
            x = getattr(self, f"layer{s}")(x)
        return x

    def logits(self, x):
        return self.fc(torch.flatten(self.avgpool(self.forward(x)), 1))


@torch.no_grad()
def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Re-draws every tensor so that a wrong transpose or swapped BN field shows:
    conv N(0, sqrt(2/fan_in)), BN weight U(0.5, 1), bias N(0, 0.1), running_mean
    N(0, 0.2), running_var U(0.5, 2), Linear N(0, 1/sqrt(fan_in)) / N(0, 0.1).
    """
    g = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            fan_in = mod.weight[0].numel()
            mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
        elif isinstance(mod, nn.BatchNorm2d):
            c = mod.num_features
            mod.weight.copy_(0.5 + 0.5 * torch.rand(c, generator=g))
            mod.bias.copy_(0.1 * torch.randn(c, generator=g))
            mod.running_mean.copy_(0.2 * torch.randn(c, generator=g))
            mod.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=g))
            mod.num_batches_tracked.fill_(int(torch.randint(0, 1000, (), generator=g)))
        elif isinstance(mod, nn.Linear):
            mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) / mod.in_features**0.5)
            mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
    return model


def numpy_state(model: nn.Module) -> dict:
    """state_dict() as NumPy arrays (copies)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
