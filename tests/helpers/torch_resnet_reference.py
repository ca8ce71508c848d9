"""A PyTorch ResNet with torchvision's exact module names, for parity tests.

torchvision is not installed here; `tools.torch_jml.ResNetGrid` (the PyTorch
ResNet of the benchmark) re-states its ResNet (v1.5: stride on the 3x3 conv of
Bottleneck and on the downsample conv) with the same attribute names, so
``state_dict()`` keys are torchvision's (conv1.weight, bn1.*,
layer1.0.conv1.weight, layer1.0.downsample.0.weight, layer1.0.downsample.1.*,
fc.*). ``TorchResNet`` takes torchvision's constructor arguments and returns
layer4's map [B, C, h, w].
"""

from __future__ import annotations

import torch
from torch import nn

from tools.torch_jml import BasicBlock, Bottleneck, ResNetGrid

__all__ = ["BasicBlock", "Bottleneck", "TorchResNet", "numpy_state", "randomize_"]


class TorchResNet(ResNetGrid):
    """torchvision.models.ResNet trunk (+ optional fc), forward -> layer4 map [B, C, h, w]."""

    def __init__(self, block, layers, width=64, num_classes=None):
        super().__init__(tuple(layers), block is Bottleneck, width, num_classes)

    def forward(self, x):
        return self.feature_map(x)


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
