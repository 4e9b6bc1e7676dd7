"""The ``model`` section: one config class per network, chosen by ``model.name``.

``NetworkConfig`` is a discriminated union on ``name``, so each network validates its own keys: a SegResNet
option given to a UNet is an unknown key of ``model``. Every class states the size rule of its network
(:attr:`NetworkBase.divisor`): training sizes (``data.image_size``, ``data.patch_size``) and ``infer.roi_size``
are checked against it when the config is loaded (see ``ExperimentConfig``).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from medseg.config.strict import PositiveInt, StrictUnionMember

#: Backbones of MONAI's FlexibleUNet (its encoder registry).
FLEXIBLE_BACKBONES = (
    "efficientnet-b0", "efficientnet-b1", "efficientnet-b2", "efficientnet-b3", "efficientnet-b4",
    "efficientnet-b5", "efficientnet-b6", "efficientnet-b7", "efficientnet-b8", "efficientnet-l2",
    "resnet10", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet200",
)
FlexibleBackbone = Literal[
    "efficientnet-b0", "efficientnet-b1", "efficientnet-b2", "efficientnet-b3", "efficientnet-b4",
    "efficientnet-b5", "efficientnet-b6", "efficientnet-b7", "efficientnet-b8", "efficientnet-l2",
    "resnet10", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet200",
]


class NetworkBase(StrictUnionMember):
    """Keys every network has: dimensions, channels, pretrained weights and encoder freezing."""

    #: Spatial dims the network can be built in.
    dims_allowed: ClassVar[tuple[int, ...]] = (2, 3)
    #: Whether ``pretrained: imagenet`` is offered (the builder knows where the weights are published).
    imagenet: ClassVar[bool] = False
    #: Whether the network has an encoder ``freeze_encoder_epochs`` can freeze.
    has_encoder: ClassVar[bool] = False
    #: The network's total down-sampling when no key sets it (a ``strides`` key, where there is one, does).
    fixed_divisor: ClassVar[int] = 1
    #: Values of the network's ``norm`` key that cannot normalise one voxel per channel at the deepest level:
    #: with one of them, sizes must exceed the divisor.
    norms_refusing_one_voxel: ClassVar[tuple[str, ...]] = ()

    spatial_dims: Literal[2, 3] = Field(2, description="2 for images and slices, 3 for volumes.")
    in_channels: PositiveInt | None = Field(None, description="Input channels; default: from the data.")
    out_channels: int | None = Field(None, ge=2, description="Classes incl. background; default: from labels.")
    pretrained: str | None = Field(
        None, description="Initial weights: 'imagenet' (where the network offers it; downloaded once into the "
        "torch.hub cache) or the path of a local state dict (.pth/.pt). null: random initialisation.")
    freeze_encoder_epochs: int = Field(
        0, ge=0, description="Keep the encoder's weights fixed for this many first epochs (fine-tuning).")

    @property
    def divisor(self) -> int:
        """Every input size must be a multiple of this (the network's total down-sampling): the product of its
        ``strides`` where it has that key, else :attr:`fixed_divisor`."""
        strides: tuple[int, ...] | None = getattr(self, "strides", None)
        return _product(strides) if strides is not None else self.fixed_divisor

    @property
    def needs_above_divisor(self) -> bool:
        """True when one voxel at the deepest level is refused (its ``norm`` is one of
        :attr:`norms_refusing_one_voxel`), so sizes must exceed the divisor."""
        return getattr(self, "norm", None) in self.norms_refusing_one_voxel

    @model_validator(mode="after")
    def _common(self) -> NetworkBase:
        if self.spatial_dims not in self.dims_allowed:
            raise ValueError(f"spatial_dims: {self.spatial_dims} is not offered by this network "
                             f"(allowed: {list(self.dims_allowed)})")
        if self.pretrained is not None:
            if not self.pretrained.strip():
                raise ValueError("pretrained: empty; use 'imagenet', a file path, or null")
            if self.pretrained == "imagenet" and not self.imagenet:
                raise ValueError("pretrained: 'imagenet' is not offered for this network; give the path of a "
                                 "local state dict (.pth) or null")
        if self.freeze_encoder_epochs and not self.has_encoder:
            raise ValueError("freeze_encoder_epochs: this network has no separate encoder to freeze "
                             "(offered for deeplabv3, flexible_unet, swin_unetr, segresnet, dynunet)")
        return self


def _product(values: tuple[int, ...]) -> int:
    return math.prod(values)


def _check_levels(channels: tuple[int, ...], strides: tuple[int, ...], what: str = "channels") -> None:
    if len(channels) < 2:
        raise ValueError(f"{what} needs at least 2 levels, got {list(channels)}")
    if len(strides) != len(channels) - 1:
        raise ValueError(f"strides needs len({what}) - 1 = {len(channels) - 1} entries, got {len(strides)}")


class ModelConfig(NetworkBase):
    """Network architecture: MONAI's UNet (``model.name: unet``, the default).

    Sizes: multiples of the product of the strides; above it with instance norm.
    """

    norms_refusing_one_voxel: ClassVar[tuple[str, ...]] = ("instance",)

    name: Literal["unet"] = Field("unet", description="Network: unet, attention_unet, basic_unetplusplus, "
                                  "segresnet, dynunet, swin_unetr, flexible_unet, deeplabv3.")
    channels: tuple[PositiveInt, ...] = Field((16, 32, 64, 128, 256), description="Features per level.")
    strides: tuple[PositiveInt, ...] = Field((2, 2, 2, 2), description="Down-sampling per level.")
    num_res_units: int = Field(2, ge=0, description="Residual units per block.")
    norm: Literal["batch", "instance", "group"] = Field("batch", description="Normalisation layer.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout probability.")

    @model_validator(mode="after")
    def _check_strides(self) -> ModelConfig:
        _check_levels(self.channels, self.strides)
        return self


#: The UNet's config under the name the other networks' configs follow.
UNetConfig = ModelConfig


class AttentionUNetConfig(NetworkBase):
    """MONAI's AttentionUnet (``model.name: attention_unet``): a UNet with attention gates on the skips.

    Sizes: multiples of the product of the strides.
    """

    name: Literal["attention_unet"] = Field(description="Network name.")
    channels: tuple[PositiveInt, ...] = Field((16, 32, 64, 128, 256), description="Features per level.")
    strides: tuple[PositiveInt, ...] = Field((2, 2, 2, 2), description="Down-sampling per level.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout probability.")

    @model_validator(mode="after")
    def _check_strides(self) -> AttentionUNetConfig:
        _check_levels(self.channels, self.strides)
        return self


class BasicUNetPlusPlusConfig(NetworkBase):
    """MONAI's BasicUNetPlusPlus (``model.name: basic_unetplusplus``): nested skips, four down-samplings.

    Sizes: multiples of 16; above it with instance norm.
    """

    fixed_divisor: ClassVar[int] = 16
    norms_refusing_one_voxel: ClassVar[tuple[str, ...]] = ("instance",)

    name: Literal["basic_unetplusplus"] = Field(description="Network name.")
    features: tuple[PositiveInt, PositiveInt, PositiveInt, PositiveInt, PositiveInt, PositiveInt] = Field(
        (32, 32, 64, 128, 256, 32), description="Features of the five levels and of the last up-sampling.")
    deep_supervision: bool = Field(False, description="Train on all four nested outputs (halving weights).")
    norm: Literal["instance", "batch"] = Field("instance", description="Normalisation layer.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout probability.")
    upsample: Literal["deconv", "pixelshuffle", "nontrainable"] = Field("deconv", description="Up-sampling.")


class SegResNetConfig(NetworkBase):
    """MONAI's SegResNet (``model.name: segresnet``): residual encoder, light decoder, group norm.

    Sizes: multiples of 2 ** (levels - 1); above it with group or instance norm.
    """

    has_encoder: ClassVar[bool] = True
    norms_refusing_one_voxel: ClassVar[tuple[str, ...]] = ("group", "instance")

    name: Literal["segresnet"] = Field(description="Network name.")
    init_filters: PositiveInt = Field(8, description="Features of the first level (doubled per level).")
    blocks_down: tuple[PositiveInt, ...] = Field((1, 2, 2, 4), description="Residual blocks per encoder level.")
    blocks_up: tuple[PositiveInt, ...] = Field((1, 1, 1), description="Residual blocks per decoder level.")
    norm: Literal["group", "batch", "instance"] = Field("group", description="Normalisation layer.")
    num_groups: PositiveInt = Field(8, description="group norm: groups (must divide init_filters).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout probability.")

    @model_validator(mode="after")
    def _check_blocks(self) -> SegResNetConfig:
        if len(self.blocks_up) != len(self.blocks_down) - 1:
            raise ValueError(f"blocks_up needs len(blocks_down) - 1 = {len(self.blocks_down) - 1} entries, "
                             f"got {len(self.blocks_up)}")
        if self.norm == "group" and self.init_filters % self.num_groups:
            raise ValueError(f"init_filters: {self.init_filters} is not a multiple of num_groups "
                             f"{self.num_groups}")
        return self

    @property
    def divisor(self) -> int:
        """One 2x down-sampling per encoder level after the first."""
        return int(2 ** (len(self.blocks_down) - 1))


class DynUNetConfig(NetworkBase):
    """MONAI's DynUNet (``model.name: dynunet``), nnU-Net's network, with optional deep supervision.

    Sizes: multiples of the product of the strides; above it with instance norm.
    """

    has_encoder: ClassVar[bool] = True
    norms_refusing_one_voxel: ClassVar[tuple[str, ...]] = ("instance",)

    name: Literal["dynunet"] = Field(description="Network name.")
    strides: tuple[PositiveInt, ...] = Field(
        (1, 2, 2, 2, 2), description="Stride of each level, the first usually 1 (nnU-Net's plans).")
    filters: tuple[PositiveInt, ...] | None = Field(
        None, description="Features per level (one per stride); default: 32 doubling, at most 320 (3D) / 512.")
    deep_supervision: bool = Field(False, description="Extra outputs at lower decoder levels, weighted in the loss "
                                   "by halving weights normalised to 1 (as nnU-Net does).")
    deep_supr_num: PositiveInt = Field(1, description="Deep supervision: number of extra outputs.")
    res_block: bool = Field(False, description="Residual blocks.")
    norm: Literal["instance", "batch"] = Field("instance", description="Normalisation layer.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout probability.")

    @model_validator(mode="after")
    def _check_levels(self) -> DynUNetConfig:
        if len(self.strides) < 2:
            raise ValueError(f"strides needs at least 2 levels, got {list(self.strides)}")
        if self.filters is not None and len(self.filters) != len(self.strides):
            raise ValueError(f"filters needs one entry per stride ({len(self.strides)}), got {len(self.filters)}")
        if self.deep_supervision and self.deep_supr_num > len(self.strides) - 2:
            raise ValueError(f"deep_supr_num: {self.deep_supr_num} needs more levels; at most "
                             f"len(strides) - 2 = {len(self.strides) - 2}")
        return self


class SwinUNETRConfig(NetworkBase):
    """MONAI's SwinUNETR (``model.name: swin_unetr``): a Swin transformer encoder; sizes multiples of 32.

    Sizes: multiples of 32 (patch embedding and four patch mergings, 2**5), and above it (instance norm in the
    decoder's deepest block), in 2D and 3D.
    """

    has_encoder: ClassVar[bool] = True
    fixed_divisor: ClassVar[int] = 32

    name: Literal["swin_unetr"] = Field(description="Network name.")
    feature_size: PositiveInt = Field(24, description="Embedding size (a multiple of 12).")
    depths: tuple[PositiveInt, PositiveInt, PositiveInt, PositiveInt] = Field(
        (2, 2, 2, 2), description="Transformer blocks per stage.")
    num_heads: tuple[PositiveInt, PositiveInt, PositiveInt, PositiveInt] = Field(
        (3, 6, 12, 24), description="Attention heads per stage.")
    window_size: PositiveInt = Field(7, description="Attention window size.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout probability.")
    use_v2: bool = Field(False, description="SwinUNETR v2 (a residual conv block before each stage).")

    @field_validator("feature_size")
    @classmethod
    def _twelve(cls, value: int) -> int:
        if value % 12:
            raise ValueError(f"must be a multiple of 12 (the network splits it over heads), got {value}")
        return value

    @property
    def needs_above_divisor(self) -> bool:
        """Always (its norm is not a key)."""
        return True


class FlexibleUNetConfig(NetworkBase):
    """MONAI's FlexibleUNet (``model.name: flexible_unet``): a UNet decoder over an encoder of MONAI's zoo.

    Sizes: multiples of 32 (five 2x down-samplings); its decoder's norm works on two voxels or more.
    """

    imagenet: ClassVar[bool] = True
    has_encoder: ClassVar[bool] = True
    fixed_divisor: ClassVar[int] = 32

    name: Literal["flexible_unet"] = Field(description="Network name.")
    backbone: FlexibleBackbone = Field("efficientnet-b0", description="Encoder: efficientnet-b0..b8/l2 or "
                                       "resnet10..200 (imagenet weights: efficientnet, 2D, 3 channels).")
    decoder_channels: tuple[PositiveInt, PositiveInt, PositiveInt, PositiveInt, PositiveInt] = Field(
        (256, 128, 64, 32, 16), description="Features of the five decoder levels.")
    norm: Literal["batch", "instance"] = Field("batch", description="Decoder normalisation layer.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Decoder dropout probability.")

    @model_validator(mode="after")
    def _imagenet(self) -> FlexibleUNetConfig:
        if self.pretrained == "imagenet" and not (self.backbone.startswith("efficientnet")
                                                 and self.spatial_dims == 2):
            raise ValueError(f"pretrained: 'imagenet' weights exist for 2D efficientnet backbones only, not "
                             f"{self.backbone} in {self.spatial_dims}D; use a local state dict or null")
        return self


class DeepLabV3Config(NetworkBase):
    """DeepLabV3 (``model.name: deeplabv3``, 2D): a dilated ResNet or MobileNetV3-Large, ASPP and auxiliary heads.

    Sizes: multiples of the output stride.
    """

    dims_allowed: ClassVar[tuple[int, ...]] = (2,)
    imagenet: ClassVar[bool] = True
    has_encoder: ClassVar[bool] = True

    name: Literal["deeplabv3"] = Field(description="Network name.")
    backbone: Literal["resnet50", "resnet101", "mobilenet_v3_large"] = Field(
        "resnet50", description="Backbone: ResNet-50/101, or MobileNetV3-Large (about 3 M weights against 24 M).")
    output_stride: Literal[8, 16] = Field(16, description="Down-sampling of the backbone (8: dilate the stage "
                                          "before the last too).")
    backbone_width: PositiveInt | None = Field(
        None, description="Features of the backbone's first level; default and what imagenet needs: 64 (ResNet), "
        "16 (MobileNetV3, whose widths scale by backbone_width / 16, rounded to multiples of 8).")
    aspp_channels: PositiveInt = Field(256, description="Features of the ASPP head.")
    aux_head: bool = Field(True, description="Auxiliary head (on ResNet's layer3, on MobileNetV3's first "
                           "output-stride-8 block), weighted 0.5 against the main output in the loss (training only).")

    @model_validator(mode="after")
    def _imagenet(self) -> DeepLabV3Config:
        standard = self.standard_width
        if self.pretrained == "imagenet" and self.backbone_width not in (None, standard):
            raise ValueError(f"pretrained: 'imagenet' needs backbone_width {standard} ({self.backbone}'s), got "
                             f"{self.backbone_width}")
        return self

    @property
    def standard_width(self) -> int:
        """The backbone's published first-level width (64 for ResNet, 16 for MobileNetV3)."""
        return 16 if self.backbone == "mobilenet_v3_large" else 64

    @property
    def divisor(self) -> int:
        """The output stride."""
        return self.output_stride


#: Any network config, chosen by ``name``.
NetworkConfig = Annotated[
    ModelConfig | AttentionUNetConfig | BasicUNetPlusPlusConfig | SegResNetConfig | DynUNetConfig
    | SwinUNETRConfig | FlexibleUNetConfig | DeepLabV3Config,
    Field(discriminator="name"),
]

#: Config class of each network name.
NETWORK_CONFIGS: dict[str, type[NetworkBase]] = {
    "unet": ModelConfig, "attention_unet": AttentionUNetConfig, "basic_unetplusplus": BasicUNetPlusPlusConfig,
    "segresnet": SegResNetConfig, "dynunet": DynUNetConfig, "swin_unetr": SwinUNETRConfig,
    "flexible_unet": FlexibleUNetConfig, "deeplabv3": DeepLabV3Config,
}


def default_network_name(raw: Any) -> Any:
    """A ``model`` section without ``name`` is a UNet (configs and checkpoints from before the union)."""
    if isinstance(raw, dict) and "name" not in raw:
        return {"name": "unet", **raw}
    return raw


def size_problem(key: str, size: tuple[int, ...], divisor: int, above: bool, *, multiple: bool = True) -> str | None:
    """Why ``size`` does not fit a network with this divisor, with the nearest valid sizes; None when it fits.

    Args:
        key: The dotted key named in the message.
        size: The sizes, one per spatial dim.
        divisor: The network's total down-sampling.
        above: Sizes must also exceed the divisor (one voxel at the deepest level is refused).
        multiple: Sizes must be multiples of the divisor (training sizes; the sliding window rounds a window
            size up itself).

    Example:
        >>> problem = size_problem("data.image_size", (100, 100), 16, False)
        >>> problem.startswith("data.image_size: [100, 100] must be multiples of 16"), problem.split("; ")[1]
        (True, 'nearest valid: [96, 96] or [112, 112]')
        >>> size_problem("data.image_size", (96, 64), 16, False) is None
        True
    """
    low = [max(divisor * (2 if above else 1), n // divisor * divisor) for n in size]
    high = [max(divisor * (2 if above else 1), -(-n // divisor) * divisor) for n in size]
    if multiple and any(n % divisor for n in size):
        options = f"{low} or {high}" if low != high else f"{high}"
        return (f"{key}: {list(size)} must be multiples of {divisor} (the network down-samples {divisor}x); "
                f"nearest valid: {options}")
    if above and any(n <= divisor for n in size):
        return (f"{key}: {list(size)} leaves one voxel per channel after the network's {divisor}x down-sampling, "
                f"which its normalisation cannot normalise; use sizes above {divisor}, e.g. {high}")
    return None
