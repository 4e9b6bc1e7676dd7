"""``model.pretrained`` (a local state dict, or imagenet through torch.hub) and ``model.freeze_encoder_epochs``.

Nothing downloads: imagenet tests replace ``torch.hub.load_state_dict_from_url`` with a local state dict named
as torchvision's ResNet-50 names its layers, or with the error an offline machine gets.
"""

from __future__ import annotations

import urllib.error

import pytest
import torch

from medseg.config import validate_config
from medseg.config.networks import DeepLabV3Config, FlexibleUNetConfig, SegResNetConfig
from medseg.data.synthetic.polyp import make_polyp_dataset
from medseg.errors import CheckpointError, ConfigError, MedsegError
from medseg.models.deeplab import RESNET_LAYERS, MobileNetV3Backbone, ResNetBackbone
from medseg.models.factory import build_model
from medseg.models.pretrained import load_pretrained
from medseg.training.loop import train


def _segresnet(pretrained=None, out=2, seed=0):
    cfg = SegResNetConfig(name="segresnet", init_filters=4, num_groups=2, blocks_down=(1, 1), blocks_up=(1,),
                          pretrained=None if pretrained is None else str(pretrained))
    torch.manual_seed(seed)
    return cfg, build_model(cfg, in_channels=1, out_channels=out)


def test_a_local_state_dict_is_loaded_exactly(tmp_path):
    _, source = _segresnet(seed=1)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    cfg, net = _segresnet(tmp_path / "w.pth", seed=2)
    report = load_pretrained(net, cfg)
    assert report is not None and (report.loaded, report.missing, report.unexpected) == (
        len(source.state_dict()), [], [])
    for key, value in source.state_dict().items():
        assert torch.equal(net.state_dict()[key], value), key


def test_missing_and_unexpected_keys_are_reported_and_the_rest_loaded(tmp_path):
    _, source = _segresnet(seed=1)
    state = dict(source.state_dict())
    dropped = "conv_final.2.conv.weight"
    del state[dropped]
    state["extra.weight"] = torch.zeros(3)
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pt")  # a training checkpoint's layout
    cfg, net = _segresnet(tmp_path / "ckpt.pt", seed=2)
    fresh = net.state_dict()[dropped].clone()
    report = load_pretrained(net, cfg)
    assert (report.missing, report.unexpected, report.loaded) == ([dropped], ["extra.weight"], len(state) - 1)
    assert torch.equal(net.state_dict()[dropped], fresh)  # kept its random initialisation
    assert torch.equal(net.state_dict()["convInit.conv.weight"], source.state_dict()["convInit.conv.weight"])


def test_shapes_that_do_not_fit_are_refused_naming_the_tensor(tmp_path):
    _, three_classes = _segresnet(out=3)
    torch.save(three_classes.state_dict(), tmp_path / "w.pth")
    cfg, net = _segresnet(tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match=r"w\.pth: 2 tensor\(s\) do not fit the network \(file vs network\): "
                                              r"conv_final\.2\.conv\.weight \[3, 4, 1, 1\] vs \[2, 4, 1, 1\]"):
        load_pretrained(net, cfg)


@pytest.mark.parametrize(("content", "error", "pattern"), [
    (None, ConfigError, r"^model\.pretrained: .*nope\.pth does not exist; give a state dict file"),
    (b"not a torch file", CheckpointError, r"^model\.pretrained: .*nope\.pth is not a readable weights file"),
    ({"epoch": 3}, CheckpointError, r"^model\.pretrained: .*nope\.pth holds no state dict"),
    ({"other.weight": torch.zeros(2)}, CheckpointError, r"shares no layer name with the network"),
])
def test_bad_weight_files_are_one_line_errors(tmp_path, content, error, pattern):
    path = tmp_path / "nope.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    cfg, net = _segresnet(path)
    with pytest.raises(error, match=pattern) as info:
        load_pretrained(net, cfg)
    assert "\n" not in str(info.value)


def _offline(*args, **kwargs):
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def test_imagenet_offline_is_one_line_naming_the_file_and_the_way_out(monkeypatch):
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _offline)
    cfg = DeepLabV3Config(name="deeplabv3", aspp_channels=8, pretrained="imagenet")
    net = build_model(cfg, in_channels=3, out_channels=2)
    with pytest.raises(MedsegError, match=r"^model\.pretrained: imagenet: could not fetch "
                                          r"https://download\.pytorch\.org/models/resnet50-0676ba61\.pth \(URLError: "
                                          r".*set model\.pretrained to a local \.pth$") as info:
        load_pretrained(net, cfg)
    assert "\n" not in str(info.value)
    flex = FlexibleUNetConfig(name="flexible_unet", backbone="efficientnet-b0", pretrained="imagenet")
    with pytest.raises(MedsegError, match=r"could not fetch https://github\.com/.*efficientnet-b0-355c32eb\.pth "):
        load_pretrained(build_model(flex, in_channels=3, out_channels=2), flex)


def test_imagenet_resnet_weights_load_into_the_backbone_and_fit_one_channel(monkeypatch):
    torch.manual_seed(3)
    published = dict(ResNetBackbone(RESNET_LAYERS["resnet50"], width=64).state_dict())
    published.update({"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)})
    asked = []

    def fake_hub(url, **kwargs):
        asked.append((url, kwargs.get("check_hash")))
        return published

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_hub)
    cfg = DeepLabV3Config(name="deeplabv3", aspp_channels=8, pretrained="imagenet")
    net = build_model(cfg, in_channels=1, out_channels=2)
    report = load_pretrained(net, cfg)
    assert asked == [("https://download.pytorch.org/models/resnet50-0676ba61.pth", True)]
    assert (report.missing, report.unexpected, report.loaded) == ([], [], len(published) - 2)
    backbone = net.backbone.state_dict()
    assert torch.equal(backbone["layer4.2.conv3.weight"], published["layer4.2.conv3.weight"])
    # one input channel: the RGB filters' mean, times 3 (a gray image gives what its RGB copy gave)
    assert torch.allclose(backbone["conv1.weight"], published["conv1.weight"].sum(1, keepdim=True), atol=1e-6)


def _published_mobilenet() -> dict[str, torch.Tensor]:
    """A stand-in for torchvision's mobilenet_v3_large ImageNet file: its keys and shapes (our backbone is named
    as torchvision's ``features``; the test of the architecture checks those names and the weight count against
    torchvision's), plus the classifier torchvision publishes with it, random values."""
    torch.manual_seed(4)
    published = {k: torch.randn_like(v.float()).to(v.dtype) if v.is_floating_point() else v
                 for k, v in MobileNetV3Backbone(3, width=16).state_dict().items()}
    published.update({"classifier.0.weight": torch.zeros(1280, 960), "classifier.0.bias": torch.zeros(1280),
                      "classifier.3.weight": torch.zeros(1000, 1280), "classifier.3.bias": torch.zeros(1000)})
    return published


def test_imagenet_mobilenet_v3_weights_load_by_key_into_the_backbone(monkeypatch):
    published = _published_mobilenet()
    asked = []

    def fake_hub(url, **kwargs):
        asked.append((url, kwargs.get("check_hash")))
        return published

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_hub)
    cfg = DeepLabV3Config(name="deeplabv3", backbone="mobilenet_v3_large", aspp_channels=8, pretrained="imagenet")
    net = build_model(cfg, in_channels=1, out_channels=2)
    report = load_pretrained(net, cfg)
    assert asked == [("https://download.pytorch.org/models/mobilenet_v3_large-8738ca79.pth", True)]
    assert (report.missing, report.unexpected, report.loaded) == ([], [], 308)  # all but the 4 classifier tensors
    backbone = net.backbone.state_dict()
    for key in ("features.16.0.weight", "features.13.block.2.fc2.bias", "features.15.block.3.1.running_var"):
        assert torch.equal(backbone[key], published[key]), key
    # one input channel: the stem's RGB filters summed (a gray image gives what its RGB copy gave)
    assert torch.allclose(backbone["features.0.0.weight"], published["features.0.0.weight"].sum(1, keepdim=True),
                          atol=1e-6)
    key = "features.4.block.0.0.weight"
    assert torch.equal(net.state_dict()[f"backbone.{key}"], published[key])


def test_imagenet_mobilenet_weights_that_do_not_fit_are_refused_naming_the_tensor(monkeypatch):
    """A file of another width (here the last layer of a reduced-tail MobileNetV3) is refused, not half-loaded."""
    published = _published_mobilenet()
    published["features.16.0.weight"] = torch.zeros(480, 80, 1, 1)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda url, **kwargs: published)
    cfg = DeepLabV3Config(name="deeplabv3", backbone="mobilenet_v3_large", aspp_channels=8, pretrained="imagenet")
    net = build_model(cfg, in_channels=3, out_channels=2)
    before = net.state_dict()["backbone.features.1.block.0.0.weight"].clone()
    with pytest.raises(CheckpointError, match=r"mobilenet_v3_large-8738ca79\.pth: 1 tensor\(s\) do not fit the "
                                              r"network \(file vs network\): features\.16\.0\.weight \[480, 80, 1, 1\] "
                                              r"vs \[960, 160, 1, 1\]$"):
        load_pretrained(net, cfg)
    assert torch.equal(net.state_dict()["backbone.features.1.block.0.0.weight"], before)


def test_imagenet_mobilenet_offline_names_its_file(monkeypatch):
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _offline)
    cfg = DeepLabV3Config(name="deeplabv3", backbone="mobilenet_v3_large", backbone_width=16, aspp_channels=8,
                          pretrained="imagenet")
    with pytest.raises(MedsegError, match=r"^model\.pretrained: imagenet: could not fetch https://download\.pytorch"
                                          r"\.org/models/mobilenet_v3_large-8738ca79\.pth \(URLError: .*local \.pth$"):
        load_pretrained(build_model(cfg, in_channels=3, out_channels=2), cfg)


def test_frozen_encoder_keeps_its_pretrained_weights_while_the_head_trains(tmp_path):
    data = make_polyp_dataset(tmp_path / "data", n=4, size=(32, 32), seed=1)
    torch.manual_seed(5)
    model = {"name": "deeplabv3", "backbone_width": 4, "aspp_channels": 8}
    source = build_model(DeepLabV3Config(**model), in_channels=3, out_channels=2)
    torch.save(source.state_dict(), tmp_path / "w.pth")

    def run(freeze, name):
        cfg = validate_config({
            "data": {"root": str(data), "image_size": [32, 32], "val_fraction": 0.0,
                     "labels": {"classes": {0: "background", 255: "polyp"}, "tolerance": 20}},
            "model": {**model, "pretrained": str(tmp_path / "w.pth"), "freeze_encoder_epochs": freeze},
            "train": {"max_epochs": 1, "batch_size": 2, "lr": 0.01, "device": "cpu", "preview_samples": 0},
        })
        result = train(cfg, run_dir=tmp_path / name, progress=False)
        return torch.load(result.last_checkpoint, weights_only=True)["state_dict"]

    frozen, free = run(1, "frozen"), run(0, "free")
    key, head = "backbone.layer2.0.conv2.weight", "classifier.4.weight"
    assert torch.equal(frozen[key], source.state_dict()[key])
    assert not torch.equal(free[key], source.state_dict()[key])
    assert not torch.equal(frozen[head], source.state_dict()[head])
