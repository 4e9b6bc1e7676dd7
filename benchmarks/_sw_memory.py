"""Peak memory of one sliding-window job, run in its own process by benchmarks/sliding_window.py.

Usage: python benchmarks/_sw_memory.py {baseline,monai,medseg,medseg-instance} SIZE CLASSES DEVICE

The network is the benchmark's UNet with batch norm (eval mode, random weights); "medseg-instance" runs
medseg on the instance-norm variant, for which tiling "auto" uses roi-size windows.
Prints one line: ``peak_mb=<float>`` (CPU: VmHWM, the peak RSS; CUDA: max_memory_allocated).
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's medseg, like sliding_window.py
from medseg.sliding_window.predict import sliding_window_predict  # noqa: E402


def _vm_hwm_mb() -> float:
    """Peak RSS of this program. ru_maxrss would also count the parent's RSS at fork (kept across exec)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    mode, size, classes, device = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    torch.manual_seed(0)
    norm = "instance" if mode == "medseg-instance" else "batch"
    net = UNet(3, 1, classes, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2, norm=norm)
    net = net.eval().to(device)
    image = torch.rand(1, 1, size, size, size, device=device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        if mode == "monai":
            labels = sliding_window_inference(image, (96,) * 3, 4, net, overlap=0.25, mode="gaussian").argmax(1)
        elif mode in ("medseg", "medseg-instance"):
            labels = sliding_window_predict(net, image, 96, output="labels")
        else:
            labels = None
    del labels
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = _vm_hwm_mb()
    print(f"peak_mb={peak:.1f}")


if __name__ == "__main__":
    main()
