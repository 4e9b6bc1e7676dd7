"""Tests for medseg.sliding_window.predict: exact blending, TTA, labels, auto tiling safety, bad input, CUDA."""

from __future__ import annotations

import itertools
import logging
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from medseg.errors import DataError
from medseg.sliding_window.plan import window_dependent_layers
from medseg.sliding_window.predict import (
    SlidingWindowMemoryError,
    SlidingWindowStats,
    cpu_has_native_bf16,
    resolve_precision,
    sliding_window_predict,
)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


class PlusOne(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1


class Pointwise(nn.Module):
    """A per-voxel linear map C -> K (1x1 conv): blending must give back exactly the same map."""

    def __init__(self, spatial: int, c: int = 2, k: int = 3) -> None:
        super().__init__()
        conv = nn.Conv3d if spatial == 3 else nn.Conv2d
        torch.manual_seed(0)
        self.conv = conv(c, k, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class NeedsDivisor(nn.Module):
    """Fails like a UNet when a spatial dim is not a multiple of 4."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(s % 4 for s in x.shape[2:]):
            raise RuntimeError("Sizes of tensors must match except in dimension 1")
        return x * 2


class OOMNet(nn.Module):
    def __init__(self, max_batch: int = 0) -> None:
        super().__init__()
        self.max_batch, self.calls = max_batch, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if x.shape[0] > self.max_batch:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")
        return x + 1


SHAPES = {2: (2, 1, 19, 30), 3: (2, 1, 9, 17, 22)}  # odd sizes, batch 2


def predict(net, image, roi, **kw):
    kw.setdefault("precision", "fp32")
    return sliding_window_predict(net, image, roi, **kw)


@pytest.mark.parametrize("spatial", [2, 3])
@pytest.mark.parametrize("tiling", ["auto", "roi"])
@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_plus_one_is_exact_for_every_overlap_and_roi(spatial, tiling, blend):
    image = torch.randn(SHAPES[spatial])
    for overlap, roi, budget in itertools.product([0.0, 0.25, 0.5, 0.8], [4, 7, 8, 64], [None, 0.001]):
        out = predict(
            PlusOne(), image, roi, overlap=overlap, blend=blend, tiling=tiling, output="logits", memory_budget_mb=budget
        )
        assert out.shape == image.shape and out.dtype == torch.float32
        torch.testing.assert_close(out, image + 1, atol=1e-5, rtol=1e-6), (overlap, roi, budget)


@pytest.mark.parametrize("spatial", [2, 3])
@pytest.mark.parametrize("tiling", ["auto", "roi"])
def test_pointwise_linear_map_is_exact(spatial, tiling):
    net = Pointwise(spatial)
    image = torch.randn(2, 2, *SHAPES[spatial][2:])
    expected = net(image).detach()
    for overlap, roi in itertools.product([0.0, 0.5], [(5,) * spatial, (8,) * (spatial - 1) + (11,)]):
        out = predict(net, image, roi, overlap=overlap, tiling=tiling, output="logits", memory_budget_mb=0.001)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_probabilities_are_softmax_and_labels_are_their_argmax():
    net = Pointwise(3, c=2, k=5)
    image = torch.randn(2, 2, 13, 17, 19)
    for overlap, budget in [(0.25, 0.001), (0.5, None), (0.0, 0.05)]:
        kw = dict(overlap=overlap, memory_budget_mb=budget, sw_batch_size=3)
        probs = predict(net, image, 6, output="probabilities", **kw)
        torch.testing.assert_close(probs, torch.softmax(net(image), 1).detach(), atol=1e-5, rtol=1e-5)
        labels = predict(net, image, 6, output="labels", **kw)
        assert labels.shape == (2, 1, 13, 17, 19) and labels.dtype == torch.uint8
        assert torch.equal(labels[:, 0].long(), probs.argmax(1))


def test_labels_multi_tile_rows_and_sigmoid_output():
    net = Pointwise(3, c=2, k=4)
    image = torch.randn(1, 2, 20, 21, 22)
    for tiling in ("roi", "auto"):
        labels = predict(net, image, 8, output="labels", tiling=tiling, memory_budget_mb=0.001, overlap=0.5)
        assert torch.equal(labels[:, 0].long(), net(image).argmax(1))
    single = Pointwise(3, c=2, k=1)
    labels = predict(single, image, 8, output="labels", tiling="roi")
    assert torch.equal(labels[:, 0].bool(), (single(image) > 0)[:, 0])
    probs = predict(single, image, 8, output="probabilities", tiling="roi")
    torch.testing.assert_close(probs, torch.sigmoid(single(image)).detach(), atol=1e-5, rtol=1e-5)


class FlipEquivariant(nn.Module):
    """Symmetric 3x3(x3) kernel: commutes with flips, so flip TTA must change nothing."""

    def __init__(self, spatial: int) -> None:
        super().__init__()
        conv = nn.Conv3d if spatial == 3 else nn.Conv2d
        self.conv = conv(1, 3, 3, padding=1, bias=True)
        with torch.no_grad():
            w = torch.rand_like(self.conv.weight)
            for axis in range(2, 2 + spatial):
                w = w + w.flip(axis)
            self.conv.weight.copy_(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.mark.parametrize("spatial", [2, 3])
def test_tta_with_flip_equivariant_network_changes_nothing(spatial):
    torch.manual_seed(1)
    net = FlipEquivariant(spatial)
    image = torch.randn(1, 1, *SHAPES[spatial][2:])
    plain = predict(net, image, 8, output="logits", tiling="roi")
    for tta in (True, [(0,), (spatial - 1,)]):
        flipped = predict(net, image, 8, output="logits", tiling="roi", tta=tta)
        torch.testing.assert_close(flipped, plain, atol=1e-5, rtol=1e-5)
    _, stats = predict(net, image, 8, output="logits", tta=True, return_stats=True)
    assert stats.windows == stats.tiles * 2**spatial


def test_tta_is_not_a_noop_for_a_non_equivariant_network():
    net = Pointwise(3, c=1, k=2)
    image = torch.arange(6 * 7 * 8, dtype=torch.float32).reshape(1, 1, 6, 7, 8)
    shift = nn.Sequential(nn.ConstantPad3d((1, 0, 0, 0, 0, 0), 0.0), net)

    class Shift(nn.Module):
        def forward(self, x):
            return shift(x)[..., :-1]

    a = predict(Shift(), image, 8, output="logits")
    b = predict(Shift(), image, 8, output="logits", tta=[(2,)])
    assert not torch.allclose(a, b)


def test_roi_larger_than_volume_is_padded():
    image = torch.randn(1, 1, 5, 6, 7)
    out = predict(PlusOne(), image, 32, output="logits", tiling="roi")
    torch.testing.assert_close(out, image + 1, atol=1e-6, rtol=0)


def test_divisor_pads_tiles_and_unknown_divisor_error_names_it():
    image = torch.randn(1, 1, 10, 13, 9)
    out = predict(NeedsDivisor(), image, 6, output="logits", divisor=4, overlap=0.5, tiling="roi")
    torch.testing.assert_close(out, image * 2)
    with pytest.raises(ValueError, match="divisor"):
        predict(NeedsDivisor(), image, 6, output="logits", tiling="roi")


def test_monai_unet_divisor_is_inferred():
    from monai.networks.nets import UNet

    net = UNet(3, 1, 3, (4, 8), (2,), num_res_units=0).eval()
    image = torch.randn(1, 1, 11, 9, 7)
    out = predict(net, image, 5, output="labels", tiling="roi")
    assert out.shape == (1, 1, 11, 9, 7)


def test_channel_mismatch_error_names_both_numbers():
    with pytest.raises(ValueError, match=r"expects 2 input channels but image has 3"):
        predict(Pointwise(3, c=2), torch.randn(1, 3, 8, 8, 8), 8)


def test_non_finite_input():
    image = torch.randn(1, 1, 8, 8, 8)
    image[0, 0, 1, 2, 3] = float("nan")
    image[0, 0, 4, 4, 4] = float("inf")
    with pytest.raises(DataError, match="2 non-finite"):
        predict(PlusOne(), image, 4)
    out = predict(PlusOne(), image, 4, output="logits", nonfinite="zero")
    assert torch.isfinite(out).all() and out[0, 0, 1, 2, 3] == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"overlap": 1.0}, "overlap"),
        ({"sw_batch_size": 0}, "sw_batch_size"),
        ({"blend": "hann"}, "blend"),
        ({"output": "mask"}, "output"),
        ({"precision": "int8"}, "precision"),
        ({"tiling": "x"}, "tiling"),
        ({"memory_budget_mb": -1}, "memory_budget_mb"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sliding_window_predict(PlusOne(), torch.randn(1, 1, 8, 8), 4, **kwargs)


def test_bad_image_and_roi():
    with pytest.raises(ValueError, match="shape"):
        predict(PlusOne(), torch.randn(8, 8), 4)
    with pytest.raises(TypeError, match="floating"):
        predict(PlusOne(), torch.ones(1, 1, 8, 8, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="roi_size"):
        predict(PlusOne(), torch.randn(1, 1, 8, 8), (4, 4, 4))


def test_out_of_memory_falls_back_then_raises_clear_error():
    image = torch.randn(1, 1, 16, 16, 16)
    net = OOMNet(max_batch=1)
    out, stats = predict(net, image, 8, output="logits", tiling="roi", sw_batch_size=4, return_stats=True)
    torch.testing.assert_close(out, image + 1)
    assert stats.fallbacks and stats.batch_size == 1
    with pytest.raises(SlidingWindowMemoryError, match="out of memory"):
        predict(OOMNet(max_batch=0), image, 8, output="logits", tiling="roi")


def test_stats_and_progress(capsys):
    out, stats = predict(
        PlusOne(), torch.randn(1, 1, 20, 20), 8, tiling="roi", progress=True, return_stats=True, output="logits"
    )
    assert isinstance(stats, SlidingWindowStats) and stats.windows == stats.tiles == 9
    assert stats.windows_per_s > 0 and stats.peak_memory_mb > 0
    assert "windows/s" in capsys.readouterr().err


def test_precision_resolution_and_bf16_close_to_fp32():
    assert resolve_precision("fp32", "cpu") is None
    assert resolve_precision("bf16", "cpu") is torch.bfloat16
    assert resolve_precision("auto", "cpu") is (torch.bfloat16 if cpu_has_native_bf16() else None)
    net = Pointwise(3, c=2, k=3)
    image = torch.randn(1, 2, 12, 12, 12)
    out = sliding_window_predict(net, image, 8, precision="bf16", output="logits")
    torch.testing.assert_close(out, net(image).detach(), atol=0.05, rtol=0.02)


def test_unet_single_pass_matches_windows_in_the_interior():
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(3, 1, 2, (4, 8, 16), (2, 2), num_res_units=1, norm="batch").eval()
    image = torch.randn(1, 1, 24, 28, 20)
    one = predict(net, image, 16, output="logits", memory_budget_mb=1000)
    windows = predict(net, image, 16, output="logits", tiling="roi", overlap=0.5)
    assert one.shape == windows.shape
    assert (one.argmax(1) == windows.argmax(1)).float().mean() > 0.9


class NormNet(nn.Module):
    """conv -> norm -> conv: with instance norm the result depends on the tile extent."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.norm, self.b = nn.Conv3d(1, 4, 3, padding=1), norm, nn.Conv3d(4, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.norm(self.a(x))))


@pytest.mark.parametrize(
    ("layer", "found"),
    [
        (nn.InstanceNorm3d(4), ["InstanceNorm3d"]),
        (nn.InstanceNorm3d(4, affine=True), ["InstanceNorm3d"]),
        (nn.InstanceNorm3d(4, track_running_stats=True).eval(), []),  # running statistics: local
        (nn.GroupNorm(2, 4), ["GroupNorm"]),
        (nn.LayerNorm((6, 6, 6)), ["LayerNorm"]),
        (nn.LayerNorm(4), []),  # over channels of tokens
        (nn.BatchNorm3d(4).eval(), []),
        (nn.BatchNorm3d(4).train(), ["BatchNorm3d (training mode)"]),
        (nn.Sequential(nn.AdaptiveAvgPool3d(1)), ["AdaptiveAvgPool3d"]),
        (nn.Identity(), []),
    ],
)
def test_window_dependent_layers(layer, found):
    assert window_dependent_layers(NormNet(layer)) == found


def test_monai_norm_layers_are_detected():
    from monai.networks.nets import UNet

    kw = dict(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,), num_res_units=1)
    assert window_dependent_layers(UNet(**kw).eval()) == ["InstanceNorm3d"]  # MONAI's default norm
    assert window_dependent_layers(UNet(**kw, norm=("group", {"num_groups": 2})).eval()) == ["GroupNorm"]
    assert window_dependent_layers(UNet(**kw, norm="batch").eval()) == []


def test_auto_tiling_uses_roi_windows_for_instance_norm(caplog):
    net = NormNet(nn.InstanceNorm3d(4)).eval()
    image = torch.randn(1, 1, 20, 18, 22)
    with caplog.at_level(logging.INFO, logger="medseg.sliding_window.predict"):
        auto, stats = predict(net, image, 8, output="logits", memory_budget_mb=1000, return_stats=True)
        predict(net, image, 8, output="labels", memory_budget_mb=1000)
    roi = predict(net, image, 8, output="logits", tiling="roi")
    assert torch.equal(auto, roi)
    assert stats.tiling.startswith("roi (auto: layers InstanceNorm3d") and "tiles of 8x8x8" in stats.plan
    messages = [r.getMessage() for r in caplog.records if "roi-size windows" in r.getMessage()]
    assert len(messages) <= 1  # logged once per network type (possibly by an earlier test)
    # the same network with running statistics (eval) is local: one big tile
    local = NormNet(nn.InstanceNorm3d(4, track_running_stats=True)).eval()
    _, stats = predict(local, image, 8, output="logits", memory_budget_mb=1000, return_stats=True)
    assert stats.tiling == "auto" and stats.plan.startswith("1 tiles of 20x18x22")


def test_auto_tiling_changes_an_instance_norm_result_when_forced_large():
    """Why the fallback exists: one big tile gives a different result for instance norm."""
    net = NormNet(nn.InstanceNorm3d(4)).eval()
    image = torch.randn(1, 1, 20, 18, 22) * torch.linspace(0.2, 3, 22)  # statistics vary across the volume
    whole = net(pad_to(image, 8)).detach()[..., :20, :18, :22]
    roi = predict(net, image, 8, output="logits", tiling="roi")
    assert not torch.allclose(whole, roi, atol=1e-3)


def pad_to(image: torch.Tensor, multiple: int) -> torch.Tensor:
    pads = [p for s in reversed(image.shape[2:]) for p in (0, -s % multiple)]
    return torch.nn.functional.pad(image, pads)


@cuda
def test_cuda_plus_one_and_labels():
    image = torch.randn(2, 1, 19, 23, 17, device="cuda")
    out = sliding_window_predict(PlusOne(), image, 8, output="logits", precision="fp32", tiling="roi")
    assert out.device.type == "cuda"
    torch.testing.assert_close(out, image + 1, atol=2e-6, rtol=0)
    net = Pointwise(3, c=1, k=4).cuda()
    labels = sliding_window_predict(net, image, 8, output="labels", precision="fp32", overlap=0.5)
    assert torch.equal(labels[:, 0].long(), net(image).argmax(1))


@cuda
def test_cuda_autocast_and_cpu_image():
    net = Pointwise(3, c=1, k=3).cuda()
    image = torch.randn(1, 1, 16, 16, 16)
    out, stats = sliding_window_predict(net, image, 8, output="logits", device="cuda", return_stats=True)
    assert out.device.type == "cpu" and stats.precision in ("bf16", "fp16")
    torch.testing.assert_close(out, net(image.cuda()).detach().cpu(), atol=0.05, rtol=0.02)


def test_stitch_bytes_hand_computed():
    from medseg.sliding_window.plan import stitch_bytes

    # one tile per row along dim 0: only the overlap with the next tile is carried (144 - (256 - 144) = 32 slices)
    assert stitch_bytes((144, 208, 224), (256, 208, 224), (2, 1, 1), 36) == 32 * 208 * 224 * 36
    # several tiles in a row: a whole K x tile[0] x H x W row buffer
    assert stitch_bytes((144, 144, 144), (256, 256, 256), (2, 2, 2), 40) == 144 * 256 * 256 * 40
    assert stitch_bytes((96, 96), (96, 96), (1, 1), 40) == 0.0
    # aligned starts 0, 48, 96, 160 of 4 tiles of 96 over 256 (divisor 16): the widest overlap is 48, not 96 - 160/3
    assert stitch_bytes((96, 256, 256), (256, 256, 256), (4, 1, 1), 40, 16) == 48 * 256 * 256 * 40
    assert stitch_bytes((96, 256, 256), (256, 256, 256), (4, 1, 1), 40) == 43 * 256 * 256 * 40


@pytest.mark.parametrize("shape", [(40, 72, 72), (72, 40, 40), (33, 65, 47)])
@pytest.mark.parametrize("budget_mb", [2.0, 6.0, 20.0])
def test_auto_plan_and_batch_fit_the_budget_with_the_row_buffer(shape, budget_mb):
    """The planned tiles, the windows batched together and the stitcher's buffer stay within the budget."""

    from monai.networks.nets import UNet

    from medseg.sliding_window.predict import _plan

    net = UNet(3, 1, 5, (8, 16), (2,), num_res_units=1, norm="batch").eval()
    image = torch.rand(1, 1, *shape)
    budget = budget_mb * 2**20
    plan, bpv, fixed = _plan(image, net, (16, 16, 16), (2, 2, 2), 0.25, "auto", "labels", None, budget, 1)
    assert bpv == 4 * 2.75 * 8 + 4 * 5  # fp32 activations of 2.75 maps of width 8, plus 5 output channels
    tile_bytes = math.prod(plan.tile) * bpv
    smallest = math.prod(plan.tile) == 16**3
    assert smallest or tile_bytes + fixed <= budget
    _, stats = predict(net, image, 16, output="labels", memory_budget_mb=budget_mb, sw_batch_size=8, return_stats=True)
    assert stats.plan == plan.describe()
    assert stats.batch_size == 1 or stats.batch_size * tile_bytes + fixed <= budget


def test_planner_prefers_one_tile_per_row_when_costs_are_close():
    """Blending through a row buffer costs more than the few voxels a row-wise split saves (160x224x224, bf16)."""
    from medseg.sliding_window.plan import plan_auto

    kw = dict(tile_bytes_per_voxel=106, row_bytes_per_voxel=36, budget_bytes=768 * 2**20)
    plan = plan_auto((160, 224, 224), (96,) * 3, (16,) * 3, 0.25, **kw)
    assert plan.describe() == "2 tiles of 96x224x224 (grid 2x1x1)"
    # without the row buffer (logits/probabilities output) the cheaper split along the last dim wins
    plan = plan_auto((160, 224, 224), (96,) * 3, (16,) * 3, 0.25, **{**kw, "row_bytes_per_voxel": 0})
    assert plan.describe() == "2 tiles of 160x224x128 (grid 1x1x2)"


class BlockMean(nn.Module):
    """Each voxel gets the mean of its 4^d block of the input (average pool by 4, nearest upsampling by 4): the
    simplest network whose output depends on where its downsampling grid falls, like a UNet with strides 2, 2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = nn.functional.avg_pool3d if x.dim() == 5 else nn.functional.avg_pool2d
        return nn.functional.interpolate(pool(x, 4), scale_factor=4, mode="nearest")


@pytest.mark.parametrize("spatial", [2, 3])
@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_auto_tiles_share_the_networks_downsampling_grid(spatial, blend):
    """Tiles start on multiples of the divisor in the image, so a downsampling network gives in every tile what one
    pass over the whole volume gives: block means of the image padded at its end. Tiles at other offsets average
    other blocks (the planner placed the second of 2 tiles over 244 voxels at 100, not 112, before)."""
    torch.manual_seed(0)
    shape = (2, 1, 45, 38) if spatial == 2 else (1, 1, 45, 38, 29)
    image = torch.rand(shape)
    out, stats = predict(
        BlockMean(),
        image,
        12,
        output="logits",
        divisor=4,
        blend=blend,
        overlap=0.25,
        memory_budget_mb=0.001,
        return_stats=True,
    )
    assert stats.tiling == "auto" and math.prod(int(n) for n in stats.plan.split("grid ")[1][:-1].split("x")) > 8
    pads = [p for s in reversed(shape[2:]) for p in (0, -s % 4)]
    full = BlockMean()(nn.functional.pad(image, pads))[(..., *(slice(0, s) for s in shape[2:]))]
    torch.testing.assert_close(out, full)


@given(
    size=st.integers(1, 300),
    roi=st.integers(1, 128),
    div=st.sampled_from([1, 2, 8, 16, 32]),
    overlap=st.sampled_from([0.0, 0.25, 0.5, 0.75, 0.9]),
)
@settings(max_examples=300, deadline=None)
def test_auto_plan_options_are_aligned_and_overlap(size, roi, div, overlap):
    """Every candidate of the auto planner: tile size, starts and padded extent multiples of the divisor, the
    volume covered, neighbours overlapping by at least overlap x roi, and the padding before the image aligned."""
    from medseg.sliding_window.plan import _aligned_starts, _dim_options, _finish, round_up

    need = min(math.ceil(overlap * roi), round_up(roi, div) - 1)
    for n, tile, padded in _dim_options(size, roi, div, math.ceil(overlap * roi)):
        assert tile % div == 0 and padded % div == 0 and padded >= size and tile >= round_up(roi, div)
        starts = _aligned_starts(padded, tile, n, div)
        assert len(starts) == n and starts[0] == 0 and starts[-1] + tile == padded
        assert all(s % div == 0 for s in starts)
        assert all(a + tile - b >= need for a, b in itertools.pairwise(starts))
        plan = _finish((size,), (tile,), (padded,), (starts,), (div,))
        assert plan.pad[0] % div == 0 and plan.pad[0] + size <= padded


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("overlap", [0.25, 0.5, 0.75])
def test_streamed_labels_blend_like_the_dense_logits(precision, overlap):
    """A 3x3x3 convolution sees the zero padding at tile borders, so overlapping tiles disagree and the blend
    decides labels there. One tile per row along dim 0: the overlap is carried from tile to tile (raw network
    output with its weights applied later, or a weighted sum where 3 tiles overlap); the streamed labels must be
    the argmax of the blended logits of the dense path."""
    torch.manual_seed(0)
    net = nn.Conv3d(2, 5, 3, padding=1)
    image = torch.randn(2, 2, 61, 8, 8)
    kw = dict(overlap=overlap, memory_budget_mb=0.001, precision=precision)
    labels, stats = predict(net, image, 8, output="labels", return_stats=True, **kw)
    logits, dense = predict(net, image, 8, output="logits", return_stats=True, **kw)
    assert stats.plan == dense.plan and stats.plan.endswith("x1x1)") and int(stats.plan.split()[0]) >= 8
    agree = (labels[:, 0].long() == logits.argmax(1)).float().mean().item()
    assert agree == 1.0
    assert (logits.argmax(1) != net(image).argmax(1)).any()  # the tiles' borders do change labels
