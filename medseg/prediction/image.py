"""2D image models: one image (resize, network, flip TTA, resize back, largest component) and a folder of them.

Outputs of :func:`predict_images`: ``OUT/<name>.png`` masks in the original gray values and, on request,
``OUT/<name>_overlay.png`` and per-mask statistics (``OUT/<name>.json`` sidecars with a ``statistics`` section,
``OUT/statistics.csv`` over all images; in pixels, as a 2D image has no spacing); each written atomically. A
rerun skips the images whose outputs all exist and writes only the missing outputs of the others. The settings
that shaped each mask are recorded in ``OUT/.medseg-predict/<name>.json`` (:mod:`medseg.prediction.case_records`)
and in the sidecars, and a rerun with other ones is refused unless ``overwrite``
(:mod:`medseg.prediction.run_settings`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medseg.atomic import atomic_path, write_json_atomic
from medseg.data.image_intensity import ImageIntensity
from medseg.errors import DataError
from medseg.io.images import IMAGE_SUFFIXES, display_uint8, read_image_values, read_mask, write_mask, write_overlay
from medseg.models.outputs import main_output
from medseg.prediction.case_records import (
    check_case_records,
    check_records_folder,
    remove_case_record,
    write_case_record,
)
from medseg.prediction.cases import BatchReport, Case, check_output_dir, check_unique_names, run_cases
from medseg.prediction.claims import Sharing
from medseg.prediction.loaded import LoadedModel, mean_probabilities
from medseg.prediction.postprocess import apply_postprocessing, keep_largest_component
from medseg.prediction.run_settings import SETTINGS_KEY, check_recorded_settings, label_settings
from medseg.prediction.statistics import IMAGE_COLUMNS, mask_statistics, statistics_section
from medseg.prediction.statistics_table import write_statistics_table

__all__ = ["check_image_array", "find_image_cases", "predict_image_classes", "predict_image_outputs",
           "predict_images", "write_probabilities_npz"]

def predict_image_classes(loaded: LoadedModel, image: str | Path | np.ndarray) -> np.ndarray:
    """Class indices 0..K-1 (uint8) of one 2D image, at the image's own size (see :func:`predict_image_outputs`)."""
    return predict_image_outputs(loaded, image, probabilities=False)[0]


@torch.no_grad()
def predict_image_outputs(loaded: LoadedModel, image: str | Path | np.ndarray, *, probabilities: bool
                          ) -> tuple[np.ndarray, np.ndarray | None]:
    """Class indices 0..K-1 (uint8) of one 2D image, at the image's own size, and on request the class
    probabilities there: float16 ``(K, H, W)``, class first, resized back like the labels (bilinear), so that their
    argmax is the labels except at ties and where postprocessing removed a region.

    The labels are the most probable class, or with ``infer.threshold`` (two classes) class 1 wherever its
    probability is ``>= threshold``.

    Args:
        loaded: A 2D image model.
        image: An image file, or an array (H, W, 3) / (H, W) of the dtype the model was trained on (uint8 0..255
            for 8-bit images, uint16 for 16-bit ones, any float dtype for float images); its values are normalised
            by the rule stored in the checkpoint (:mod:`medseg.data.image_intensity`).

    Raises:
        TypeError: ``image`` is neither a path nor a numpy array.
        DataError: Unreadable image, a folder, an empty array, an array that holds no numbers (object, string,
            bool dtypes) or NaN/Inf, a shape that is no image, values of another dtype than the training images
            (a float array to a model trained on uint8, a 16-bit image to an 8-bit model), or ``loaded`` is not a
            2D image model.
    """
    if loaded.kind.segments_volumes:
        raise DataError(
            f"{loaded.source}: this checkpoint was trained on {loaded.kind.value!r} data; "
            "predict_image needs a 2D image model (use predict for volumes)"
        )
    pre = loaded.preprocessing
    rule = ImageIntensity.from_preprocessing(pre)
    if isinstance(image, np.ndarray):
        array, where = check_image_array(image), "array"
    elif isinstance(image, (str, Path)):
        if Path(image).is_dir():
            raise DataError(f"{image}: is a folder; give one image file (medseg predict handles folders)")
        array, where = read_image_values(Path(image), color="rgb" if rule.color == "rgb" else "gray"), str(image)
    else:
        raise TypeError(f"image: expected a path (str or pathlib.Path) or a numpy array, got {type(image).__name__}")
    h, w = array.shape[:2]
    x = rule.normalise(array, where, trained="this model's training images were")[None]
    size = tuple(pre["image_size"])
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True) if x.shape[-2:] != size else x
    x = x.to(loaded.device)
    probs = mean_probabilities(loaded, lambda member: _forward(member, x))  # one model, or an ensemble's mean
    probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)[0].cpu()
    threshold = loaded.infer.threshold
    winner = probs.argmax(0) if threshold is None else probs[1] >= threshold
    classes = winner.to(torch.uint8).numpy()
    if loaded.infer.largest_component:
        classes = keep_largest_component(classes, loaded.labels.num_classes)
    if loaded.postprocessing:
        classes = apply_postprocessing(classes, loaded.postprocessing)
    return classes, probs.to(torch.float16).numpy() if probabilities else None


def _forward(loaded: LoadedModel, x: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities (1, K, H, W), averaged over flips when ``infer.tta``."""
    flips: list[tuple[int, ...]] = [()]
    if loaded.infer.tta:
        flips += [(2,), (3,), (2, 3)]
    batch = torch.cat([x.flip(f) if f else x for f in flips])
    probs = torch.softmax(main_output(loaded.model(batch)).float(), dim=1)
    out = torch.zeros_like(probs[:1])
    for p, f in zip(probs, flips, strict=True):
        out += p[None].flip(f) if f else p[None]
    return out / len(flips)


def check_image_array(array: np.ndarray, where: str = "array") -> np.ndarray:
    """Refuse an array that is no 2D image: empty, not numbers, NaN/Inf, or not (H, W) / (H, W, C).

    Example:
        >>> check_image_array(np.zeros((0, 0, 3), np.uint8))
        Traceback (most recent call last):
        ...
        medseg.errors.DataError: array: empty image (shape (0, 0, 3)); expected (H, W) or (H, W, 3) with H, W >= 1

    Raises:
        DataError: Naming ``where``, what was found and what is allowed.
    """
    if array.dtype.kind not in "iuf":
        raise DataError(f"{where}: dtype {array.dtype} holds no pixel values; allowed: integer dtypes (uint8 "
                        "0..255 as image files give) or float dtypes")
    if array.ndim not in (2, 3):
        raise DataError(f"{where}: shape {array.shape} is not a 2D image; expected (H, W) or (H, W, 3)")
    if array.size == 0:
        raise DataError(f"{where}: empty image (shape {array.shape}); expected (H, W) or (H, W, 3) with H, W >= 1")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise DataError(f"{where}: holds NaN or infinite values; pixel values must be finite")
    return array


def write_probabilities_npz(path: Path, probabilities: np.ndarray, class_names: Sequence[str]) -> Path:
    """``probabilities`` (float16 ``(K, H, W)``, class first) and ``class_names`` (K strings) in one compressed
    ``.npz``, written atomically: ``np.load(path)["probabilities"]``, ``np.load(path)["class_names"]``."""
    with atomic_path(path, suffix=".tmp.npz") as tmp, tmp.open("wb") as f:
        np.savez_compressed(f, probabilities=probabilities.astype(np.float16),
                            class_names=np.asarray(list(class_names), dtype=str))
    return path


def find_image_cases(inputs: Sequence[Path]) -> list[Case]:
    """Image files given directly or inside the given folders (not recursive), in sorted order.

    Raises:
        DataError: An input does not exist, a folder holds no images, or two inputs share a name.
    """
    cases: list[Case] = []
    for src in inputs:
        if src.is_file():
            cases.append(Case(src.stem, src))
        elif src.is_dir():
            files = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                           and not p.name.startswith("."))
            if not files:
                raise DataError(f"{src}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            cases += [Case(p.stem, p) for p in files]
        else:
            raise DataError(f"{src}: input does not exist")
    check_unique_names(cases)
    return cases


def predict_images(
    loaded: LoadedModel,
    inputs: Sequence[Path],
    out_dir: Path,
    *,
    overwrite: bool = False,
    overlay: bool = False,
    statistics: bool = False,
    probabilities: bool = False,
    progress: bool = True,
    sharing: Sharing | None = None,
) -> BatchReport:
    """Segment 2D images into ``out_dir/<name>.png`` masks in the original gray values.

    Args:
        loaded: A 2D image model.
        inputs: Image files and/or folders of images.
        out_dir: Output folder (created); must not be an input folder.
        overwrite: Redo cases whose output exists (otherwise they are skipped).
        overlay: Also write ``<name>_overlay.png`` with the mask drawn over the image.
        statistics: Also write ``<name>.json`` with per-mask statistics
            (:func:`~medseg.prediction.statistics.mask_statistics` over the gray image) and ``statistics.csv``
            over all finished images, skipped ones included.
        probabilities: Also write ``<name>_probabilities.npz`` (:func:`write_probabilities_npz`); a case is
            skipped only when every output asked for exists.
        progress: Progress bar on stderr.
        sharing: How this process shares ``out_dir`` with others (claim timeout, shard, run id); each case is
            claimed before it is computed (:mod:`medseg.prediction.claims`).

    Raises:
        ConfigError: ``out_dir`` is an input folder, or (without ``overwrite``) the record
            ``.medseg-predict/<name>.json`` of one of these cases whose mask exists or (with ``statistics``) a
            sidecar there made with other settings (:mod:`medseg.prediction.case_records`,
            :func:`~medseg.prediction.run_settings.check_recorded_settings`). A record or sidecar that cannot be
            read fails its case alone (listed in the report).
        DataError: ``out_dir/.medseg-predict`` is not a folder
            (:func:`~medseg.prediction.case_records.check_records_folder`), or a bad input.
    """
    inputs = [Path(p) for p in inputs]
    check_output_dir(out_dir, inputs)
    check_records_folder(out_dir)
    cases = find_image_cases(inputs)
    settings = label_settings(loaded)
    refused: dict[str, str] = {}  # the cases whose settings cannot be read: they fail alone
    if not overwrite:  # the cases whose masks this run keeps (skipped, or completed around the mask)
        kept = [c.name for c in cases if (out_dir / f"{c.name}.png").exists()]
        refused |= check_case_records(out_dir, kept, settings)
    if statistics and not overwrite:
        sidecars = check_recorded_settings([out_dir / f"{c.name}.json" for c in cases], settings, out_dir)
        refused = {path.stem: message for path, message in sidecars.items()} | refused  # a record's message first
    out_dir.mkdir(parents=True, exist_ok=True)

    def stats_of(case: Case, mask: np.ndarray) -> dict[str, object]:
        gray = read_image_values(case.source, color="gray")
        return statistics_section(mask_statistics(gray, mask, loaded.labels))

    def outputs_of(case: Case) -> list[Path]:
        return [out_dir / f"{case.name}.png",
                *([out_dir / f"{case.name}_probabilities.npz"] if probabilities else []),
                *([out_dir / f"{case.name}_overlay.png"] if overlay else []),
                *([out_dir / f"{case.name}.json"] if statistics else [])]

    def run(case: Case, todo: set[Path]) -> list[Path]:
        classes, probs = predict_image_outputs(loaded, case.source, probabilities=probabilities)
        mask = loaded.labels.to_values(classes)
        mask_path, paths = out_dir / f"{case.name}.png", []
        if probs is not None and out_dir / f"{case.name}_probabilities.npz" in todo:
            paths.append(write_probabilities_npz(out_dir / f"{case.name}_probabilities.npz", probs,
                                                 loaded.labels.names))
        if out_dir / f"{case.name}_overlay.png" in todo:
            image = display_uint8(read_image_values(case.source, color="rgb"))
            paths.append(write_overlay(out_dir / f"{case.name}_overlay.png", image, classes))
        if out_dir / f"{case.name}.json" in todo:
            kept = mask_path not in todo  # the mask of an earlier run, whose settings no file recorded
            described = read_mask(mask_path) if kept else mask
            sidecar = {"case": case.name, "input": str(case.source), "shape": list(described.shape),
                       "statistics": stats_of(case, described),
                       **({"postprocessing": loaded.postprocessing_record()} if loaded.postprocessing else {}),
                       SETTINGS_KEY: None if kept else settings}
            paths.append(write_json_atomic(out_dir / f"{case.name}.json", sidecar))
        if mask_path not in todo:
            return paths
        remove_case_record(out_dir, case.name)  # until the new mask is written, no record describes this case
        written = write_mask(mask_path, mask)
        write_case_record(out_dir, case.name, settings)  # no case output: never makes a case finished
        return [written, *paths]

    report = run_cases(cases, outputs_of, run, overwrite=overwrite, progress=progress, sharing=sharing,
                       refused=refused)
    if statistics:
        write_statistics_table(out_dir, [c for c in cases if c.name not in refused], IMAGE_COLUMNS,
                               is_done=lambda c: (out_dir / f"{c.name}.png").exists(),
                               compute=lambda c: stats_of(c, read_mask(out_dir / f"{c.name}.png")), report=report)
    return report
