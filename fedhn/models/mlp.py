"""The paper's fully connected network (section 4.6): FC layers of 128 units, each followed by a norm and ReLU."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from fedhn.norms import activation_after

__all__ = ["MLP"]


class MLP(nn.Module):
    """``depth`` blocks Linear -> norm -> ReLU (or the norm's own activation, :func:`activation_after`: TLU
    for FRN) of ``width`` units, then a linear classifier."""

    def __init__(
        self,
        in_features: int,
        norm: Callable[[int], nn.Module],
        num_classes: int = 10,
        width: int = 128,
        depth: int = 4,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        for index in range(depth):
            layer_norm = norm(width)
            layers += [nn.Linear(in_features if index == 0 else width, width), layer_norm, activation_after(layer_norm)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
