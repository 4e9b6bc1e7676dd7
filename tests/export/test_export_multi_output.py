"""Export of networks with several outputs: only the main output is exported, and it agrees with PyTorch.

DeepLabV3 returns a dict (``out``, and ``aux`` in training), trained here with its auxiliary head. The ONNX
graph has one output, the main logits, equal to PyTorch's within the export tolerance, and ``predict`` on the
ONNX file gives PyTorch's labels. (DynUNet and UNet++ return a tensor in eval mode, which is what is exported;
their lists exist in training only. PyTorch's ONNX exporter takes about a minute per network here, so one.)
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort  # the test extra installs it (CI runs these tests)
import pytest
import torch

from medseg.config import validate_config
from medseg.data.synthetic.polyp import make_polyp_dataset
from medseg.export import export_model
from medseg.models.outputs import main_output
from medseg.prediction.predictor import Predictor
from medseg.training.loop import train

MODELS = {"deeplabv3": {"name": "deeplabv3", "backbone_width": 4, "aspp_channels": 8}}


@pytest.fixture(scope="module")
def polyps(tmp_path_factory):
    return make_polyp_dataset(tmp_path_factory.mktemp("multi") / "data", n=4, size=(32, 32), seed=2)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_onnx_export_has_the_main_output_only_and_agrees_with_pytorch(polyps, tmp_path, name):
    cfg = validate_config({
        "data": {"root": str(polyps), "image_size": [32, 32], "val_fraction": 0.0,
                 "labels": {"classes": {0: "background", 255: "polyp"}, "tolerance": 20}},
        "model": MODELS[name],
        "train": {"max_epochs": 1, "batch_size": 2, "device": "cpu", "preview_samples": 0},
    })
    ckpt = train(cfg, run_dir=tmp_path / "run", progress=False).last_checkpoint
    report = export_model(ckpt, tmp_path / "m.onnx", format="onnx")
    assert report.max_abs_diff is not None and report.max_abs_diff < 1e-3
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits"]
    torch_model = Predictor.from_checkpoint(ckpt, device="cpu")
    x = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(0))  # another size than the check's
    (onnx_logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = main_output(torch_model.model(x))
    assert onnx_logits.shape == (1, 2, 48, 64)
    assert np.allclose(onnx_logits, expected.numpy(), atol=1e-4)
    image = sorted((polyps / "images").iterdir())[0]
    assert np.array_equal(Predictor.from_checkpoint(tmp_path / "m.onnx", device="cpu").predict(image),
                          torch_model.predict(image))
