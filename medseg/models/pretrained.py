"""Initial weights for training: ``model.pretrained: imagenet`` or the path of a local state dict.

``imagenet`` goes through the library's own weight mechanism and cache (``torch.hub``, ``~/.cache/torch/hub``):
torchvision's published ResNet and MobileNetV3-Large weights for DeepLabV3's backbone (its layers carry
torchvision's names, so they load by key; the classifier's keys are dropped), MONAI's EfficientNet weights for
FlexibleUNet. Without a network it fails in one line naming the file it tried and how to pass a local one.
A local file is loaded with ``weights_only=True``; missing and unexpected keys are reported, and a tensor whose
shape does not fit the network is refused.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medseg.config.networks import DeepLabV3Config, FlexibleUNetConfig, NetworkBase
from medseg.errors import CheckpointError, ConfigError, MedsegError

__all__ = ["IMAGENET_BACKBONE_URLS", "IMAGENET_RESNET_URLS", "PretrainedReport", "load_pretrained",
           "load_state_dict_file"]

log = logging.getLogger(__name__)

#: torchvision's ImageNet ResNet weights (IMAGENET1K_V1, the ones its DeepLabV3 backbones start from).
IMAGENET_RESNET_URLS = {
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
}

#: torchvision's ImageNet weights of every DeepLabV3 backbone: the ResNets above and MobileNetV3-Large
#: (IMAGENET1K_V1, the one torchvision's deeplabv3_mobilenet_v3_large starts from).
IMAGENET_BACKBONE_URLS = {
    **IMAGENET_RESNET_URLS,
    "mobilenet_v3_large": "https://download.pytorch.org/models/mobilenet_v3_large-8738ca79.pth",
}

#: Key prefix of each backbone's ImageNet classifier (not part of the segmentation network) and the key of its
#: first convolution (refitted to other channel counts).
_CLASSIFIER_PREFIX = {"resnet50": "fc.", "resnet101": "fc.", "mobilenet_v3_large": "classifier."}
_FIRST_CONV = {"resnet50": "conv1.weight", "resnet101": "conv1.weight", "mobilenet_v3_large": "features.0.0.weight"}


@dataclass
class PretrainedReport:
    """What loading initial weights did.

    Attributes:
        source: ``imagenet:URL`` or the file.
        loaded: Number of tensors copied into the network.
        missing: Network keys the weights did not have (they keep their random initialisation).
        unexpected: Keys of the weights the network does not have (ignored).
    """

    source: str
    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the training log."""
        return (f"pretrained weights from {self.source}: {self.loaded} tensors loaded, {len(self.missing)} "
                f"missing (kept random), {len(self.unexpected)} unexpected (ignored)")


def load_pretrained(network: nn.Module, cfg: NetworkBase) -> PretrainedReport | None:
    """Load ``cfg.pretrained`` into ``network`` (built from ``cfg``); None when the config asks for none.

    Raises:
        ConfigError: The file does not exist, or imagenet weights are asked of a network that has none.
        CheckpointError: The file is no state dict, shares no key with the network, or has a tensor whose shape
            does not fit (each named with both shapes).
        MedsegError: The imagenet weights could not be fetched (one line naming the URL and how to pass a
            local file).
    """
    if cfg.pretrained is None:
        return None
    if cfg.pretrained != "imagenet":
        state = load_state_dict_file(cfg.pretrained)
        report = _copy_into(network, state, cfg.pretrained)
    else:
        if isinstance(cfg, DeepLabV3Config):
            url = IMAGENET_BACKBONE_URLS[cfg.backbone]
            state = _fetch(url)
            state = {k: v for k, v in state.items() if not k.startswith(_CLASSIFIER_PREFIX[cfg.backbone])}
            backbone = network.get_submodule("backbone")
            report = _copy_into(backbone, _fit_first_conv(state, backbone, _FIRST_CONV[cfg.backbone]),
                                f"imagenet:{url}")
        elif isinstance(cfg, FlexibleUNetConfig):
            report = _load_efficientnet(network, cfg.backbone)
        else:
            raise ConfigError(f"model.pretrained: 'imagenet' is not offered for model.name "
                              f"{getattr(cfg, 'name', '')!r}")
    log.info(report.summary())
    return report


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.pth``/``.pt`` file (also the weights of a medseg checkpoint), read weights-only.

    Raises:
        ConfigError: The file does not exist.
        CheckpointError: Unreadable, or holds no mapping of names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model.pretrained: {path} does not exist; give a state dict file (.pth/.pt), "
                          "'imagenet' or null")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (torch raises many kinds for a damaged or unsafe file)
        raise CheckpointError(f"model.pretrained: {path} is not a readable weights file: {str(err)[:160]}") from None
    for key in ("state_dict", "model", "network"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"model.pretrained: {path} holds no state dict (a mapping of layer names to "
                              "tensors, or a dict with one under 'state_dict')")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def _copy_into(network: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> PretrainedReport:
    own = network.state_dict()
    shared = [k for k in state if k in own]
    if not shared:
        raise CheckpointError(f"model.pretrained: {source} shares no layer name with the network (its first keys: "
                              f"{list(state)[:3]}; the network's: {list(own)[:3]})")
    bad = [f"{k} {list(state[k].shape)} vs {list(own[k].shape)}" for k in shared if state[k].shape != own[k].shape]
    if bad:
        raise CheckpointError(f"model.pretrained: {source}: {len(bad)} tensor(s) do not fit the network (file vs "
                              f"network): {'; '.join(bad[:3])}")
    result = network.load_state_dict({k: state[k] for k in shared}, strict=False)
    return PretrainedReport(source, len(shared), list(result.missing_keys), [k for k in state if k not in own])


def _fit_first_conv(state: dict[str, torch.Tensor], network: nn.Module, key: str) -> dict[str, torch.Tensor]:
    """RGB weights of the first convolution for another channel count: their mean, spread over the channels."""
    want = network.state_dict()[key].shape
    have = state[key]
    if have.shape[1] == want[1]:
        return state
    mean = have.mean(dim=1, keepdim=True) * 3 / want[1]
    return {**state, key: mean.expand(-1, want[1], *have.shape[2:]).contiguous()}


def _fetch(url: str, *, check_hash: bool = True) -> dict[str, torch.Tensor]:
    """The state dict at ``url`` through torch.hub's cache (the file name's hash prefix checked if asked).

    torch.hub writes a ``Downloading: ...`` line to stderr before it tries; that line is kept out of the
    terminal and logged instead, so a failed fetch is the one error line below.
    """
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            state: dict[str, torch.Tensor] = torch.hub.load_state_dict_from_url(
                url, map_location="cpu", progress=False, check_hash=check_hash, weights_only=True)
        if said.getvalue().strip():
            log.info("%s", said.getvalue().strip())
    except Exception as err:  # noqa: BLE001 (URLError, OSError, hash mismatch: all mean "not fetched")
        raise MedsegError(f"model.pretrained: imagenet: could not fetch {url} ({type(err).__name__}: "
                          f"{str(err)[:100]}); download it where there is a network and set model.pretrained "
                          "to a local .pth") from None
    return state


def _load_efficientnet(network: nn.Module, backbone: str) -> PretrainedReport:
    """MONAI's ImageNet EfficientNet weights into FlexibleUNet's encoder (MONAI maps their names)."""
    from monai.networks.nets import FlexibleUNet
    from monai.networks.nets.efficientnet import url_map

    url = str(url_map.get(backbone, backbone))
    try:
        _fetch(url, check_hash=False)  # into the torch.hub cache, so that MONAI reads it from there
        reference: Any = FlexibleUNet(in_channels=3, out_channels=2, backbone=backbone, pretrained=True)
    except MedsegError:
        raise
    except Exception as err:  # noqa: BLE001
        raise MedsegError(f"model.pretrained: imagenet: MONAI could not load {url} ({type(err).__name__}: "
                          f"{str(err)[:100]}); set model.pretrained to a local .pth") from None
    encoder = network.get_submodule("encoder")
    state = dict(reference.encoder.state_dict())
    first = next(k for k, v in state.items() if v.ndim == 4)
    return _copy_into(encoder, _fit_first_conv(state, encoder, first), f"imagenet:{url}")
