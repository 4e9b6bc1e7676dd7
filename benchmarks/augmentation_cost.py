"""Cost of batch augmentation per training step, against the step itself (configs/kvasir.yaml's UNet, batch 8,
3 x 192 x 192, CPU): kvasir.yaml's ops alone, then with elastic deformation, random crop, blur and gamma added at
the same probability. Prints medians of 7 timings after 2 warm-ups, and (step + augmentation) / step.

No data needed (random tensors). The ratio adds to the data-loading overhead that benchmarks/kvasir_train.py
measures (target <= 1.15).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from medseg.config import AugmentConfig, ModelConfig
from medseg.data.augmentation import BatchAugment
from medseg.models.factory import build_model

KVASIR = {"flip": True, "rotate90": True, "rotate_degrees": 30, "scale": 0.15, "brightness": 0.15, "contrast": 0.2,
          "probability": 0.6}
NEW = {"elastic_probability": 0.6, "crop_probability": 0.6, "blur_probability": 0.6, "gamma_probability": 0.6}


def _median_time(run: Callable[[], object], repeats: int = 7) -> float:
    for _ in range(2):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    image, label = torch.rand(8, 3, 192, 192), torch.randint(0, 2, (8, 1, 192, 192))
    net = build_model(ModelConfig(channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2)), in_channels=3,
                      out_channels=2)
    optimizer = torch.optim.AdamW(net.parameters(), 1e-3)

    def step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(image), label[:, 0]).backward()
        optimizer.step()

    step_s = _median_time(step)
    for name, cfg in (("kvasir.yaml ops", KVASIR), ("kvasir.yaml ops + elastic, crop, blur, gamma", KVASIR | NEW)):
        aug = BatchAugment(AugmentConfig(**cfg), spatial_dims=2)
        aug_s = _median_time(lambda aug=aug: aug(image, label, torch.Generator().manual_seed(1)))
        print(f"{name}: augmentation {aug_s * 1000:.0f} ms, step {step_s * 1000:.0f} ms, "
              f"(step + augmentation) / step = {(step_s + aug_s) / step_s:.3f}")


if __name__ == "__main__":
    main()
