"""Model registry: ``model.name`` -> builder of a ``torch.nn.Module``.

Every network built here returns its logits ``(B, K, *spatial)`` in eval mode, possibly inside a dict (DeepLabV3:
``{"out": ...}``); in training mode deep supervision and auxiliary heads come too (a list, main output first,
or a dict with ``"aux"``). :mod:`medseg.models.outputs` reads either. Each network carries ``in_channels``,
``out_channels`` and (except UNet, whose strides say it) ``divisor``, which the sliding window reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from medseg.config.networks import (
    AttentionUNetConfig,
    BasicUNetPlusPlusConfig,
    DeepLabV3Config,
    DynUNetConfig,
    FlexibleUNetConfig,
    ModelConfig,
    NetworkBase,
    SegResNetConfig,
    SwinUNETRConfig,
)
from medseg.errors import ConfigError

__all__ = ["ENCODER_MODULES", "MODEL_BUILDERS", "build_model", "encoder_parameters"]

#: Child modules that make up each network's encoder (what ``model.freeze_encoder_epochs`` freezes).
ENCODER_MODULES: dict[str, tuple[str, ...]] = {
    "deeplabv3": ("backbone",),
    "flexible_unet": ("encoder",),
    "swin_unetr": ("swinViT", "encoder1", "encoder2", "encoder3", "encoder4", "encoder10"),
    "segresnet": ("convInit", "down_layers"),
    "dynunet": ("input_block", "downsamples", "bottleneck"),
}


def _norm(name: str, groups: int) -> str | tuple[str, dict[str, Any]]:
    return ("group", {"num_groups": groups}) if name == "group" else name


def _build_unet(cfg: Any, in_channels: int, out_channels: int) -> nn.Module:
    from monai.networks.nets import UNet

    assert isinstance(cfg, ModelConfig)
    return UNet(spatial_dims=cfg.spatial_dims, in_channels=in_channels, out_channels=out_channels,
                channels=cfg.channels, strides=cfg.strides, num_res_units=cfg.num_res_units,
                norm=_norm(cfg.norm, min(8, cfg.channels[0])), dropout=cfg.dropout)


def _build_attention_unet(cfg: Any, in_channels: int, out_channels: int) -> nn.Module:
    from monai.networks.nets import AttentionUnet

    assert isinstance(cfg, AttentionUNetConfig)
    return AttentionUnet(spatial_dims=cfg.spatial_dims, in_channels=in_channels, out_channels=out_channels,
                         channels=cfg.channels, strides=cfg.strides, dropout=cfg.dropout)


def _build_unetplusplus(cfg: Any, in_channels: int, out_channels: int) -> nn.Module:
    from medseg.models.heads import UNetPlusPlus

    assert isinstance(cfg, BasicUNetPlusPlusConfig)
    norm = ("instance", {"affine": True}) if cfg.norm == "instance" else "batch"
    return UNetPlusPlus(spatial_dims=cfg.spatial_dims, in_channels=in_channels, out_channels=out_channels,
                        features=cfg.features, deep_supervision=cfg.deep_supervision, norm=norm,
                        dropout=cfg.dropout, upsample=cfg.upsample)


def _build_segresnet(cfg: Any, in_channels: int, out_channels: int) -> nn.Module:
    from monai.networks.nets import SegResNet

    assert isinstance(cfg, SegResNetConfig)
    return SegResNet(spatial_dims=cfg.spatial_dims, init_filters=cfg.init_filters, in_channels=in_channels,
                     out_channels=out_channels, dropout_prob=cfg.dropout or None,
                     norm=_norm(cfg.norm, cfg.num_groups), blocks_down=cfg.blocks_down, blocks_up=cfg.blocks_up)


def _build_dynunet(cfg: Any, in_channels: int, out_channels: int) -> nn.Module:
    from medseg.models.heads import DynUNetHeads

    assert isinstance(cfg, DynUNetConfig)
    top = 320 if cfg.spatial_dims == 3 else 512
    filters = cfg.filters or tuple(min(32 * 2 ** i, top) for i in range(len(cfg.strides)))
    return DynUNetHeads(spatial_dims=cfg.spatial_dims, in_channels=in_channels, out_channels=out_channels,
                        kernel_size=[3] * len(cfg.strides), strides=cfg.strides,
                        upsample_kernel_size=cfg.strides[1:], filters=filters, dropout=cfg.dropout or None,
                        norm_name=(cfg.norm, {"affine": True}), deep_supervision=cfg.deep_supervision,
                        deep_supr_num=cfg.deep_supr_num, res_block=cfg.res_block)


def _build_swin_unetr(cfg: Any, in_channels: int, out_channels: int) -> nn.Module:
    from monai.networks.nets import SwinUNETR

    assert isinstance(cfg, SwinUNETRConfig)
    return SwinUNETR(in_channels=in_channels, out_channels=out_channels, feature_size=cfg.feature_size,
                     depths=cfg.depths, num_heads=cfg.num_heads, window_size=cfg.window_size,
                     drop_rate=cfg.dropout, spatial_dims=cfg.spatial_dims, use_v2=cfg.use_v2)


def _build_flexible_unet(cfg: Any, in_channels: int, out_channels: int) -> nn.Module:
    from monai.networks.nets import FlexibleUNet

    assert isinstance(cfg, FlexibleUNetConfig)
    return FlexibleUNet(in_channels=in_channels, out_channels=out_channels, backbone=cfg.backbone,
                        pretrained=False, decoder_channels=cfg.decoder_channels, spatial_dims=cfg.spatial_dims,
                        norm=cfg.norm, dropout=cfg.dropout)


def _build_deeplabv3(cfg: Any, in_channels: int, out_channels: int) -> nn.Module:
    from medseg.models.deeplab import DeepLabV3

    assert isinstance(cfg, DeepLabV3Config)
    return DeepLabV3(in_channels, out_channels, backbone=cfg.backbone, output_stride=cfg.output_stride,
                     width=cfg.backbone_width or cfg.standard_width,
                     aspp_channels=cfg.aspp_channels, aux_head=cfg.aux_head)


MODEL_BUILDERS: dict[str, Callable[[Any, int, int], nn.Module]] = {
    "unet": _build_unet,
    "attention_unet": _build_attention_unet,
    "basic_unetplusplus": _build_unetplusplus,
    "segresnet": _build_segresnet,
    "dynunet": _build_dynunet,
    "swin_unetr": _build_swin_unetr,
    "flexible_unet": _build_flexible_unet,
    "deeplabv3": _build_deeplabv3,
}


def build_model(cfg: NetworkBase, *, in_channels: int | None = None, out_channels: int | None = None) -> nn.Module:
    """Build the network a model config describes (random weights; see :mod:`medseg.models.pretrained`).

    Args:
        cfg: The ``model`` section.
        in_channels: Input channels when ``cfg.in_channels`` is not set (e.g. 3 for RGB, number of CT windows).
        out_channels: Classes incl. background when ``cfg.out_channels`` is not set.

    Returns:
        An untrained ``torch.nn.Module`` taking ``(B, C, *spatial)`` and returning logits ``(B, K, *spatial)``
        (or a list/dict of them, see :mod:`medseg.models.outputs`).

    Raises:
        ConfigError: Unknown model name, or channel counts missing or contradicting the data.

    Example:
        >>> from medseg.config import ModelConfig
        >>> net = build_model(ModelConfig(channels=(4, 8), strides=(2,)), in_channels=1, out_channels=2)
        >>> type(net).__name__
        'UNet'
    """
    name = getattr(cfg, "name", None)
    if name not in MODEL_BUILDERS:
        raise ConfigError(f"model.name: unknown {name!r}; choose from {sorted(MODEL_BUILDERS)}")
    cin = _pick(cfg.in_channels, in_channels, "model.in_channels", "the data's channel count")
    cout = _pick(cfg.out_channels, out_channels, "model.out_channels", "the number of label classes")
    net = MODEL_BUILDERS[name](cfg, cin, cout)
    setattr(net, "in_channels", cin)  # noqa: B010 (plain ints beside the layers; the sliding window reads them)
    setattr(net, "out_channels", cout)  # noqa: B010
    if name != "unet":
        setattr(net, "divisor", cfg.divisor)  # noqa: B010
    return net


def encoder_parameters(network: nn.Module, name: str) -> list[nn.Parameter]:
    """The parameters of ``network``'s encoder (empty for networks without one, see :data:`ENCODER_MODULES`).

    Example:
        >>> from medseg.config.networks import SegResNetConfig
        >>> net = build_model(SegResNetConfig(name="segresnet", init_filters=8), in_channels=1, out_channels=2)
        >>> 0 < len(encoder_parameters(net, "segresnet")) < len(list(net.parameters()))
        True
    """
    params: dict[int, nn.Parameter] = {}
    for child in ENCODER_MODULES.get(name, ()):
        for p in network.get_submodule(child).parameters():
            params[id(p)] = p
    return list(params.values())


def _pick(configured: int | None, derived: int | None, key: str, what: str) -> int:
    if configured is not None and derived is not None and configured != derived:
        raise ConfigError(f"{key} is {configured} but {what} is {derived}; remove the key or make them agree")
    value = configured if configured is not None else derived
    if value is None:
        raise ConfigError(f"{key} is not set and {what} is unknown")
    return value
