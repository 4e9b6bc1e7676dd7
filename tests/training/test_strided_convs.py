"""Strided 1x1 convolutions as subsampling + stride 1 (around oneDNN#6035): exact, invisible, and no crash."""

from __future__ import annotations

import copy
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

import medseg
from medseg.training.speed import TrainingSpeed, to_memory_format
from medseg.training.strided_convs import subsample_strided_1x1_convs

REPO = Path(medseg.__file__).resolve().parents[1]


class _ConvStrides(TorchFunctionMode):
    """Records the ``stride`` argument of every convolution called while active."""

    def __init__(self) -> None:
        super().__init__()
        self.strides: list[object] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.nn.functional.conv2d, torch.nn.functional.conv3d):
            self.strides.append(args[3] if len(args) > 3 else kwargs.get("stride", 1))
        return func(*args, **kwargs)


CASES = [(dims, stride, padding, groups, bias)
         for dims, strides in ((2, (2, (2, 1))), (3, (2, (1, 2, 2))))
         for stride in strides for padding in (0, 1) for groups in (1, 2) for bias in (True, False)]


def _dyadic(*shape: int) -> torch.Tensor:
    """Quarters in [-2, 2]: their products and sums here are exact in fp32, so no summation order can matter."""
    return torch.randint(-8, 9, shape).float() / 4


@pytest.mark.parametrize(("dims", "stride", "padding", "groups", "bias"), CASES, ids=lambda v: str(v).replace(" ", ""))
def test_outputs_and_gradients_equal_plain_conv(dims, stride, padding, groups, bias):
    torch.manual_seed(0)
    conv_cls, layout = {2: (nn.Conv2d, torch.channels_last), 3: (nn.Conv3d, torch.channels_last_3d)}[dims]
    plain = conv_cls(4, 6, 1, stride=stride, padding=padding, groups=groups, bias=bias)
    with torch.no_grad():
        for p in plain.parameters():
            p.copy_(_dyadic(*p.shape))
    fixed = copy.deepcopy(plain).to(memory_format=layout)
    assert subsample_strided_1x1_convs(fixed) == 1
    x = _dyadic(2, 4, 7, 9) if dims == 2 else _dyadic(2, 4, 5, 6, 7)
    x_plain = x.clone().requires_grad_()
    x_fixed = x.clone().contiguous(memory_format=layout).requires_grad_()
    with _ConvStrides() as seen:
        y_fixed = fixed(x_fixed)
    y_plain = plain(x_plain)
    assert seen.strides == [1]  # no strided convolution reached the backend
    # the output's layout is what PyTorch gives a stride-1 1x1 conv on channels-last input of that size (with one
    # thread PyTorch's CPU conv3d returns contiguous output even then)
    unit = conv_cls(4, 6, 1, groups=groups).to(memory_format=layout)
    with torch.no_grad():
        native = unit(torch.zeros(2, 4, *y_plain.shape[2:]).contiguous(memory_format=layout))
    assert y_fixed.shape == y_plain.shape
    assert y_fixed.is_contiguous(memory_format=layout) == native.is_contiguous(memory_format=layout)
    torch.testing.assert_close(y_fixed, y_plain, rtol=0, atol=1e-6)
    weights = _dyadic(*y_plain.shape)  # a loss whose gradient differs at every output position
    (y_plain * weights).sum().backward()
    (y_fixed * weights).sum().backward()
    assert x_plain.grad.abs().sum() > 0 and plain.weight.grad.abs().sum() > 0
    torch.testing.assert_close(x_fixed.grad, x_plain.grad, rtol=0, atol=1e-6)
    torch.testing.assert_close(fixed.weight.grad, plain.weight.grad, rtol=0, atol=1e-6)
    if bias:
        torch.testing.assert_close(fixed.bias.grad, plain.bias.grad, rtol=0, atol=1e-6)


def test_plain_conv_is_recorded_with_its_stride():
    """The recorder above does see a strided call (so its ``[1]`` is a finding)."""
    with _ConvStrides() as seen:
        nn.Conv2d(2, 2, 1, stride=2)(torch.rand(1, 2, 4, 4))
    assert seen.strides == [(2, 2)]


class _OwnForward(nn.Conv2d):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return super().forward(input) + 1


def test_only_plain_strided_1x1_convs_change_and_nothing_visible_does():
    net = nn.ModuleDict({
        "down": nn.Conv2d(4, 8, 1, stride=2),                   # changed
        "down3d": nn.Conv3d(4, 8, 1, stride=(1, 2, 2)),         # changed
        "conv3x3": nn.Conv2d(4, 8, 3, stride=2),
        "pointwise": nn.Conv2d(4, 8, 1),
        "up": nn.ConvTranspose2d(4, 8, 1, stride=2),
        "reflect": nn.Conv2d(4, 8, 1, stride=2, padding=1, padding_mode="reflect"),
        "own": _OwnForward(4, 8, 1, stride=2),
    })
    before, state = repr(net), {k: v.clone() for k, v in net.state_dict().items()}
    assert subsample_strided_1x1_convs(net) == 2
    assert subsample_strided_1x1_convs(net) == 0
    changed = sorted(name for name, m in net.items() if "forward" in vars(m))
    assert changed == ["down", "down3d"]
    assert repr(net) == before and net["down"].stride == (2, 2)
    assert list(net.state_dict()) == list(state)
    x = torch.rand(1, 4, 6, 6)
    clone = copy.deepcopy(net)
    buffer = io.BytesIO()
    torch.save(net, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for other in (clone, loaded):  # the instance forward follows the copy, not the original
        assert other["down"].forward.keywords["conv"] is other["down"]
        with torch.no_grad():
            other["down"].weight.add_(1.0)
            torch.testing.assert_close(other["down"](x), nn.Conv2d.forward(other["down"], x), rtol=0, atol=1e-6)
    fresh = nn.ModuleDict({k: copy.deepcopy(m) for k, m in clone.items()})
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh["down"](x), nn.Conv2d.forward(net["down"], x), rtol=0, atol=1e-6)


def test_to_memory_format_applies_the_rewrite_for_channels_last_only():
    net = nn.Sequential(nn.Conv2d(3, 8, 1, stride=2), nn.Conv2d(8, 8, 3))
    to_memory_format(net, torch.contiguous_format)
    assert "forward" not in vars(net[0]) and net[1].weight.is_contiguous()
    TrainingSpeed(memory_format=torch.channels_last).model(net)
    assert "forward" in vars(net[0]) and "forward" not in vars(net[1])
    assert net[1].weight.is_contiguous(memory_format=torch.channels_last) and not net[1].weight.is_contiguous()


def _run(script: str) -> dict:
    """Run ``script`` in a fresh interpreter (a heap corruption kills it, not pytest); its last stdout line."""
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"exit code {proc.returncode}\n{proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


# Without the rewrite this crashes (SIGSEGV / "double free or corruption") with torch 2.13 on AVX512 CPUs:
# 8 input channels < oneDNN's 16-channel block, 1x1, stride 2, channels-last, weight gradient.
REPRO = """
import json, torch
from medseg.training.speed import TrainingSpeed
torch.set_num_threads(1)
torch.manual_seed(0)
speed = TrainingSpeed(memory_format=torch.channels_last)
conv = torch.nn.Conv2d(8, 16, 1, stride=2, bias=False)
step = speed.model(conv)
x = speed.batch(torch.rand(2, 8, 192, 192))
losses = []
for dtype in (None, None, None, torch.bfloat16, torch.bfloat16):  # fp32 and bf16 autocast both crashed
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        loss = step(x).float().square().mean()
    loss.backward()
    losses.append(loss.item())
print(json.dumps({"losses": losses, "grad": conv.weight.grad.abs().sum().item()}))
"""


def test_strided_1x1_channels_last_training_does_not_crash():
    out = _run(REPRO)
    assert len(out["losses"]) == 5 and all(0.0 < v < float("inf") for v in out["losses"])
    assert 0.0 < out["grad"] < float("inf")


# The user's case: DynUNet's residual projection is a strided 1x1 convolution (8 -> 16 channels here).
# Trains 2 SGD steps through the channels-last TrainingSpeed path, the contiguous fp32 path and float64.
DYNUNET = """
import copy, json, torch
from monai.networks.nets import DynUNet
from medseg.training.speed import TrainingSpeed
torch.set_num_threads(1)
torch.manual_seed(0)
net = DynUNet(2, 3, 2, kernel_size=[3, 3, 3], strides=[1, 2, 2], upsample_kernel_size=[2, 2],
              filters=[8, 16, 32], norm_name="batch", res_block=True)
x, y = torch.rand(2, 3, 64, 64), (torch.rand(2, 64, 64) > 0.5).long()

def run(speed, dtype):
    model = copy.deepcopy(net).to(dtype)
    step = speed.model(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for i in range(2):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(step(speed.batch(x.to(dtype))), y)
        loss.backward()
        if i == 0:
            grads = {k: p.grad.double() for k, p in model.named_parameters()}
        optimizer.step()
        losses.append(loss.item())
    return losses, grads, sum("forward" in vars(m) for m in model.modules())

last, l_grads, changed = run(TrainingSpeed(memory_format=torch.channels_last), torch.float32)
plain, p_grads, _ = run(TrainingSpeed(), torch.float32)
exact, e_grads, _ = run(TrainingSpeed(), torch.float64)
diff = lambda a, b: {k: (a[k] - b[k]).abs().max().item() for k in a}
print(json.dumps({"losses": [last, plain, exact], "last_plain": diff(l_grads, p_grads),
                                    "plain_exact": diff(p_grads, e_grads), "changed": changed}))
"""


def test_dynunet_trains_channels_last_like_contiguous_fp32():
    """Tolerance: the two fp32 paths add and multiply in different orders, so they may differ by about what
    fp32 rounding makes the contiguous path itself differ from float64. Per parameter, the channels-last
    gradient of step 1 must lie within 2x the contiguous path's distance from float64 (+ 1e-6): measured,
    channels-last is the closer of the two to float64 (<= 2.3e-7 from it, the contiguous path <= 9.5e-5).
    Losses: within 1e-5 (mean cross-entropy near 0.8; measured 4e-7)."""
    out = _run(DYNUNET)
    last, plain, exact = out["losses"]
    assert out["changed"] == 2  # the residual projections of downsamples.0 (8 -> 16) and the bottleneck
    for a, b in ((last, plain), (plain, exact)):
        assert all(abs(u - v) < 1e-5 for u, v in zip(a, b, strict=True)), out["losses"]
    assert last[1] < last[0]  # the step lowered the loss (not a no-op)
    for name, d in out["last_plain"].items():
        assert d <= 2 * out["plain_exact"][name] + 1e-6, (name, d, out["plain_exact"][name])
