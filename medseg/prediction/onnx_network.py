"""An exported ONNX model run by ONNX Runtime behind a ``torch.nn.Module``, so the sliding window can call it.

The sliding-window engine calls ``network(x)`` on ``(N, C, *tile)`` float tensors and reads what it needs
about the network from attributes when there are no torch layers to inspect: ``in_channels``,
``out_channels`` and ``first_width`` (for its memory plan). The divisor that tile sizes must respect and
whether the network needs roi-size windows come from the model's medseg metadata and are passed explicitly
(:class:`~medseg.prediction.loaded.LoadedModel` fields ``divisor`` and ``tiling``).

ONNX Runtime is optional: ``pip install "medseg[onnx]"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from medseg.errors import CheckpointError, DependencyError
from medseg.prediction.artifact import METADATA_KEY, parse_model_metadata

__all__ = ["OnnxNetwork", "is_onnx_file", "load_onnx_network", "require_onnxruntime"]

INSTALL_HINT = 'pip install "medseg[onnx]"'


def is_onnx_file(path: str | Path) -> bool:
    """True for a path naming an ``.onnx`` file (the suffix decides, as for other model files).

    Example:
        >>> is_onnx_file("run/model.onnx"), is_onnx_file("run/checkpoints/best.pt")
        (True, False)
    """
    return Path(path).suffix.lower() == ".onnx"


def require_onnxruntime(what: str) -> Any:
    """Import ``onnxruntime`` or raise one line naming the extra to install.

    Raises:
        DependencyError: ONNX Runtime is not installed.
    """
    try:
        import onnxruntime
    except ImportError:
        raise DependencyError(f"{what} needs ONNX Runtime, which is not installed; {INSTALL_HINT}") from None
    return onnxruntime


class OnnxNetwork(torch.nn.Module):
    """A module whose forward runs an ONNX Runtime session (fp32, on the CPU unless CUDA is asked and offered).

    Args:
        session: An ``onnxruntime.InferenceSession`` over a model taking ``(N, C, *spatial)`` float32.
        in_channels: Input channels ``C``.
        out_channels: Output channels ``K`` (classes).
        first_width: Channels of the network's first feature map (the sliding window's memory plan).
    """

    def __init__(self, session: Any, *, in_channels: int, out_channels: int, first_width: int) -> None:
        super().__init__()
        self.session = session
        self.input_name = str(session.get_inputs()[0].name)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.first_width = first_width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, *spatial)`` -> logits ``(N, K, *spatial)`` float32 on ``x``'s device."""
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (out, *_) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(out).to(x.device)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, onnxruntime"


def load_onnx_network(path: str | Path, device: torch.device) -> tuple[OnnxNetwork, dict[str, Any]]:
    """Open an ONNX model exported by ``medseg export`` and read its medseg metadata.

    Args:
        path: The ``.onnx`` file.
        device: ``cuda`` uses ONNX Runtime's CUDA provider when the installed runtime has it, else the CPU.

    Returns:
        ``(network, metadata)``; the metadata is checked by
        :func:`~medseg.prediction.artifact.parse_model_metadata`.

    Raises:
        CheckpointError: The file is missing, not an ONNX model, or carries no (or malformed) medseg metadata.
        DependencyError: ONNX Runtime is not installed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: ONNX model file not found")
    ort = require_onnxruntime(f"{path}: running an ONNX model")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the threads PyTorch would use, for a fair race
    options.log_severity_level = 3  # errors only
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as err:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail, ...)
        reason = " ".join(str(err).split())[:200]
        raise CheckpointError(f"{path}: not a readable ONNX model: {reason}") from None
    props = session.get_modelmeta().custom_metadata_map
    meta = parse_model_metadata(props.get(METADATA_KEY), str(path))
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise CheckpointError(f"{path}: ONNX model has {len(inputs)} inputs; a medseg export has one (image)")
    net = meta["network"]
    return OnnxNetwork(session, in_channels=net["in_channels"], out_channels=net["out_channels"],
                       first_width=net["first_width"]), meta
