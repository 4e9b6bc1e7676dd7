"""DeepLabV3 (Chen et al., 2017) for 2D images: a dilated ResNet backbone, an ASPP head and an auxiliary head.

medseg builds it itself because torchvision, which has one, cannot be installed beside the pinned torch CPU
wheel, and MONAI has none (docs/design.md). The backbone's layers are named as torchvision's ResNet names them
(``conv1``, ``bn1``, ``layer1`` .. ``layer4``), so the ImageNet weights torchvision publishes load into
``backbone`` unchanged.

The network returns a dict, as torchvision's segmentation models do: ``{"out": logits}``, plus ``"aux"`` (the
layer3 head's logits) in training mode when the auxiliary head is on. Both are at the input's size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RESNET_LAYERS", "DeepLabV3", "ResNetBackbone"]

#: Bottleneck blocks per stage of each ResNet.
RESNET_LAYERS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}


class Bottleneck(nn.Module):
    """ResNet's 1x1 -> 3x3 -> 1x1 residual block (torchvision's layer names)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, dilation: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNetBackbone(nn.Module):
    """ResNet-50/101 without its classifier; layer4 (and layer3 for output stride 8) dilated instead of strided.

    Args:
        layers: Blocks per stage, e.g. ``RESNET_LAYERS["resnet50"]``.
        in_channels: Input channels.
        width: Features of the first level (64 in ResNet).
        output_stride: 16 (layer4 dilated) or 8 (layer3 and layer4 dilated).
    """

    def __init__(self, layers: tuple[int, ...], in_channels: int = 3, width: int = 64, output_stride: int = 16):
        super().__init__()
        self.inplanes, self.dilation = width, 1
        self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(width, layers[0], 1, dilate=False)
        self.layer2 = self._make_layer(width * 2, layers[1], 2, dilate=False)
        self.layer3 = self._make_layer(width * 4, layers[2], 2, dilate=output_stride == 8)
        self.layer4 = self._make_layer(width * 8, layers[3], 2, dilate=True)

    def _make_layer(self, planes: int, blocks: int, stride: int, *, dilate: bool) -> nn.Sequential:
        previous = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes * 4))
        parts = [Bottleneck(self.inplanes, planes, stride, previous, downsample)]
        self.inplanes = planes * 4
        parts += [Bottleneck(self.inplanes, planes, 1, self.dilation, None) for _ in range(1, blocks)]
        return nn.Sequential(*parts)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of layer3 (for the auxiliary head) and layer4."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c3 = self.layer3(self.layer2(self.layer1(x)))
        return c3, self.layer4(c3)


def _conv_bn_relu(cin: int, cout: int, kernel: int, dilation: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, padding=dilation * (kernel // 2), dilation=dilation, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class ASPPPooling(nn.Module):
    """The image-level branch: global average, 1x1 conv, back to the feature map's size."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(nn.AdaptiveAvgPool2d(1), *_conv_bn_relu(cin, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features spread over the input's size."""
        return F.interpolate(self.body(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1x1 branch, three dilated 3x3 branches and image pooling."""

    def __init__(self, cin: int, rates: tuple[int, int, int], cout: int):
        super().__init__()
        branches: list[nn.Module] = [nn.Sequential(*_conv_bn_relu(cin, cout, 1))]
        branches += [nn.Sequential(*_conv_bn_relu(cin, cout, 3, r)) for r in rates]
        branches.append(ASPPPooling(cin, cout))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(*_conv_bn_relu(5 * cout, cout, 1), nn.Dropout(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenated branches, projected."""
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


class DeepLabV3(nn.Module):
    """DeepLabV3 over a ResNet-50/101 backbone, with an optional auxiliary FCN head on layer3.

    Args:
        in_channels: Input channels.
        out_channels: Classes incl. background.
        backbone: ``resnet50`` or ``resnet101``.
        output_stride: 16 or 8 (dilation rates of the ASPP 6/12/18 or 12/24/36).
        width: Features of the backbone's first level (64 for ImageNet weights).
        aspp_channels: Features of the ASPP head.
        aux_head: Add the auxiliary head (used by the loss in training).

    Example:
        >>> net = DeepLabV3(1, 2, width=4, aspp_channels=8).eval()
        >>> out = net(torch.zeros(1, 1, 32, 48))
        >>> sorted(out), tuple(out["out"].shape)
        (['out'], (1, 2, 32, 48))
    """

    def __init__(self, in_channels: int, out_channels: int, *, backbone: str = "resnet50", output_stride: int = 16,
                 width: int = 64, aspp_channels: int = 256, aux_head: bool = True):
        super().__init__()
        self.in_channels, self.out_channels, self.divisor = in_channels, out_channels, output_stride
        self.backbone = ResNetBackbone(RESNET_LAYERS[backbone], in_channels, width, output_stride)
        rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        self.classifier = nn.Sequential(ASPP(width * 32, rates, aspp_channels),
                                        *_conv_bn_relu(aspp_channels, aspp_channels, 3),
                                        nn.Conv2d(aspp_channels, out_channels, 1))
        c3 = width * 16
        self.aux_classifier = nn.Sequential(*_conv_bn_relu(c3, c3 // 4, 3), nn.Dropout(0.1),
                                            nn.Conv2d(c3 // 4, out_channels, 1)) if aux_head else None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"out": logits}`` (+ ``"aux"`` when training with the auxiliary head), at the input's size."""
        size = x.shape[-2:]
        c3, c4 = self.backbone(x)
        result = {"out": F.interpolate(self.classifier(c4), size=size, mode="bilinear", align_corners=False)}
        if self.training and self.aux_classifier is not None:
            result["aux"] = F.interpolate(self.aux_classifier(c3), size=size, mode="bilinear", align_corners=False)
        return result
