"""Every architecture of ``model.name``: built from YAML, trained two steps, saved, reloaded, run through the
sliding window; multi-output networks (deep supervision, DeepLabV3's dict) in the loss and in ONNX export.

Networks are tiny (a few thousand weights) on small synthetic spine volumes, so that all of them train in
seconds; the 2D runs skip validation (the 3D runs validate, through the same sliding window). DynUNet's deep
supervision is trained in 3D here and checked in 2D by a unit test below. SwinUNETR and FlexibleUNet, whose
smallest 3D networks are large (a 64^3 patch; a 6 M-weight encoder), train once more in 3D at their smallest,
without validation, and predict one volume through the sliding window (``ARCHITECTURES_3D``). DeepLabV3 runs
with both backbone families, and MobileNetV3-Large's layers are checked against torchvision's.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from medseg.checkpoint import load_checkpoint, save_checkpoint
from medseg.config import load_config, validate_config
from medseg.config.schema import InferConfig
from medseg.data.synthetic.spine import make_spine_dataset
from medseg.errors import ConfigError
from medseg.models.outputs import main_output
from medseg.prediction.network import infer_prepared
from medseg.prediction.predictor import Predictor
from medseg.training.loop import train

CLASSES = [{"name": "background", "values": [0]}, {"name": "v26", "values": [26]}, {"name": "v27", "values": [27]}]

#: (name, dims, model keys, patch size, class of the built network): each network once, in 2D or 3D, to keep the
#: suite fast (the UNet also in 3D as the reference; it is trained in 2D and 3D by many other tests).
ARCHITECTURES = [
    ("attention_unet", 2, {"channels": [4, 8, 16], "strides": [2, 2]}, [32, 32], "AttentionUnet"),
    ("basic_unetplusplus", 2, {"features": [4, 4, 8, 8, 16, 4], "deep_supervision": True}, [32, 32],
     "UNetPlusPlus"),
    ("swin_unetr", 2, {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]}, [64, 64],
     "SwinUNETR"),
    ("flexible_unet", 2, {"backbone": "resnet10", "decoder_channels": [16, 8, 8, 4, 4]}, [32, 32], "FlexibleUNet"),
    ("deeplabv3", 2, {"backbone_width": 4, "aspp_channels": 8}, [32, 32], "DeepLabV3"),
    ("deeplabv3", 2, {"backbone": "mobilenet_v3_large", "backbone_width": 4, "aspp_channels": 8}, [32, 32],
     "DeepLabV3"),
    ("unet", 3, {"channels": [4, 8], "strides": [2], "num_res_units": 0}, [16, 16, 16], "UNet"),
    ("segresnet", 3, {"init_filters": 4, "num_groups": 2, "blocks_down": [1, 1, 1], "blocks_up": [1, 1]},
     [16, 16, 16], "SegResNet"),
    ("dynunet", 3, {"strides": [1, 2, 2], "filters": [4, 8, 8], "deep_supervision": True}, [16, 16, 16],
     "DynUNetHeads"),
]


@pytest.fixture(scope="module")
def spine(tmp_path_factory) -> dict[int, Path]:
    """Two small spine phantoms per dimension: about 32x32 axial slices, 3 of them at 16 mm (2D); 16^3 voxels at
    6 mm (3D)."""
    tmp = tmp_path_factory.mktemp("zoo")
    return {2: make_spine_dataset(tmp / "d2", n_cases=2, shape=(32, 32, 16), spacing=(3.0, 3.0, 3.0), n_vertebrae=2),
            3: make_spine_dataset(tmp / "d3", n_cases=2, shape=(32, 32, 32), spacing=(3.0, 3.0, 3.0),
                                  n_vertebrae=2)}


def _yaml(tmp_path: Path, root: Path, dims: int, name: str, model: dict, patch: list[int]) -> Path:
    raw = {
        "data": {"kind": "slices2d" if dims == 2 else "volumes3d", "root": str(root), "images_dir": "imagesTr",
                 "masks_dir": "labelsTr", "val_fraction": 0.0 if dims == 2 else 0.5,
                 "labels": {"classes": CLASSES, "unlisted": "background"},
                 "windows": ["bone"], "spacing_mm": [3.0, 3.0, 16.0] if dims == 2 else [6.0, 6.0, 6.0],
                 "patch_size": patch, "samples_per_volume": 2,
                 "augment": {"flip": False, "rotate_degrees": 0, "scale": 0, "probability": 0}},
        "model": {"name": name, "spatial_dims": dims, **model},
        "train": {"max_epochs": 1, "batch_size": 2, "steps_per_epoch": 2, "device": "cpu", "preview_samples": 0},
        "infer": {"precision": "fp32"},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(("name", "dims", "model", "patch", "cls"), ARCHITECTURES,
                         ids=[f"{a[0]}-{a[2].get('backbone', '')}-{a[1]}d".replace("--", "-") for a in ARCHITECTURES])
def test_architecture_trains_saves_reloads_and_predicts(tmp_path, spine, name, dims, model, patch, cls):
    cfg = load_config(_yaml(tmp_path, spine[dims], dims, name, model, patch))
    result = train(cfg, run_dir=tmp_path / "run", progress=False)
    ckpt = load_checkpoint(result.last_checkpoint)
    assert ckpt["config"]["model"]["name"] == name
    predictor = Predictor.from_checkpoint(result.last_checkpoint, device="cpu")
    assert type(predictor.model).__name__ == cls
    for key, value in predictor.model.state_dict().items():  # the reloaded network is the trained one
        assert torch.equal(value, ckpt["state_dict"][key]), key
    # one window the size of the input: the sliding window computes the main output of one forward pass
    x = torch.rand(1, *patch) if dims == 3 else torch.rand(1, *patch, 1)
    pre = dict(predictor.preprocessing)
    infer = InferConfig(overlap=0.0, precision="fp32", roi_size=tuple(patch))
    probs = infer_prepared(predictor.model, x, pre, infer, torch.device("cpu"), divisor=predictor.divisor)
    with torch.no_grad():
        direct = torch.softmax(main_output(predictor.model(x[None] if dims == 3 else x[None, ..., 0])), 1)[0]
    assert torch.allclose(probs if dims == 3 else probs[..., 0], direct, atol=1e-4)
    # a whole case through the sliding window, back on the input's grid
    image = sorted((spine[dims] / "imagesTr").glob("*.nii.gz"))[0]
    labels = predictor.predict(image)
    assert labels.array.shape == nib.load(str(image)).shape
    assert set(np.unique(labels.array)) <= {0, 26, 27}


#: The two networks of the zoo that are slow in 3D, each once in 3D at its smallest: (name, model keys, patch,
#: batch size, class). SwinUNETR's instance norm needs more than one voxel after its 32x down-sampling, so 64^3
#: is its smallest patch; window_size 4 (not 7), one transformer block and one head per stage and one sample a
#: step keep it as fast as it goes. FlexibleUNet's 3D encoders are MONAI's 3D ResNets and EfficientNets; the
#: smallest is efficientnet-b0 (6 M weights in 3D; resnet10 has 15 M, a 180 MB last.pt with Adam's state). Its
#: batch norm needs two samples a step when the deepest level is one voxel.
ARCHITECTURES_3D = [
    pytest.param("swin_unetr", {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1],
                                "window_size": 4}, [64, 64, 64], 1, "SwinUNETR", id="swin_unetr-3d",
                 marks=pytest.mark.slow),
    pytest.param("flexible_unet", {"backbone": "efficientnet-b0", "decoder_channels": [16, 8, 8, 4, 4]},
                 [32, 32, 32], 2, "FlexibleUNet", id="flexible_unet-3d"),
]


@pytest.mark.parametrize(("name", "model", "patch", "batch", "cls"), ARCHITECTURES_3D)
def test_slow_3d_architecture_trains_saves_reloads_and_predicts_a_volume(tmp_path, spine, name, model, patch, batch,
                                                                         cls):
    """Two steps, no validation (the sliding window is run by the prediction below instead)."""
    path = _yaml(tmp_path, spine[3], 3, name, model, patch)
    raw = yaml.safe_load(path.read_text())
    raw["data"]["val_fraction"], raw["train"]["batch_size"] = 0.0, batch
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    assert (cfg.model.spatial_dims, cfg.model.divisor, cfg.data.kind) == (3, 32, "volumes3d")
    result = train(cfg, run_dir=tmp_path / "run", progress=False)
    ckpt = load_checkpoint(result.last_checkpoint)
    assert ckpt["config"]["model"]["spatial_dims"] == 3 and ckpt["config"]["model"]["name"] == name
    predictor = Predictor.from_checkpoint(result.last_checkpoint, device="cpu")
    assert type(predictor.model).__name__ == cls and predictor.model.divisor == 32
    for key, value in predictor.model.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"][key]), key
    # the case (about 16^3 voxels at 6 mm) is padded up to one window of the patch size, predicted, cropped back
    # and resampled to the input's grid
    image = sorted((spine[3] / "imagesTr").glob("*.nii.gz"))[0]
    labels = predictor.predict(image)
    assert labels.array.shape == nib.load(str(image)).shape
    assert set(np.unique(labels.array)) <= {0, 26, 27}


def test_deep_supervision_heads_are_weighted_in_the_loss_as_nnunet_does():
    from medseg.config.networks import DynUNetConfig
    from medseg.models.factory import build_model
    from medseg.models.outputs import weighted_loss

    cfg = DynUNetConfig(name="dynunet", strides=(1, 2, 2, 2), filters=(4, 4, 8, 8), deep_supervision=True,
                        deep_supr_num=2)
    net = build_model(cfg, in_channels=1, out_channels=2).train()
    x, label = torch.rand(2, 1, 32, 32), torch.randint(0, 2, (2, 1, 32, 32))
    heads = net(x)
    assert isinstance(heads, list) and len(heads) == 3 and all(h.shape == (2, 2, 32, 32) for h in heads)
    per_head = [torch.nn.functional.cross_entropy(h, label[:, 0]) for h in heads]
    loss = weighted_loss(lambda p, t: torch.nn.functional.cross_entropy(p, t[:, 0]), heads, label)
    assert torch.allclose(loss, (4 * per_head[0] + 2 * per_head[1] + per_head[2]) / 7)  # 1, 1/2, 1/4 normalised
    assert isinstance(net.eval()(x), torch.Tensor)  # inference: the main output alone


def test_deeplab_aux_head_is_used_in_training_only():
    from medseg.models.deeplab import DeepLabV3

    net = DeepLabV3(3, 2, width=4, aspp_channels=8)
    out = net.train()(torch.rand(2, 3, 32, 32))
    assert sorted(out) == ["aux", "out"] and out["aux"].shape == out["out"].shape == (2, 2, 32, 32)
    assert sorted(net.eval()(torch.rand(1, 3, 32, 32))) == ["out"]
    assert sorted(DeepLabV3(3, 2, width=4, aspp_channels=8, aux_head=False).train()(torch.rand(2, 3, 32, 32))) == [
        "out"]


def test_deeplab_backbone_names_match_torchvision_resnet50():
    from medseg.models.deeplab import RESNET_LAYERS, ResNetBackbone

    state = ResNetBackbone(RESNET_LAYERS["resnet50"], width=64).state_dict()
    # torchvision's resnet50 has 320 tensors; 2 of them (fc.weight, fc.bias) are the classifier DeepLab drops
    assert len(state) == 318
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    assert state["layer3.5.conv2.weight"].shape == (256, 256, 3, 3)
    assert state["layer4.0.downsample.0.weight"].shape == (2048, 1024, 1, 1)
    assert state["layer4.2.bn3.running_var"].shape == (2048,)


def test_mobilenet_v3_large_backbone_is_torchvisions_layer_for_layer():
    """Names, shapes and weight count of torchvision's mobilenet_v3_large features (its published model has
    5,483,032 weights; its classifier, Linear 960->1280 and 1280->1000, has 2,511,080 of them)."""
    from medseg.models.deeplab import MobileNetV3Backbone

    net = MobileNetV3Backbone(3, width=16)
    state = net.state_dict()
    # stem 6 tensors, block 1 (no expansion) 12, blocks 2..15 18 each, 8 squeeze-excitations 4 each, last conv 6
    assert len(state) == 6 + 12 + 14 * 18 + 8 * 4 + 6 == 308
    assert sum(p.numel() for p in net.parameters()) == 5_483_032 - (960 * 1280 + 1280 + 1280 * 1000 + 1000)
    assert state["features.0.0.weight"].shape == (16, 3, 3, 3)
    assert state["features.1.block.0.0.weight"].shape == (16, 1, 3, 3)  # depthwise first: nothing to expand
    assert state["features.4.block.2.fc1.weight"].shape == (24, 72, 1, 1)  # squeeze 72 // 4 = 18, rounded to 24
    assert state["features.13.block.1.0.weight"].shape == (672, 1, 5, 5)
    assert state["features.16.0.weight"].shape == (960, 160, 1, 1)
    assert state["features.16.1.running_var"].shape == (960,)
    # output stride 16: the last stage is dilated instead of strided (torchvision's segmentation backbone)
    dw = {i: net.features[i].block[1][0] for i in (2, 7, 13, 14)}  # expansion, then depthwise
    assert [(dw[i].stride, dw[i].dilation) for i in (2, 7, 13, 14)] == [
        ((2, 2), (1, 1)), ((2, 2), (1, 1)), ((1, 1), (2, 2)), ((1, 1), (2, 2))]
    eight = MobileNetV3Backbone(3, width=16, output_stride=8).features
    assert [(eight[i].block[1][0].stride, eight[i].block[1][0].dilation) for i in (7, 8, 13)] == [
        ((1, 1), (2, 2)), ((1, 1), (2, 2)), ((1, 1), (4, 4))]
    aux, out = MobileNetV3Backbone(3, width=16, output_stride=8)(torch.zeros(1, 3, 64, 64))
    assert (tuple(aux.shape), tuple(out.shape)) == ((1, 40, 8, 8), (1, 960, 8, 8))


def test_mobilenet_blocks_compute_what_the_paper_says():
    """One block by hand: expansion, depthwise, squeeze-excitation (hard sigmoid gates) and projection, plus the
    residual; hard-swish is x * relu6(x + 3) / 6."""
    from medseg.models.deeplab import InvertedResidual

    torch.manual_seed(0)
    block = InvertedResidual(8, 3, 16, 8, se=True, hardswish=True, stride=1, dilation=1).eval()
    x = torch.randn(2, 8, 5, 5)

    def bn(layer, t):
        return torch.nn.functional.batch_norm(t, layer.running_mean, layer.running_var, layer.weight, layer.bias,
                                              eps=0.001)

    def hswish(t):
        return t * torch.clamp(t + 3, 0, 6) / 6

    expand, depthwise, se, project = block.block
    h = hswish(bn(expand[1], torch.nn.functional.conv2d(x, expand[0].weight)))
    h = hswish(bn(depthwise[1], torch.nn.functional.conv2d(h, depthwise[0].weight, padding=1, groups=16)))
    squeeze = torch.relu(torch.nn.functional.conv2d(h.mean((2, 3), keepdim=True), se.fc1.weight, se.fc1.bias))
    h = h * torch.clamp(torch.nn.functional.conv2d(squeeze, se.fc2.weight, se.fc2.bias) + 3, 0, 6) / 6
    expected = bn(project[1], torch.nn.functional.conv2d(h, project[0].weight)) + x
    with torch.no_grad():
        assert torch.allclose(block(x), expected, atol=1e-5)
    assert se.fc1.out_channels == 8  # 16 // 4 = 4, rounded up to the multiple of 8
    assert not InvertedResidual(8, 3, 16, 16, se=False, hardswish=False, stride=1, dilation=1).residual


# ------------------------------------------------------------------------------------------ config doors
def _raw(tmp_path, model, **data):
    return {"data": {"root": str(tmp_path), "image_size": [64, 64], **data}, "model": model}


@pytest.mark.parametrize(("model", "pattern"), [
    ({"name": "unet", "init_filters": 8}, r"model\.init_filters: unknown key for model\.name 'unet' \(its keys: "),
    ({"name": "segresnet", "channels": [4, 8]}, r"model\.channels: unknown key for model\.name 'segresnet'"),
    ({"name": "deeplabv3", "strides": [2]}, r"model\.strides: unknown key for model\.name 'deeplabv3'"),
    ({"name": "resnet"}, r"model\.name: unknown network; choose from \['attention_unet', .*\(found: 'resnet'\)"),
    ({"name": "unet", "pretrained": "imagenet"}, r"model\.pretrained: 'imagenet' is not offered for this network"),
    ({"name": "unet", "freeze_encoder_epochs": 2}, r"model\.freeze_encoder_epochs: this network has no separate"),
    ({"name": "swin_unetr", "feature_size": 16}, r"model\.feature_size: .*multiple of 12"),
    ({"name": "flexible_unet", "backbone": "resnet18", "pretrained": "imagenet"},
     r"model\.pretrained: 'imagenet' weights exist for 2D efficientnet backbones only"),
    ({"name": "deeplabv3", "spatial_dims": 3}, r"model\.spatial_dims: 3 is not offered by this network"),
    ({"name": "deeplabv3", "backbone": "mobilenet_v3_large", "backbone_width": 64, "pretrained": "imagenet"},
     r"model\.pretrained: 'imagenet' needs backbone_width 16 \(mobilenet_v3_large's\), got 64"),
    ({"name": "deeplabv3", "backbone": "mobilenet_v3_small"}, r"model\.backbone: .*mobilenet_v3_large"),
])
def test_a_key_that_does_not_fit_the_network_is_a_config_error_naming_it(tmp_path, model, pattern):
    with pytest.raises(ConfigError, match=pattern):
        validate_config(_raw(tmp_path, model), source="t")


@pytest.mark.parametrize(("model", "data", "pattern"), [
    ({}, {"image_size": [100, 100]},
     r"data\.image_size: \[100, 100\] must be multiples of 16 .*nearest valid: \[96, 96\] or \[112, 112\]"),
    ({"name": "swin_unetr"}, {"image_size": [100, 96]},
     r"data\.image_size: \[100, 96\] must be multiples of 32 .*nearest valid: \[96, 96\] or \[128, 96\]"),
    ({"name": "swin_unetr"}, {"image_size": [32, 32]}, r"data\.image_size: \[32, 32\] leaves one voxel .*\[64, 64\]"),
    ({"name": "swin_unetr", "spatial_dims": 3}, {"kind": "volumes3d", "patch_size": [96, 80, 64]},
     r"data\.patch_size: \[96, 80, 64\] must be multiples of 32 .*nearest valid: \[96, 64, 64\] or \[96, 96, 64\]"),
    ({"name": "swin_unetr", "spatial_dims": 3}, {"kind": "volumes3d", "patch_size": [64, 32, 64]},
     r"data\.patch_size: \[64, 32, 64\] leaves one voxel .*after the network's 32x down-sampling.*\[64, 64, 64\]"),
    ({"name": "flexible_unet", "spatial_dims": 3}, {"kind": "volumes3d", "patch_size": [48, 32, 32]},
     r"data\.patch_size: \[48, 32, 32\] must be multiples of 32 .*nearest valid: \[32, 32, 32\] or \[64, 32, 32\]"),
    ({"name": "deeplabv3", "backbone": "mobilenet_v3_large"}, {"image_size": [40, 64]},
     r"data\.image_size: \[40, 64\] must be multiples of 16 .*nearest valid: \[32, 64\] or \[48, 64\]"),
    ({"name": "deeplabv3", "output_stride": 8}, {"image_size": [60, 64]},
     r"data\.image_size: \[60, 64\] must be multiples of 8 .*nearest valid: \[56, 64\] or \[64, 64\]"),
    ({"name": "dynunet", "spatial_dims": 3, "strides": [1, 2, 2]}, {"kind": "volumes3d", "patch_size": [30, 32, 32]},
     r"data\.patch_size: \[30, 32, 32\] must be multiples of 4 .*\[28, 32, 32\] or \[32, 32, 32\]"),
    ({"name": "deeplabv3", "spatial_dims": 2}, {"kind": "volumes3d"}, r"model\.name: 'deeplabv3' is 2D only"),
])
def test_sizes_the_network_cannot_take_are_refused_at_load_with_the_nearest_valid(tmp_path, model, data, pattern):
    with pytest.raises(ConfigError, match=pattern):
        validate_config(_raw(tmp_path, model, **data), source="t")


def test_roi_size_is_checked_against_the_network_and_may_be_rounded_up(tmp_path):
    """A roi the sliding window rounds up to the divisor is accepted; one leaving a voxel at the bottom is not."""
    def roi(value):
        return {**_raw(tmp_path, {"name": "segresnet", "spatial_dims": 3}, kind="volumes3d",
                       patch_size=[32, 32, 32]), "infer": {"roi_size": value}}

    with pytest.raises(ConfigError, match=r"infer\.roi_size: \[8, 36, 32\] leaves one voxel .*after the network's "
                                          r"8x down-sampling.*e\.g\. \[16, 40, 32\]"):
        validate_config(roi([8, 36, 32]), source="t")
    assert validate_config(roi([40, 36, 32]), source="t").infer.roi_size == (40, 36, 32)


def test_the_size_error_names_the_yaml_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"data:\n  root: {tmp_path}\n  image_size: [100, 100]\n")
    with pytest.raises(ConfigError, match=r"data\.image_size \(line 3\): \[100, 100\] must be multiples of 16"):
        load_config(path)


def test_the_shipped_deeplabv3_config_loads():
    cfg = load_config(Path(__file__).parents[2] / "configs" / "kvasir-deeplabv3.yaml")
    assert (cfg.model.name, cfg.model.pretrained, cfg.model.freeze_encoder_epochs) == ("deeplabv3", "imagenet", 5)


def test_a_checkpoint_saved_before_the_union_still_loads(ckpt2d, tmp_path):
    """Configs stored before model.name selected a network had no pretrained/freeze keys (and may lack name)."""
    path, images = ckpt2d
    ckpt = load_checkpoint(path)
    old = {k: v for k, v in ckpt.items() if k != "path"}
    old["config"] = {**ckpt["config"], "model": {k: v for k, v in ckpt["config"]["model"].items()
                                                 if k not in ("name", "pretrained", "freeze_encoder_epochs")}}
    old_path = save_checkpoint(old, tmp_path / "old.pt")
    image = sorted(images.iterdir())[0]
    before = Predictor.from_checkpoint(old_path, device="cpu")
    assert before.config.model.name == "unet"
    assert np.array_equal(before.predict(image), Predictor.from_checkpoint(path, device="cpu").predict(image))
