"""Export to a MONAI bundle that MONAI's runner executes on NIfTI files, as ``medseg predict`` would.

The folder::

    BUNDLE/configs/metadata.json     MONAI bundle metadata (versions, network_data_format, labels) + "medseg"
    BUNDLE/configs/inference.json    network_def, preprocessing, inferer, postprocessing, evaluator
    BUNDLE/models/model.pt           the network's state dict (plain tensors; loads with weights_only=True)
    BUNDLE/scripts/medseg_transforms.py   medseg's resampling and padding as MONAI transforms (numpy, torch, MONAI)
    BUNDLE/docs/README.md            how to run it and what differs from ``medseg predict``

Run it with ``python -m monai.bundle run --config_file BUNDLE/configs/inference.json --bundle_root BUNDLE
--dataset_dir IN --output_dir OUT`` (needs ``fire``, ``nibabel`` and ``pytorch-ignite``, as MONAI's own
bundles do).

What the bundle does, step by step, and the medseg step it stands for: ``LoadImaged`` + ``EnsureChannelFirstd``
(read_volume); ``Orientationd`` (reorientation by axis permutation and flips, as medseg's); the bundled
``ResampleToSpacingd`` (medseg's extent-keeping resampling with anti-aliasing; MONAI's ``Spacingd`` differs);
``ScaleIntensityRanged`` per CT window, stacked as channels with ``CopyItemsd``/``ConcatItemsd`` (``ct_window``),
or ``NormalizeIntensityd`` (zscore); the bundled ``PadForNetworkd`` (zero padding to the network's divisor and
the roi, placed as medseg's tile plan places it); ``SimpleInferer``, one pass over the padded volume (volumes3d),
or ``SliceInferer`` with one window per padded slice (slices2d): for a network whose output does not depend on
the window, that is what medseg's tiles compute; ``Activationsd`` softmax, ``Invertd`` (padding cropped,
probabilities back to the input grid, trilinear), ``AsDiscreted`` argmax, ``KeepLargestConnectedComponentd``
when ``infer.largest_component``, ``MapLabelValued`` (class index -> the class's first gray value),
``SaveImaged``.

Refused rather than exported wrong (:func:`bundle_refusal`): 2D image models (images2d: MONAI's image readers
order PNG/JPEG axes differently and medseg resizes with antialiasing), flip test-time augmentation
(``infer.tta``), networks whose output depends on the window (instance or group norm: medseg then runs roi
windows, and MONAI's ``SlidingWindowInferer`` blends them with a clamped Gaussian that medseg does not use;
measured on a test model, 95.5 % of voxels agreed), and model names other than ``unet``.

Not refused: the bundle runs one pass where medseg may split a large volume into a few large tiles (they agree
but for the context lost at tile borders), in fp32 whatever ``infer.precision`` says, and memory grows with the
volume (override ``--inferer#_target_ SlidingWindowInferer --inferer#roi_size [96,96,96]`` to bound it, at the
price of agreement). Measured agreement with ``medseg predict``: docs/export.md.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

import medseg
import medseg.export.bundle_transforms as bundle_transforms
from medseg.atomic import folder_mode
from medseg.config.kinds import DataKind
from medseg.config.networks import ModelConfig
from medseg.data.volume_preprocessing import slice_axis_index
from medseg.dtypes import NIFTI_LABEL_DTYPES, smallest_int_dtype
from medseg.errors import ExportError, OutputExistsError
from medseg.export.checks import check_outputs, example_input, run_reference
from medseg.export.metadata import export_roi, input_channels, model_metadata
from medseg.prediction.loaded import LoadedModel
from medseg.sliding_window.plan import network_divisor, window_dependent_layers

__all__ = ["BUNDLE_VERSION", "bundle_refusal", "export_bundle", "inference_config"]

BUNDLE_VERSION = "0.1.0"
#: The MONAI bundle metadata schema the file follows (named in the file, as MONAI's own bundles do).
SCHEMA = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
SCRIPT_NAME = "medseg_transforms"


def bundle_refusal(loaded: LoadedModel) -> str | None:
    """Why ``loaded`` cannot become a faithful MONAI bundle, or None when it can."""
    if loaded.kind is DataKind.IMAGES2D:
        return ("images2d models are not exported as bundles (MONAI's PNG/JPEG readers transpose the axes and "
                "medseg resizes with antialiasing); use --format onnx or torchscript")
    channels = loaded.preprocessing.get("channels")
    if channels:
        return (f"the model takes {len(channels)} input files per case (data.channels); the bundle reads one image "
                "file; use --format onnx or torchscript")
    if loaded.infer.tta:
        return "infer.tta is true: MONAI's inferers have no flip test-time augmentation; retrain or export onnx"
    if loaded.infer.threshold is not None:
        return (f"infer.threshold is {loaded.infer.threshold}: the bundle's postprocessing takes the most probable "
                "class; export onnx (medseg predict applies the threshold) or retrain without it")
    if loaded.config.model.name != "unet":
        return f"model.name {loaded.config.model.name!r}: the bundle writer knows 'unet' only"
    layers = window_dependent_layers(loaded.model)
    if layers:
        norm = getattr(loaded.config.model, "norm", None)
        return (f"the network's output depends on the window ({', '.join(layers)}, model.norm "
                f"{norm!r}): medseg and MONAI's SlidingWindowInferer blend roi windows with "
                "different weights (MONAI clamps its Gaussian), so the labels would differ; use --format onnx")
    return None


def export_bundle(loaded: LoadedModel, folder: Path, *, overwrite: bool = False, check: bool = True
                  ) -> dict[str, Any]:
    """Write a MONAI bundle folder for ``loaded`` (built beside ``folder``, then renamed onto it).

    Args:
        loaded: A volumes3d or slices2d model loaded from a medseg checkpoint.
        folder: The bundle folder to create.
        overwrite: Replace an existing bundle folder (only one holding ``configs/metadata.json``, or empty).
        check: Build the network from ``configs/inference.json`` with MONAI's config parser, load
            ``models/model.pt`` into it and compare its logits with the PyTorch network's.

    Returns:
        ``{"max_abs_diff": float | None, "check_shape": [...]}``.

    Raises:
        ExportError: A model the bundle cannot reproduce (see :func:`bundle_refusal`), or a check failure.
        OutputExistsError: ``folder`` is a file; or it holds files and ``overwrite`` is false, or they are not a
            bundle (an empty folder is used).
    """
    reason = bundle_refusal(loaded)
    if reason is not None:
        raise ExportError(f"{folder}: cannot export a faithful MONAI bundle: {reason}")
    _check_target(folder, overwrite)
    folder.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        result = _write(loaded, build, check=check, name=str(folder))
        os.chmod(build, folder_mode())
        _replace(build, folder)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return result


def _write(loaded: LoadedModel, root: Path, *, check: bool, name: str) -> dict[str, Any]:
    for sub in ("configs", "models", "scripts", "docs"):
        (root / sub).mkdir()
    state = {k: v.detach().cpu().contiguous() for k, v in loaded.model.state_dict().items()}
    torch.save(state, root / "models" / "model.pt")
    config = inference_config(loaded)
    _write_json(root / "configs" / "inference.json", config)
    _write_json(root / "configs" / "metadata.json", bundle_metadata(loaded))
    (root / "scripts" / "__init__.py").write_text("", encoding="utf-8")
    (root / "scripts" / f"{SCRIPT_NAME}.py").write_text(inspect.getsource(bundle_transforms), encoding="utf-8")
    (root / "docs" / "README.md").write_text(_readme(loaded), encoding="utf-8")
    result: dict[str, Any] = {"max_abs_diff": None, "check_shape": None}
    if check:
        x = example_input(loaded)
        out = _bundle_network_output(root, config, x)
        result["max_abs_diff"] = check_outputs(run_reference(loaded, x), out, name)
        result["check_shape"] = list(x.shape)
    return result


def _bundle_network_output(root: Path, config: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
    """The network MONAI builds from ``network_def``, with ``models/model.pt`` loaded, on ``x``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser({"network_def": config["network_def"]})
    network = parser.get_parsed_content("network_def")
    try:
        network.load_state_dict(torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True))
    except RuntimeError as err:
        raise ExportError(f"{root}: network_def does not fit the weights: {str(err)[:200]}") from None
    with torch.no_grad():
        return network.eval()(x).float()


# ------------------------------------------------------------------------------------------ configs
def network_def(loaded: LoadedModel) -> dict[str, Any]:
    """MONAI's ``UNet`` with the arguments medseg's model factory gives it."""
    m = loaded.config.model
    if not isinstance(m, ModelConfig):  # bundle_refusal names it first
        raise ExportError(f"model.name {m.name!r}: the bundle writer knows 'unet' only")
    norm: Any = m.norm if m.norm != "group" else ["group", {"num_groups": min(8, m.channels[0])}]
    return {"_target_": "monai.networks.nets.UNet", "spatial_dims": m.spatial_dims,
            "in_channels": loaded.in_channels, "out_channels": loaded.labels.num_classes,
            "channels": list(m.channels), "strides": list(m.strides), "num_res_units": m.num_res_units,
            "norm": norm, "dropout": m.dropout}


def _preprocessing(loaded: LoadedModel) -> list[dict[str, Any]]:
    pre = loaded.preprocessing
    steps: list[dict[str, Any]] = [
        {"_target_": "LoadImaged", "keys": "image", "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": str(pre.get("orientation", "RAS")).upper(),
         "labels": None},
    ]
    if pre.get("spacing_mm") is not None:
        steps.append({"_target_": f"scripts.{SCRIPT_NAME}.ResampleToSpacingd", "keys": "image",
                      "pixdim": [float(s) for s in pre["spacing_mm"]]})
    if pre.get("intensity", "ct_window") == "zscore":
        steps.append({"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": False, "channel_wise": False})
    else:
        steps += _windows(pre)
    steps.append(_network_padding(loaded))
    return steps


def _windows(pre: dict[str, Any]) -> list[dict[str, Any]]:
    """One ``ScaleIntensityRanged`` per CT window, stacked as channels in the checkpoint's order."""
    steps: list[dict[str, Any]] = []
    windows = [(float(c), float(w)) for c, w in pre["windows"]]
    keys = ["image"] + [f"image_window{i}" for i in range(1, len(windows))]
    if len(keys) > 1:
        steps.append({"_target_": "CopyItemsd", "keys": "image", "times": len(keys) - 1, "names": keys[1:]})
    for key, (center, width) in zip(keys, windows, strict=True):
        steps.append({"_target_": "ScaleIntensityRanged", "keys": key, "a_min": center - width / 2,
                      "a_max": center + width / 2, "b_min": 0.0, "b_max": 1.0, "clip": True})
    if len(keys) > 1:
        steps.append({"_target_": "ConcatItemsd", "keys": keys, "name": "image", "dim": 0})
        steps.append({"_target_": "DeleteItemsd", "keys": keys[1:]})
    return steps


def _slice_axis(loaded: LoadedModel) -> int | None:
    if loaded.kind is not DataKind.SLICES2D:
        return None
    return slice_axis_index(str(loaded.preprocessing.get("orientation", "RAS")),
                            str(loaded.preprocessing.get("slice_axis", "axial")))


def _network_padding(loaded: LoadedModel) -> dict[str, Any]:
    """``PadForNetworkd`` with the network's divisor and roi as 3D sizes (1 on the slice axis of slices2d)."""
    roi = list(export_roi(loaded))
    divisor = [int(d) for d in network_divisor(loaded.model, loaded.kind.spatial_dims)]
    axis = _slice_axis(loaded)
    if axis is not None:
        roi.insert(axis, 1)
        divisor.insert(axis, 1)
    return {"_target_": f"scripts.{SCRIPT_NAME}.PadForNetworkd", "keys": "image", "divisor": divisor,
            "min_size": roi}


def _inferer(loaded: LoadedModel) -> dict[str, Any]:
    """One pass over the padded volume (volumes3d) or over each padded slice (slices2d): what medseg's tiles
    compute for a network whose output does not depend on the window (the only kind exported)."""
    axis = _slice_axis(loaded)
    if axis is None:
        return {"_target_": "SimpleInferer"}
    return {"_target_": "SliceInferer", "spatial_dim": axis, "roi_size": [-1, -1],
            "sw_batch_size": loaded.infer.sw_batch_size, "overlap": 0.0, "mode": "constant"}


def _postprocessing(loaded: LoadedModel) -> list[dict[str, Any]]:
    k = loaded.labels.num_classes
    values = [c.values[0] for c in loaded.labels.classes]
    dtype = smallest_int_dtype(min(values), max(values), NIFTI_LABEL_DTYPES) or np.dtype(np.int32)
    steps: list[dict[str, Any]] = [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
         "nearest_interp": False, "to_tensor": True},
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
    ]
    if loaded.infer.largest_component:
        steps.append({"_target_": "KeepLargestConnectedComponentd", "keys": "pred",
                      "applied_labels": list(range(1, k)), "independent": True, "connectivity": 1})
    steps += [
        {"_target_": "MapLabelValued", "keys": "pred", "orig_labels": list(range(k)), "target_labels": values},
        {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
         "output_ext": ".nii.gz", "resample": False, "separate_folder": False, "print_log": False,
         "output_dtype": f"$numpy.{dtype.name}"},
    ]
    return steps


def inference_config(loaded: LoadedModel) -> dict[str, Any]:
    """``configs/inference.json``: MONAI components with ids MONAI's tools expect (network_def, preprocessing,
    inferer, postprocessing, evaluator, run)."""
    return {
        "imports": ["$import glob", "$import numpy", "$import torch"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "$@bundle_root + '/data'",
        "datalist": "$sorted(glob.glob(@dataset_dir + '/*.nii.gz') + glob.glob(@dataset_dir + '/*.nii'))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": network_def(loaded),
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": _preprocessing(loaded)},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': path} for path in @datalist]",
                    "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 0},
        "inferer": _inferer(loaded),
        "postprocessing": {"_target_": "Compose", "transforms": _postprocessing(loaded)},
        "handlers": [{"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                      "load_dict": {"model": "@network"}, "map_location": "@device"}],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": False},
        "initialize": [],
        "run": ["$@evaluator.run()"],
    }


def bundle_metadata(loaded: LoadedModel) -> dict[str, Any]:
    """``configs/metadata.json``: the MONAI bundle schema's fields, the labels, and the medseg document."""
    import monai

    roi = list(export_roi(loaded))
    pre = loaded.preprocessing
    ct = pre.get("intensity", "ct_window") == "ct_window"
    names = loaded.labels.names
    meta = model_metadata(loaded, export={"format": "monai-bundle", "bundle_version": BUNDLE_VERSION,
                                          "torch_version": torch.__version__, "monai_version": monai.__version__})
    return {
        "schema": SCHEMA,
        "version": BUNDLE_VERSION,
        "changelog": {BUNDLE_VERSION: f"exported by medseg {medseg.__version__} from {loaded.source}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": _versions("nibabel", "pytorch-ignite", "fire"),
        "name": f"medseg {loaded.kind.value} segmentation ({', '.join(names[1:]) or names[0]})",
        "task": f"{loaded.kind.value} segmentation of {', '.join(names[1:])}",
        "description": f"A {loaded.config.model.name} trained with medseg, exported with its preprocessing, "
                       "sliding-window settings and label values; see docs/README.md",
        "authors": "exported by medseg export",
        "copyright": "as the training data and the model's owner state",
        "data_source": "see the medseg run this model comes from (medseg.source)",
        "data_type": "nibabel",
        "image_classes": f"{len(input_channels(loaded))} channel(s): {'; '.join(input_channels(loaded))}",
        "label_classes": "; ".join(f"{i} {c.name} (written as {c.values[0]})"
                                   for i, c in enumerate(loaded.labels.classes)),
        "intended_use": "research; validate before any clinical use",
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": "hounsfield" if ct else "magnitude", "modality": "CT" if ct else "any",
                "num_channels": loaded.in_channels, "spatial_shape": roi, "dtype": "float32",
                "value_range": [0, 1] if ct else [], "is_patch_data": True,
                "channel_def": {str(i): text for i, text in enumerate(input_channels(loaded))},
            }},
            "outputs": {"pred": {
                "type": "image", "format": "segmentation", "num_channels": loaded.labels.num_classes,
                "spatial_shape": roi, "dtype": "float32", "value_range": [], "is_patch_data": True,
                "channel_def": {str(i): name for i, name in enumerate(names)},
            }},
        },
        "labels": [{"index": i, "name": c.name, "output_value": c.values[0], "source_values": list(c.values)}
                   for i, c in enumerate(loaded.labels.classes)],
        "medseg": meta,
    }


def _versions(*packages: str) -> dict[str, str]:
    found = {}
    for name in packages:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def _readme(loaded: LoadedModel) -> str:
    notes = []
    if loaded.infer.precision in ("bf16", "fp16"):
        notes.append(f"- medseg runs this model in {loaded.infer.precision}; the bundle runs fp32.")
    return "\n".join([
        f"# medseg {loaded.kind.value} model: {', '.join(loaded.labels.names)}",
        "",
        f"Exported by medseg {medseg.__version__} from `{loaded.source}`.",
        "",
        "Run on every `.nii`/`.nii.gz` file of a folder (needs `monai`, `nibabel`, `pytorch-ignite`, `fire`):",
        "",
        "```",
        "python -m monai.bundle run --config_file BUNDLE/configs/inference.json --bundle_root BUNDLE \\",
        "    --dataset_dir IN_DIR --output_dir OUT_DIR",
        "```",
        "",
        "Each input `NAME.nii.gz` gives `OUT_DIR/NAME_seg.nii.gz` on the input's grid, in the label values of",
        "`configs/metadata.json` (`labels`: class index, name, value written).",
        "",
        "Compared with `medseg predict`: the same preprocessing (scripts/medseg_transforms.py reproduces medseg's",
        "resampling), but MONAI's sliding window places and blends windows differently, so a few voxels at",
        "class borders may differ.",
        *notes,
        "",
    ])


# ------------------------------------------------------------------------------------------ files
def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _check_target(folder: Path, overwrite: bool) -> None:
    """Refuse a file, a folder with content unless ``overwrite``, and a folder with content that is no bundle;
    an empty folder is used as it is (as ``medseg train`` and ``medseg demo`` use one)."""
    if not folder.exists() and not folder.is_symlink():
        return
    if not folder.is_dir() or folder.is_symlink():
        raise OutputExistsError(f"{folder}: exists and is not a folder; remove it or choose another output")
    if not any(folder.iterdir()):
        return
    if not overwrite:
        raise OutputExistsError(f"{folder}: exists; pass --overwrite to replace it")
    if not (folder / "configs" / "metadata.json").is_file():
        raise OutputExistsError(f"{folder}: exists and is not a bundle (no configs/metadata.json); refusing to "
                                "replace it, choose another output")


def _replace(build: Path, folder: Path) -> None:
    """Rename the finished bundle onto ``folder``; an old one is moved aside first and removed after."""
    old = None
    if folder.exists():
        old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.old.", suffix=".tmp"))
        os.replace(folder, old / folder.name)
    try:
        os.replace(build, folder)
    except BaseException:
        if old is not None:
            os.replace(old / folder.name, folder)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
