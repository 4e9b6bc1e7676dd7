"""Strided 1x1 convolutions run as subsampling + a stride-1 convolution, around a oneDNN heap overflow.

oneDNN's 1x1 convolution with stride > 1 on channels-last (nhwc/ndhwc) input whose input channels per group are
fewer than its channel block (16 with AVX512, 8 with AVX2) writes past its workspace in the weight-gradient pass
(uxlfoundation/oneDNN#6035): CPU training dies with ``double free or corruption`` or corrupts memory silently.
DynUNet's residual projection is such a convolution. A 1x1 convolution with stride ``s`` reads only every
``s``-th position, so subsampling the (zero-padded) input first and convolving with stride 1 and no padding
computes the same output and gradients, and never hands oneDNN a strided 1x1 convolution.
"""

from __future__ import annotations

import functools
from types import EllipsisType
from typing import TypeGuard

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["subsample_strided_1x1_convs", "subsampled_1x1_conv"]

_PLAIN = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def subsampled_1x1_conv(x: torch.Tensor, conv: nn.Conv1d | nn.Conv2d | nn.Conv3d) -> torch.Tensor:
    """What ``conv`` (kernel size 1, zero padding) computes on ``x``, without a strided convolution.

    Args:
        x: Input, shape (B, C, *spatial) or (C, *spatial).
        conv: A 1x1 convolution (any stride, padding, dilation and groups; ``padding_mode="zeros"``).

    Returns:
        The same tensor as ``conv(x)``; the convolution itself runs with stride 1 and padding 0.

    Example:
        >>> conv = torch.nn.Conv2d(2, 3, 1, stride=2, padding=1)
        >>> x = torch.rand(1, 2, 5, 6)
        >>> torch.allclose(subsampled_1x1_conv(x, conv), conv(x), atol=1e-6)
        True
    """
    dims = len(conv.stride)
    padding = (0,) * dims if isinstance(conv.padding, str) else conv.padding  # "valid" ("same" needs stride 1)
    layout = _layout(x)
    if any(padding):
        x = F.pad(x, [p for p in reversed(padding) for _ in range(2)])
    every_sth: tuple[EllipsisType | slice, ...] = (Ellipsis, *(slice(None, None, s) for s in conv.stride))
    x = x[every_sth]
    if layout is not None:
        x = x.contiguous(memory_format=layout)  # the output keeps the input's layout
    return _CONV[dims](x, conv.weight, conv.bias, 1, 0, 1, conv.groups)


def _layout(x: torch.Tensor) -> torch.memory_format | None:
    """The channels-last layout ``x`` is in, if any (a contiguous batch with 1 channel counts as contiguous)."""
    for ndim, layout in ((4, torch.channels_last), (5, torch.channels_last_3d)):
        if x.ndim == ndim and x.is_contiguous(memory_format=layout) and not x.is_contiguous():
            return layout
    return None


def _is_strided_1x1(module: nn.Module) -> TypeGuard[nn.Conv1d | nn.Conv2d | nn.Conv3d]:
    """A plain ``nn.Conv1d/2d/3d`` (or a subclass with their forward) of kernel size 1, some stride > 1 and zero
    padding mode. Transposed convolutions are other classes and never match."""
    base = next((b for b in _PLAIN if isinstance(module, b)), None)
    if base is None or type(module).forward is not base.forward:
        return False
    if type(module)._conv_forward is not base._conv_forward:  # type: ignore[attr-defined]
        return False
    conv: nn.Conv1d = module  # type: ignore[assignment]  # (any of the three: the same attributes)
    return all(k == 1 for k in conv.kernel_size) and any(s > 1 for s in conv.stride) and conv.padding_mode == "zeros"


def subsample_strided_1x1_convs(network: nn.Module) -> int:
    """Make each strided 1x1 convolution of ``network`` run as :func:`subsampled_1x1_conv` (in place).

    Only the instances' ``forward`` changes (an instance attribute, which ``copy.deepcopy`` and pickling carry
    along): parameters, state-dict keys, ``stride`` and the printed network stay as they are, so checkpoints
    and exports do not see it. Outputs and gradients are the same to float rounding. Layers that already have
    an instance ``forward`` are left alone, so a second call changes nothing.

    Returns:
        How many layers it changed.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 1, stride=2), torch.nn.Conv2d(8, 8, 3, stride=2))
        >>> subsample_strided_1x1_convs(net), subsample_strided_1x1_convs(net)
        (1, 0)
    """
    changed = 0
    for module in network.modules():
        if _is_strided_1x1(module) and "forward" not in vars(module):
            setattr(module, "forward", functools.partial(subsampled_1x1_conv, conv=module))  # noqa: B010  (instance attribute; mypy refuses the assignment)
            changed += 1
    return changed
