"""Model registry: config name -> builder of a ``torch.nn.Module``."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from medseg.config.schema import ModelConfig
from medseg.errors import ConfigError


def _build_unet(cfg: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    from monai.networks.nets import UNet

    norm: str | tuple[str, dict[str, int]] = cfg.norm
    if cfg.norm == "group":
        norm = ("group", {"num_groups": min(8, cfg.channels[0])})
    return UNet(
        spatial_dims=cfg.spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=cfg.channels,
        strides=cfg.strides,
        num_res_units=cfg.num_res_units,
        norm=norm,
        dropout=cfg.dropout,
    )


MODEL_BUILDERS: dict[str, Callable[[ModelConfig, int, int], nn.Module]] = {"unet": _build_unet}


def build_model(cfg: ModelConfig, *, in_channels: int | None = None, out_channels: int | None = None) -> nn.Module:
    """Build the network a model config describes.

    Args:
        cfg: The ``model`` section.
        in_channels: Input channels when ``cfg.in_channels`` is not set (e.g. 3 for RGB, number of CT windows).
        out_channels: Classes incl. background when ``cfg.out_channels`` is not set.

    Returns:
        An untrained ``torch.nn.Module`` taking ``(B, C, *spatial)`` and returning logits ``(B, K, *spatial)``.

    Raises:
        ConfigError: Unknown model name, or channel counts missing or contradicting the data.

    Example:
        >>> from medseg.config import ModelConfig
        >>> net = build_model(ModelConfig(channels=(4, 8), strides=(2,)), in_channels=1, out_channels=2)
        >>> type(net).__name__
        'UNet'
    """
    if cfg.name not in MODEL_BUILDERS:
        raise ConfigError(f"model.name: unknown {cfg.name!r}; choose from {sorted(MODEL_BUILDERS)}")
    cin = _pick(cfg.in_channels, in_channels, "model.in_channels", "the data's channel count")
    cout = _pick(cfg.out_channels, out_channels, "model.out_channels", "the number of label classes")
    return MODEL_BUILDERS[cfg.name](cfg, cin, cout)


def _pick(configured: int | None, derived: int | None, key: str, what: str) -> int:
    if configured is not None and derived is not None and configured != derived:
        raise ConfigError(f"{key} is {configured} but {what} is {derived}; remove the key or make them agree")
    value = configured if configured is not None else derived
    if value is None:
        raise ConfigError(f"{key} is not set and {what} is unknown")
    return value
