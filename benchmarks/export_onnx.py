"""Is ONNX Runtime faster than PyTorch on the CPU for a medseg network? One forward pass, fp32 both, same threads.

Run from the repository root: ``python benchmarks/export_onnx.py [--roi 96] [--repeats 3] [--threads N]``.
The network is medseg's default 3D UNet at channels 16-32-64-128, strides 2-2-2, two residual units, batch norm
(random weights: speed does not depend on them), exported the way ``medseg export`` exports (opset 18, dynamic
axes). Prints the median of ``--repeats`` timed passes after one warm-up for each runtime, their ratio, and the
max abs difference of the logits.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from medseg.config import validate_config  # noqa: E402
from medseg.export.onnx_export import OPSET  # noqa: E402
from medseg.models.factory import build_model  # noqa: E402


def _median_seconds(run, repeats: int) -> float:
    run()  # warm-up (allocations, ORT graph optimisation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--roi", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()

    import onnxruntime as ort

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = validate_config({"data": {"kind": "volumes3d", "root": "."},
                           "model": {"spatial_dims": 3, "channels": [16, 32, 64, 128], "strides": [2, 2, 2],
                                     "num_res_units": 2, "norm": "batch"}})
    net = build_model(cfg.model, in_channels=1, out_channels=2).eval()
    x = torch.randn(1, 1, args.roi, args.roi, args.roi)
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("x"), 3: torch.export.Dim("y"), 4: torch.export.Dim("z")}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "unet.onnx"
        program = torch.onnx.export(net, (torch.randn(2, 1, 32, 32, 32),), None, input_names=["image"],
                                    output_names=["logits"], opset_version=OPSET, dynamo=True,
                                    dynamic_shapes=(dims,), verbose=False)
        program.save(path, external_data=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])

        def run_ort():
            return session.run(None, {"image": x.numpy()})[0]

        def run_torch():
            with torch.no_grad():
                return net(x)

        t_torch = _median_seconds(run_torch, args.repeats)
        t_ort = _median_seconds(run_ort, args.repeats)
        diff = float((torch.from_numpy(run_ort()) - run_torch()).abs().max())
    print(f"3D UNet 16-32-64-128 (2 res units, batch norm), input 1x1x{args.roi}^3, fp32, {args.threads} threads, "
          f"median of {args.repeats}: PyTorch {torch.__version__} {t_torch:.3f}s, ONNX Runtime {ort.__version__} "
          f"{t_ort:.3f}s, ORT/PyTorch time {t_ort / t_torch:.2f}, max abs logit diff {diff:.2e}")


if __name__ == "__main__":
    main()
