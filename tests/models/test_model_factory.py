"""Model registry: MONAI UNet in 2D and 3D from config."""

from __future__ import annotations

import pytest
import torch

from medseg.config import ModelConfig
from medseg.errors import ConfigError
from medseg.models import MODEL_BUILDERS, build_model


@pytest.mark.parametrize(("dims", "shape"), [(2, (2, 3, 32, 48)), (3, (1, 1, 16, 16, 24))])
def test_unet_output_shape(dims, shape):
    cfg = ModelConfig(spatial_dims=dims, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)
    net = build_model(cfg, in_channels=shape[1], out_channels=5)
    with torch.no_grad():
        out = net(torch.zeros(shape))
    assert out.shape == (shape[0], 5, *shape[2:])


def test_config_fields_reach_monai():
    cfg = ModelConfig(channels=(4, 8), strides=(2,), num_res_units=3, norm="instance", dropout=0.2)
    net = build_model(cfg, in_channels=1, out_channels=2)
    assert net.num_res_units == 3 and net.dropout == pytest.approx(0.2)
    assert tuple(net.channels) == (4, 8) and tuple(net.strides) == (2,)
    assert any(isinstance(m, torch.nn.InstanceNorm2d) for m in net.modules())


def test_channel_conflicts_and_missing_counts():
    with pytest.raises(ConfigError, match="model.in_channels is 1 but the data's channel count is 3"):
        build_model(ModelConfig(in_channels=1), in_channels=3, out_channels=2)
    with pytest.raises(ConfigError, match="model.out_channels is not set and the number of label classes is unknown"):
        build_model(ModelConfig(), in_channels=3)


def test_unknown_name_lists_registry(monkeypatch):
    cfg = ModelConfig.model_construct(name="resnet", spatial_dims=2)
    names = ["attention_unet", "basic_unetplusplus", "deeplabv3", "dynunet", "flexible_unet", "segresnet",
             "swin_unetr", "unet"]
    with pytest.raises(ConfigError, match=r"model.name: unknown 'resnet'; choose from \['attention_unet', "):
        build_model(cfg, in_channels=1, out_channels=2)
    assert sorted(MODEL_BUILDERS) == names


def test_divisor_is_product_of_strides():
    assert ModelConfig(channels=(4, 8, 16, 32), strides=(2, 2, 1)).divisor == 4
