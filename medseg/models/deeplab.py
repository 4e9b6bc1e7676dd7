"""DeepLabV3 (Chen et al., 2017) for 2D images: a dilated ResNet or MobileNetV3-Large backbone, an ASPP head and
an auxiliary head.

medseg builds it itself because torchvision, which has one, cannot be installed beside the pinned torch CPU
wheel, and MONAI has none (docs/design.md). The backbones' layers are named as torchvision names them (ResNet:
``conv1``, ``bn1``, ``layer1`` .. ``layer4``; MobileNetV3: ``features.0`` .. ``features.16``), so the ImageNet
weights torchvision publishes load into ``backbone`` unchanged.

The network returns a dict, as torchvision's segmentation models do: ``{"out": logits}``, plus ``"aux"`` (the
auxiliary head's logits: on ResNet's layer3, on MobileNetV3's first output-stride-8 block) in training mode when
the auxiliary head is on. Both are at the input's size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MOBILENET_V3_LARGE", "RESNET_LAYERS", "DeepLabV3", "MobileNetV3Backbone", "ResNetBackbone"]

#: Bottleneck blocks per stage of each ResNet.
RESNET_LAYERS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}

#: MobileNetV3-Large's inverted residual blocks (Howard et al., 2019, table 1), one row each: kernel size,
#: expanded features, output features, squeeze-excitation, hard-swish (else ReLU), stride.
MOBILENET_V3_LARGE: tuple[tuple[int, int, int, bool, bool, int], ...] = (
    (3, 16, 16, False, False, 1),
    (3, 64, 24, False, False, 2),
    (3, 72, 24, False, False, 1),
    (5, 72, 40, True, False, 2),
    (5, 120, 40, True, False, 1),
    (5, 120, 40, True, False, 1),
    (3, 240, 80, False, True, 2),
    (3, 200, 80, False, True, 1),
    (3, 184, 80, False, True, 1),
    (3, 184, 80, False, True, 1),
    (3, 480, 112, True, True, 1),
    (3, 672, 112, True, True, 1),
    (5, 672, 160, True, True, 2),
    (5, 960, 160, True, True, 1),
    (5, 960, 160, True, True, 1),
)


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


def round_channels(value: float, divisor: int = 8) -> int:
    """``value`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``), never below 90% of it.

    MobileNet's rule for scaled widths and squeeze sizes; torchvision rounds the same way, so its weights fit.

    Example:
        >>> round_channels(72 / 4), round_channels(120 / 4), round_channels(30.0), round_channels(10.0)
        (24, 32, 32, 16)
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _conv_norm_act(cin: int, cout: int, kernel: int, *, stride: int = 1, dilation: int = 1, groups: int = 1,
                   act: type[nn.Module] | None = None) -> nn.Sequential:
    """Convolution (no bias), batch norm (MobileNet's eps and momentum), activation: torchvision's
    ``Conv2dNormActivation`` layout, so that ``0`` is the convolution and ``1`` the norm."""
    parts: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=dilation * (kernel - 1) // 2, dilation=dilation,
                  groups=groups, bias=False),
        nn.BatchNorm2d(cout, eps=0.001, momentum=0.01)]
    if act is not None:
        parts.append(act(inplace=True))
    return nn.Sequential(*parts)


class SqueezeExcitation(nn.Module):
    """Channel gates from the global average: 1x1 conv, ReLU, 1x1 conv, hard sigmoid, times the input."""

    def __init__(self, channels: int, squeezed: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.fc2 = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The input, each channel scaled by its gate in [0, 1]."""
        gate = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(gate))))


class InvertedResidual(nn.Module):
    """1x1 expansion (left out when it would not widen), depthwise kxk, squeeze-excitation, linear 1x1 projection;
    the input is added back when the shapes allow it."""

    def __init__(self, cin: int, kernel: int, expanded: int, cout: int, *, se: bool, hardswish: bool, stride: int,
                 dilation: int):
        super().__init__()
        act: type[nn.Module] = nn.Hardswish if hardswish else nn.ReLU
        parts: list[nn.Module] = []
        if expanded != cin:
            parts.append(_conv_norm_act(cin, expanded, 1, act=act))
        parts.append(_conv_norm_act(expanded, expanded, kernel, stride=stride, dilation=dilation, groups=expanded,
                                    act=act))
        if se:
            parts.append(SqueezeExcitation(expanded, round_channels(expanded // 4)))
        parts.append(_conv_norm_act(expanded, cout, 1))
        self.block = nn.Sequential(*parts)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block, plus its input where the shapes match."""
        out = self.block(x)
        return out + x if self.residual else out


class MobileNetV3Backbone(nn.Module):
    """MobileNetV3-Large's feature extractor (no classifier); strides past ``output_stride`` become dilations.

    ``features.0`` is the stem (3x3, stride 2, hard-swish), ``features.1`` .. ``features.15`` the blocks of
    :data:`MOBILENET_V3_LARGE`, ``features.16`` the last 1x1 convolution to 960 features: torchvision's names.
    For output stride 16 the last stage (``features.13`` on) is dilated 2 instead of strided, as in torchvision's
    DeepLabV3; for 8 the stage from ``features.7`` is dilated 2 and the last 4.

    Args:
        in_channels: Input channels.
        width: Features of the stem (16 in MobileNetV3); every width is scaled by ``width / 16`` and rounded to a
            multiple of 8.
        output_stride: 16 or 8.

    Example:
        >>> net = MobileNetV3Backbone(1, width=4)
        >>> aux, out = net(torch.zeros(1, 1, 64, 96))
        >>> tuple(aux.shape), tuple(out.shape), net.channels
        ((1, 16, 8, 12), (1, 240, 4, 6), (16, 240))
    """

    #: Index in ``features`` whose output feeds the auxiliary head (the first block at output stride 8).
    aux_index = 4

    def __init__(self, in_channels: int = 3, width: int = 16, output_stride: int = 16):
        super().__init__()
        scale = width / 16

        def scaled(value: int) -> int:
            return round_channels(value * scale)

        cin = scaled(16)
        layers: list[nn.Module] = [_conv_norm_act(in_channels, cin, 3, stride=2, act=nn.Hardswish)]
        reached, dilation = 2, 1
        for kernel, expanded, cout, se, hardswish, stride in MOBILENET_V3_LARGE:
            if stride > 1 and reached >= output_stride:
                dilation, stride = dilation * stride, 1
            reached *= stride
            layers.append(InvertedResidual(cin, kernel, scaled(expanded), scaled(cout), se=se, hardswish=hardswish,
                                           stride=stride, dilation=dilation))
            cin = scaled(cout)
        last = 6 * cin
        layers.append(_conv_norm_act(cin, last, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        #: Features of the auxiliary head's input and of the output.
        self.channels = (scaled(MOBILENET_V3_LARGE[self.aux_index - 1][2]), last)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of ``features.4`` (for the auxiliary head) and of the last layer."""
        aux = self.features[: self.aux_index + 1](x)
        return aux, self.features[self.aux_index + 1:](aux)


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
    """DeepLabV3 over a ResNet-50/101 or MobileNetV3-Large backbone, with an optional auxiliary FCN head.

    Args:
        in_channels: Input channels.
        out_channels: Classes incl. background.
        backbone: ``resnet50``, ``resnet101`` or ``mobilenet_v3_large``.
        output_stride: 16 or 8 (dilation rates of the ASPP 6/12/18 or 12/24/36).
        width: Features of the backbone's first level (64 for ResNet's ImageNet weights, 16 for MobileNetV3's);
            None: those.
        aspp_channels: Features of the ASPP head.
        aux_head: Add the auxiliary head (used by the loss in training).

    Example:
        >>> net = DeepLabV3(1, 2, width=4, aspp_channels=8).eval()
        >>> out = net(torch.zeros(1, 1, 32, 48))
        >>> sorted(out), tuple(out["out"].shape)
        (['out'], (1, 2, 32, 48))
        >>> mobile = DeepLabV3(1, 2, backbone="mobilenet_v3_large", width=4, aspp_channels=8).eval()
        >>> tuple(mobile(torch.zeros(1, 1, 32, 48))["out"].shape)
        (1, 2, 32, 48)
    """

    def __init__(self, in_channels: int, out_channels: int, *, backbone: str = "resnet50", output_stride: int = 16,
                 width: int | None = None, aspp_channels: int = 256, aux_head: bool = True):
        super().__init__()
        self.in_channels, self.out_channels, self.divisor = in_channels, out_channels, output_stride
        self.backbone: nn.Module
        if backbone == "mobilenet_v3_large":
            mobile = MobileNetV3Backbone(in_channels, width or 16, output_stride)
            c3, c4 = mobile.channels
            self.backbone = mobile
        else:
            width = width or 64
            self.backbone = ResNetBackbone(RESNET_LAYERS[backbone], in_channels, width, output_stride)
            c3, c4 = width * 16, width * 32
        rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        self.classifier = nn.Sequential(ASPP(c4, rates, aspp_channels),
                                        *_conv_bn_relu(aspp_channels, aspp_channels, 3),
                                        nn.Conv2d(aspp_channels, out_channels, 1))
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
