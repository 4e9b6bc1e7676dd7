"""How the sliding window runs the network's forward pass: memory layout and compilation, chosen by a probe.

Backends:

* ``"eager"``: the network as given (PyTorch's default contiguous layout).
* ``"channels_last"``: weights and inputs in channels-last layout (``channels_last`` in 2D,
  ``channels_last_3d`` in 3D), which lets oneDNN (CPU) and cuDNN (GPU) pick their fastest convolution kernels;
  with bf16 autocast on a CPU with AMX a MONAI UNet 16-256 forward pass took 0.50 s instead of 0.84 s.
  Instance-norm layers run per sample as batch norm so that their outputs stay channels-last too
  (:func:`~medseg.sliding_window.layers.channels_last_instance_norms`), and eval-mode batch norms are folded
  into the convolutions before them, in a copy of the network
  (:func:`~medseg.sliding_window.layers.folded_batch_norms`).
* ``"compile"``: channels-last plus ``torch.compile`` (inductor). Compiling takes tens of seconds per network
  and input shape, so ``"auto"`` never picks it; ask for it where a long run pays the compile time back.
* ``"auto"``: a short measured probe (like cuDNN's benchmark mode) times ``"eager"`` and ``"channels_last"``
  on one window of the image, keeps the faster of those whose labels agree with the eager labels on at least
  :data:`PROBE_AGREEMENT` of the voxels, and caches the choice in a JSON file (written atomically) keyed by the
  network's structure, the device, the autocast dtype and the window shape, so later calls, in this process and
  in later ones, do not probe again. The file is read and written only when it is a medseg backend cache
  (:mod:`~medseg.sliding_window.probe_cache`). Jobs too small to pay for a probe run eager.

ONNX Runtime is a separate way to run an exported network (``medseg export`` and
:mod:`medseg.prediction.onnx_network`), not a backend here: it has no bf16 kernels on the CPU, and medseg's bf16
channels-last forward pass is faster than its fp32 one (see docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import platform
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medseg.sliding_window.layers import channels_last_instance_norms, folded_batch_norms
from medseg.sliding_window.probe_cache import CACHE_FILE_ENV, default_cache_file, read_probe_cache, write_probe_cache

__all__ = [
    "BACKENDS",
    "CACHE_FILE_ENV",
    "PROBE_AGREEMENT",
    "PROBE_MIN_VOXELS",
    "check_backend",
    "choose_backend",
    "default_cache_file",
    "network_signature",
    "using_backend",
]

BACKENDS = ("auto", "eager", "channels_last", "compile")
#: Backends the probe compares (compile is never probed: its compile time exceeds a probe's budget).
PROBE_CANDIDATES = ("eager", "channels_last")
#: Fraction of the probe window's voxels whose labels must equal the eager labels for a backend to be chosen.
PROBE_AGREEMENT = 0.98
#: Below this many voxels of network work in one call, ``"auto"`` runs eager without probing.
PROBE_MIN_VOXELS = 48**3
#: Bumped when a backend changes what it runs, so choices cached by an earlier medseg are measured again
#: (2: instance norm kept channels-last; 3: batch norm folded into convolutions).
BACKENDS_VERSION = 3
#: Timed calls per candidate after one warm-up (the fastest counts).
PROBE_REPEATS = 2

log = logging.getLogger(__name__)
_memory_cache: dict[str, str] = {}


def check_backend(backend: object) -> str:
    """``backend`` if it is one of :data:`BACKENDS`.

    Example:
        >>> check_backend("channels_last")
        'channels_last'
        >>> check_backend("fast")
        Traceback (most recent call last):
        ...
        ValueError: backend must be one of 'auto', 'eager', 'channels_last', 'compile', got 'fast'

    Raises:
        ValueError: Any other value.
    """
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    return backend


def network_signature(network: nn.Module) -> str:
    """A short hash of the network's structure (module types, parameter shapes, training mode), not its weights.

    Example:
        >>> a, b = nn.Conv2d(1, 4, 3), nn.Conv2d(1, 4, 3)
        >>> network_signature(a) == network_signature(b), network_signature(a) == network_signature(nn.Conv2d(1, 5, 3))
        (True, False)
    """
    parts = [type(network).__qualname__]
    for name, module in network.named_modules():
        parts.append(f"{name}:{type(module).__qualname__}:{int(module.training)}")
    for name, param in network.named_parameters():
        parts.append(f"{name}:{tuple(param.shape)}")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"{device.type}:{platform.processor() or platform.machine()}:{_cpu_model()}:{torch.get_num_threads()}t"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _probe_key(network: nn.Module, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype | None) -> str:
    dtype_name = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))
    return "|".join((network_signature(network), _device_name(device), dtype_name, "x".join(map(str, shape)),
                     f"torch {torch.__version__}", f"backends v{BACKENDS_VERSION}"))


def choose_backend(
    network: nn.Module,
    window: torch.Tensor,
    dtype: torch.dtype | None,
    *,
    batch: int = 1,
    cache_file: Path | None = None,
) -> str:
    """The backend ``"auto"`` means for ``network`` on windows like ``window`` ((1, C, *roi), on the device).

    A network without torch convolutions (ONNX Runtime behind a module) runs eager. Calls with a cached answer
    (this process, then ``cache_file``) return it without running the network.
    Otherwise the probe runs :data:`PROBE_CANDIDATES` on ``window`` under autocast ``dtype`` and caches its
    choice. Calls whose work (``batch`` windows) is below :data:`PROBE_MIN_VOXELS` voxels return ``"eager"``
    unprobed.

    Args:
        network: The network, on the window's device, in eval mode.
        window: One window of the image, ``(1, C, *roi)``.
        dtype: Autocast dtype, or None for fp32.
        batch: Windows per network call in the real run.
        cache_file: Probe results file; default :func:`default_cache_file`. Used only when it is a medseg
            backend cache or does not exist (:mod:`~medseg.sliding_window.probe_cache`).

    Returns:
        ``"eager"`` or ``"channels_last"``.
    """
    if batch * math.prod(window.shape[2:]) < PROBE_MIN_VOXELS or _first_weight(network) is None:
        return "eager"
    key = _probe_key(network, tuple(window.shape), window.device, dtype)
    if key in _memory_cache:
        return _memory_cache[key]
    path = cache_file or default_cache_file()
    stored = read_probe_cache(path)
    if stored.problem is not None:
        log.debug("forward backend probe: ignoring the cache file %s: it %s", path, stored.problem)
    entry = stored.entries.get(key)
    if isinstance(entry, dict) and entry.get("backend") in PROBE_CANDIDATES:
        _memory_cache[key] = str(entry["backend"])
        return _memory_cache[key]
    entry = _probe(network, window, dtype)
    _memory_cache[key] = entry["backend"]
    write_probe_cache(path, key, entry)  # when it cannot be written, the choice still holds for this process
    return entry["backend"]


def _probe(network: nn.Module, window: torch.Tensor, dtype: torch.dtype | None) -> dict[str, Any]:
    """Time each candidate on ``window``; the fastest whose labels agree with eager's wins."""
    times: dict[str, float] = {}
    agreement: dict[str, float] = {}
    reference: torch.Tensor | None = None
    for name in PROBE_CANDIDATES:
        with using_backend(network, name) as forward:
            best, y = _time_forward(forward, window, dtype)
        labels = y.argmax(1)
        times[name] = best
        if reference is None:
            reference = labels
        agreement[name] = float((labels == reference).float().mean())
    ok = [n for n in PROBE_CANDIDATES if agreement[n] >= PROBE_AGREEMENT]
    choice = min(ok, key=lambda n: times[n])
    log.info("forward backend probe on %s: %s; chosen %s", tuple(window.shape),
             ", ".join(f"{n} {times[n]:.3f} s (labels agree {agreement[n]:.4f})" for n in PROBE_CANDIDATES), choice)
    return {"backend": choice, "seconds": {n: round(t, 4) for n, t in times.items()}, "agreement": agreement}


def _time_forward(
    forward: Callable[[torch.Tensor], torch.Tensor], window: torch.Tensor, dtype: torch.dtype | None
) -> tuple[float, torch.Tensor]:
    """(fastest of 1 + :data:`PROBE_REPEATS` calls, output); the first call includes the kernels' selection."""
    best = math.inf
    for _ in range(1 + PROBE_REPEATS):
        start = time.perf_counter()
        y = _run(forward, window, dtype)
        best = min(best, time.perf_counter() - start)
    return best, y


def _run(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    autocast = torch.autocast(x.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with torch.no_grad(), autocast:
        y = forward(x)
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    return y


def _layout(spatial: int) -> torch.memory_format | None:
    return {2: torch.channels_last, 3: torch.channels_last_3d}.get(spatial)


def _first_weight(network: nn.Module) -> torch.Tensor | None:
    for module in network.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            return module.weight
    return None


def _is_layout(network: nn.Module, layout: torch.memory_format) -> bool:
    """Every convolution weight already is in ``layout``."""
    ndim = 5 if layout is torch.channels_last_3d else 4
    convs = [m for m in network.modules() if isinstance(m, nn.modules.conv._ConvNd) and m.weight.ndim == ndim]
    return all(m.weight.is_contiguous(memory_format=layout) for m in convs)


@contextlib.contextmanager
def using_backend(network: nn.Module, backend: str, spatial: int | None = None) -> Iterator[Callable[..., Any]]:
    """Yield a forward function running ``network`` with ``backend`` (not ``"auto"``: choose one first).

    ``"channels_last"`` and ``"compile"`` convert the network's weights to channels-last layout in place and leave
    them so (same values; the parameters stay the same objects, so an optimizer holding them is unaffected):
    converting a UNet's ~200 weights back and forth on every call cost a second on a loaded 2-core CPU. Inputs
    are converted per call; outputs keep the layout the network gives them. A network without torch convolutions
    runs eager whatever ``backend`` says.

    Args:
        network: The network.
        backend: ``"eager"``, ``"channels_last"`` or ``"compile"``.
        spatial: Spatial dims of the inputs; default from the first convolution (eager when unknown).

    Raises:
        ValueError: An unknown backend, or ``"auto"``.
    """
    if check_backend(backend) == "auto":
        raise ValueError("using_backend needs a concrete backend; resolve 'auto' with choose_backend first")
    weight = _first_weight(network)
    if spatial is None and weight is not None:
        spatial = weight.ndim - 2
    layout = _layout(spatial or 0)
    if backend == "eager" or layout is None or weight is None:
        yield network
        return
    if not _is_layout(network, layout):
        network.to(memory_format=layout)  # type: ignore[call-overload]  # in place: parameters stay the same objects
    network = folded_batch_norms(network)
    if not _is_layout(network, layout):
        network.to(memory_format=layout)  # type: ignore[call-overload]
    # torch.compile keeps its compiled code per forward function and guards, so a second call with the same
    # network and shapes does not compile again
    runner: Callable[..., Any] = torch.compile(network, dynamic=False) if backend == "compile" else network

    def forward(x: torch.Tensor) -> Any:
        return runner(x.contiguous(memory_format=layout))

    with channels_last_instance_norms(network):
        yield forward
