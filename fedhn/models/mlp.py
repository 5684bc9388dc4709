"""The paper's fully connected network (section 4.6): FC layers of 128 units, each followed by a norm and ReLU."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

__all__ = ["MLP"]


class MLP(nn.Module):
    """``depth`` blocks Linear -> norm -> ReLU of ``width`` units, then a linear classifier."""

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
            layers += [nn.Linear(in_features if index == 0 else width, width), norm(width), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
