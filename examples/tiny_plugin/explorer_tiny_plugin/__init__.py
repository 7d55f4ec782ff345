"""An example plugin for the compression explorer: one small architecture of its own.

The explorer imports this module when it is named (`--plugin explorer_tiny_plugin`, or EXPLORER_PLUGINS), or when
the package is installed (`pip install examples/tiny_plugin`: its entry point in the group "explorer.plugins").
Importing it registers `tinynet`; after that `tinynet` is an architecture like the zoo's: `add-model --arch tinynet`
loads weights into it, and every technique, the packed file and the page work on it.
"""

import torch
from torch import nn

from explorer.core.zoo import register_model


class TinyNet(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a linear head: about 4,000 parameters."""

    def __init__(self, num_classes: int, in_channels: int, image_size: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(12, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.body(x), 1))


@register_model("tinynet", description="example plugin: two convolutions and a linear head (~4k params)",
                default_image_size=8)
def tinynet(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return TinyNet(num_classes, in_channels, image_size)
