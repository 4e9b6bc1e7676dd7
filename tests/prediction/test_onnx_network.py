"""An ONNX Runtime session behind ``OnnxNetwork`` runs in medseg's sliding window like a torch network: the
engine reads in/out channels and the first width from its attributes, and takes the divisor explicitly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.prediction.onnx_network import OnnxNetwork, is_onnx_file
from medseg.sliding_window.plan import network_first_width, network_in_channels, network_out_channels
from medseg.sliding_window.predict import sliding_window_predict


class FakeSession:
    """What OnnxNetwork uses of an InferenceSession: one input, run() -> [logits]; here logits = [x + 1, -x]."""

    class _Input:
        name = "image"

    def __init__(self, divisor: int = 1) -> None:
        self.divisor, self.shapes = divisor, []

    def get_inputs(self):
        return [self._Input()]

    def run(self, outputs, feeds):
        x = feeds["image"]
        assert isinstance(x, np.ndarray) and x.dtype == np.float32
        assert all(n % self.divisor == 0 for n in x.shape[2:]), x.shape  # the engine honoured the divisor
        self.shapes.append(x.shape)
        return [np.concatenate([x + 1, -x], axis=1)]


def test_engine_reads_declared_attributes():
    net = OnnxNetwork(FakeSession(), in_channels=1, out_channels=2, first_width=16)
    assert (network_in_channels(net), network_out_channels(net), network_first_width(net)) == (1, 2, 16)
    assert not list(net.parameters())


def test_sliding_window_over_an_onnx_network_is_exact():
    session = FakeSession(divisor=4)
    net = OnnxNetwork(session, in_channels=1, out_channels=2, first_width=8)
    image = torch.randn(1, 1, 21, 18, 13)
    out = sliding_window_predict(net, image, 8, output="logits", divisor=4, precision="fp32", tiling="roi")
    torch.testing.assert_close(out, torch.cat([image + 1, -image], 1), rtol=0, atol=1e-6)
    assert session.shapes and all(s[2:] == (8, 8, 8) for s in session.shapes)


def test_channel_mismatch_is_caught_before_the_session_runs():
    net = OnnxNetwork(FakeSession(), in_channels=3, out_channels=2, first_width=8)
    with pytest.raises(ValueError, match="network expects 3 input channels but image has 1"):
        sliding_window_predict(net, torch.zeros(1, 1, 8, 8), 8)


def test_onnx_files_are_told_by_suffix():
    assert is_onnx_file("a/model.ONNX") and not is_onnx_file("a/model.onnx.pt") and not is_onnx_file("run")
