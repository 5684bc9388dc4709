"""CIFAR ResNets: a 3x3 stem without max-pool, basic blocks, global average pooling.

``conv=WSConv2d`` gives scaled weight-standardized convolutions (with a bias, as NF-ResNets'), ``skip_init`` a
zero-initialized gain on every residual branch (:mod:`fedhn.models.norm_free`): FedWon's norm-free ResNet with
``norm`` the identity."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from fedhn.models.norm_free import ResidualGain, WSConv2d
from fedhn.norms import activation_after

__all__ = ["CifarResNet", "BasicBlock"]

NormFactory = Callable[[int], nn.Module]
ConvType = type[nn.Conv2d]


def _conv(conv: ConvType, in_channels: int, out_channels: int, size: int = 3, stride: int = 1) -> nn.Conv2d:
    return conv(in_channels, out_channels, size, stride=stride, padding=size // 2, bias=conv is WSConv2d)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (a 1x1 projection when the shape changes). The
    activations (after ``norm1``, after the residual sum) are the norm's choice (:func:`activation_after`):
    ReLU, or TLU for FRN. With ``skip_init`` the residual branch is scaled by a learnable gain that starts at 0."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        norm: NormFactory,
        conv: ConvType = nn.Conv2d,
        skip_init: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = _conv(conv, in_channels, out_channels, stride=stride)
        self.norm1 = norm(out_channels)
        self.conv2 = _conv(conv, out_channels, out_channels)
        self.norm2 = norm(out_channels)
        self.act1 = activation_after(self.norm1)
        self.act2 = activation_after(self.norm2)
        self.residual_gain: nn.Module = ResidualGain() if skip_init else nn.Identity()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(_conv(conv, in_channels, out_channels, 1, stride), norm(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.norm1(self.conv1(x)))
        out = self.residual_gain(self.norm2(self.conv2(out)))
        return self.act2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for small images: ``widths[i]`` channels and ``blocks[i]`` basic blocks in stage i
    (stride 1 in the first stage, 2 after), convolutions of type ``conv``, SkipInit gains with ``skip_init``."""

    def __init__(
        self,
        widths: Sequence[int],
        blocks: Sequence[int],
        norm: NormFactory,
        num_classes: int = 10,
        in_channels: int = 3,
        conv: ConvType = nn.Conv2d,
        skip_init: bool = False,
    ) -> None:
        super().__init__()
        stem_norm = norm(widths[0])
        self.stem = nn.Sequential(_conv(conv, in_channels, widths[0]), stem_norm, activation_after(stem_norm))
        stages, channels = [], widths[0]
        for index, (width, count) in enumerate(zip(widths, blocks, strict=True)):
            layers = []
            for block in range(count):
                stride = 2 if index > 0 and block == 0 else 1
                layers.append(BasicBlock(channels, width, stride, norm, conv, skip_init))
                channels = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        # Global average pooling as a mean: nn.AdaptiveAvgPool2d's CUDA backward has no deterministic
        # implementation (it raises under deterministic = true); the mean's backward is an expand.
        return self.fc(self.stages(self.stem(x)).mean((2, 3)))
