"""From a fingerprint to a complete, commented experiment config (``medseg plan``).

The rules, each written into the YAML next to the value it chose:

- **spacing** (volumes): the median spacing per axis; when the median is strongly anisotropic (largest / smallest
  > :data:`ANISOTROPY`), the coarse axis takes the 10th percentile of its spacings instead (nnU-Net's rule), so
  thin-slice cases are not thrown away to match thick ones.
- **patch** (volumes): the median case shape at that spacing, capped per axis, rounded to a multiple of the
  network's total stride, then shrunk along the axis that is largest relative to the median shape until one
  training step fits the stated memory (:func:`medseg.planning.memory.training_bytes`, a measured probe).
  **image size** (2D): the median image size scaled so its longer side is at most the cap, rounded likewise.
- **network**: MONAI's UNet, one level per halving while the smallest patch axis stays >= 8 at the bottom
  (at most 5 halvings), 32-320 features on CUDA (nnU-Net's widths), 16-256 on CPU; instance norm for volumes.
- **batch**: the largest that fits the memory, starting from 2 (volumes) or 12 (images) and capped so one batch
  covers at most 5 % of the data set's voxels (never below 2).
- **intensity**: CT: one window spanning the foreground's 0.5-99.5 percentiles (clip, then scale to [0, 1]);
  otherwise a per-case z-score; 8-bit images as they are. Several input channels (``case_0000``, ``case_0001``
  ...): ``data.channels``, each channel by the same rule on its own foreground statistics, named from
  ``dataset.json`` ``channel_names`` when present.

The rules are in :mod:`medseg.planning.plan_rules`, ``--device-memory`` in :mod:`medseg.planning.device_memory` and
the commented YAML in :mod:`medseg.planning.plan_document`; their public names are re-exported here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from medseg.atomic import write_text_atomic
from medseg.config.kinds import DataKind
from medseg.config.loading import load_config
from medseg.errors import ConfigError, DataError, OutputExistsError
from medseg.planning.device_memory import DeviceMemory, parse_device_memory
from medseg.planning.fingerprint import detect_layout, fingerprint
from medseg.planning.plan_document import Plan
from medseg.planning.plan_rules import ANISOTROPY, MEMORY_SHARE, plan_config

__all__ = ["ANISOTROPY", "MEMORY_SHARE", "DeviceMemory", "Plan", "PlanResult", "parse_device_memory", "plan_config",
           "plan_dataset"]


@dataclass(frozen=True)
class PlanResult:
    """What :func:`plan_dataset` wrote."""

    config_path: Path
    fingerprint_path: Path
    plan: Plan


def plan_dataset(data_dir: str | Path, output: str | Path | None = None, *, device_memory: str | None = None,
                 kind: str | None = None, overwrite: bool = False, progress: bool = False) -> PlanResult:
    """Fingerprint a data set and write a complete, commented config for it (``medseg plan``).

    Args:
        data_dir: The data set (nnU-Net raw layout ``imagesTr/`` + ``labelsTr/`` (+ ``dataset.json``), or
            medseg's ``images/`` + ``masks/``).
        output: The config to write (default ``<data set name>-plan.yaml`` in the current folder);
            ``<config name>.fingerprint.json`` is written beside it.
        device_memory: See :func:`parse_device_memory`.
        kind: ``volumes3d`` or ``images2d`` (default: from the file suffixes).
        overwrite: Replace an existing config / fingerprint.
        progress: Show a progress bar while reading the cases.

    Returns:
        The paths written and the plan.

    Raises:
        ConfigError: A bad ``kind`` or ``device_memory``.
        DataError: No usable data set at ``data_dir``.
        OutputExistsError: The config or fingerprint exists and not ``overwrite``.
    """
    data_dir = Path(data_dir)
    chosen: DataKind | None = None
    if kind is not None:
        try:
            chosen = DataKind(kind)
        except ValueError:
            raise ConfigError(f"--kind: got {kind!r}; allowed volumes3d, images2d") from None
        if chosen is DataKind.SLICES2D:
            raise ConfigError("--kind: slices2d is not planned; plan the volumes (volumes3d) and change "
                              "data.kind by hand")
    memory = parse_device_memory(device_memory)
    config_path = Path(output) if output is not None else Path(f"{data_dir.resolve().name}-plan.yaml")
    if config_path.suffix.lower() not in (".yaml", ".yml"):
        raise ConfigError(f"--output: {config_path} must end in .yaml or .yml")
    fingerprint_path = config_path.with_name(config_path.name.rsplit(".", 1)[0] + ".fingerprint.json")
    for path in (config_path, fingerprint_path):
        if path.exists() and not overwrite:
            raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")
    layout = detect_layout(data_dir, chosen)
    fp = fingerprint(layout, progress=progress)
    config_dir = config_path.resolve().parent
    try:
        root = os.path.relpath(data_dir.resolve(), config_dir)
    except ValueError:  # another drive on Windows
        root = str(data_dir.resolve())
    plan = plan_config(fp, memory, root=Path(root).as_posix())
    plan.header = [
        f"Planned by `medseg plan` from {len(fp.cases)} cases of {data_dir.resolve().name} "
        f"({fp.kind}, {fp.modality}); memory: {memory.label}.",
        f"Every chosen value says why; the data set's fingerprint is in {fingerprint_path.name} beside this file.",
        "Edit freely: this is a normal medseg config (medseg config check / medseg train).",
    ]
    try:
        config_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(fingerprint_path, fp.to_json())
        write_text_atomic(config_path, plan.yaml_text())
    except OSError as err:
        raise DataError(f"--output {config_path}: cannot write there ({err.strerror or err}); choose a writable "
                        "folder") from None
    load_config(config_path)  # the plan must be a valid config; a failure here is a bug in the planner
    return PlanResult(config_path, fingerprint_path, plan)
