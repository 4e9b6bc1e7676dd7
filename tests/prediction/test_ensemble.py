"""Ensembles: `medseg predict A B ... INPUT`, `Ensemble.from_checkpoints`, folds of a run, refused mixtures.

Members: the session's tiny checkpoints (tests/conftest.py: ckpt2d, ckpt3d) and a second, different architecture
of each trained here on the same labels and preprocessing (the 3D one with another patch size, so its sliding
window uses other windows).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import weakref
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import medseg
from medseg.checkpoint import load_checkpoint, save_checkpoint
from medseg.cli.main import app
from medseg.config.loading import validate_config
from medseg.data.synthetic.polyp import make_polyp_dataset
from medseg.data.synthetic.spine import make_spine_dataset
from medseg.data.volume_preprocessing import VolumePreprocessor
from medseg.errors import CheckpointError, ConfigError
from medseg.io.volume_io import read_volume
from medseg.prediction import volume as volume_module
from medseg.prediction.ensemble import Ensemble, check_compatible, expand_checkpoints, is_model_path, split_arguments
from medseg.prediction.loaded import LoadedModel
from medseg.prediction.predictor import Predictor
from medseg.prediction.workers import load_sources, model_sources
from medseg.training import epoch_record, run_setup
from medseg.training.loop import train

runner = CliRunner()
F16 = 2e-3  # float16 rounding of a probability is at most 4.9e-4; two roundings and a mean stay well within this


def _train(cfg, run_dir: Path) -> Path:
    """Train without drawing the run's plots (no test here looks at them; they take most of a tiny run's time)."""
    with pytest.MonkeyPatch.context() as patch:
        for module, name in ((epoch_record, "plot_curves"), (epoch_record, "plot_confusion"),
                             (run_setup, "plot_preview")):
            patch.setattr(module, name, lambda *args, **kwargs: None)
        return train(cfg, run_dir=run_dir, progress=False).last_checkpoint


@pytest.fixture(scope="module")
def other2d(tmp_path_factory) -> Path:
    """A second images2d model (one level deeper than ckpt2d's) on the same labels and preprocessing."""
    tmp = tmp_path_factory.mktemp("ens2d")
    data = make_polyp_dataset(tmp / "data", n=6, size=(32, 32), seed=2)
    cfg = validate_config({
        "data": {"kind": "images2d", "root": str(data), "image_size": [32, 32], "val_fraction": 0.34,
                 "labels": {"classes": {0: "background", 255: "polyp"}, "tolerance": 20}},
        "model": {"spatial_dims": 2, "channels": [4, 8, 8], "strides": [2, 2], "num_res_units": 0},
        "train": {"max_epochs": 1, "batch_size": 2, "device": "cpu", "preview_samples": 0, "seed": 7},
    })
    return _train(cfg, tmp / "run")


@pytest.fixture(scope="module")
def other3d(tmp_path_factory) -> Path:
    """A second volumes3d model on ckpt3d's labels and preprocessing, with another depth and patch size."""
    tmp = tmp_path_factory.mktemp("ens3d")
    root = make_spine_dataset(tmp / "data", n_cases=2, shape=(24, 24, 32), spacing=(3.0, 3.0, 3.0), n_vertebrae=3,
                              seed=5)
    classes = [{"name": "background", "values": [0]}] + [{"name": f"v{v}", "values": [v]} for v in (26, 27, 28)]
    cfg = validate_config({
        "data": {"kind": "volumes3d", "root": str(root), "images_dir": "imagesTr", "masks_dir": "labelsTr",
                 "val_fraction": 0.5, "labels": {"classes": classes}, "windows": ["bone"],
                 "spacing_mm": [6.0, 6.0, 6.0], "patch_size": [12, 12, 12], "samples_per_volume": 1},
        "model": {"spatial_dims": 3, "channels": [4, 8, 8], "strides": [2, 2], "num_res_units": 0},
        "train": {"max_epochs": 1, "batch_size": 1, "device": "cpu", "preview_samples": 0, "seed": 3},
    })
    return _train(cfg, tmp / "run")


@pytest.fixture(scope="module")
def two_images(ckpt2d, tmp_path_factory) -> Path:
    """A folder with two of ckpt2d's images (fewer cases, same checks)."""
    folder = tmp_path_factory.mktemp("two_images")
    for image in sorted(ckpt2d[1].iterdir())[:2]:
        shutil.copy(image, folder / image.name)
    return folder


def _variant(ckpt: Path, out: Path, change) -> Path:
    """A copy of a checkpoint with ``change(payload)`` applied (labels or preprocessing edited)."""
    payload = load_checkpoint(ckpt)
    payload.pop("path")
    change(payload)
    return save_checkpoint(payload, out)


def _predict(*args: object) -> None:
    result = runner.invoke(app, ["predict", *map(str, args), "--device", "cpu"])
    assert result.exit_code == 0, result.output


def _npz(path: Path) -> np.ndarray:
    return np.load(path)["probabilities"].astype(np.float32)


# ------------------------------------------------------------------------------------------- identical members
def test_two_identical_2d_members_give_exactly_one_models_output(ckpt2d, two_images):
    ckpt, images = ckpt2d[0], two_images
    one = Predictor.from_checkpoint(ckpt, device="cpu")
    two = Ensemble.from_checkpoints([ckpt, ckpt], device="cpu")
    assert len(two.members) == 2 and two.members[0].model is not two.members[1].model
    for image in sorted(images.iterdir()):
        np.testing.assert_array_equal(two.predict(image, output="probabilities"),
                                      one.predict(image, output="probabilities"))
        np.testing.assert_array_equal(two.predict(image), one.predict(image))


def test_two_identical_3d_members_give_exactly_one_models_output(ckpt3d):
    ckpt, volumes = ckpt3d
    volume = read_volume(sorted(volumes.iterdir())[0])
    one = Predictor.from_checkpoint(ckpt, device="cpu", tta=True)  # TTA per member, as for one model
    two = Ensemble.from_checkpoints([ckpt, ckpt], device="cpu", tta=True)
    np.testing.assert_array_equal(two.predict(volume, output="probabilities"),
                                  one.predict(volume, output="probabilities"))
    labels = two.predict(volume)
    np.testing.assert_array_equal(labels.array, one.predict(volume).array)
    assert set(np.unique(labels.array)) <= {0, 26, 27, 28}


# ------------------------------------------------------------------------------------------- different members
def test_cli_ensemble_of_two_2d_models_is_the_mean_and_its_argmax(ckpt2d, other2d, two_images, tmp_path):
    ckpt, images = ckpt2d[0], two_images
    _predict(ckpt, images, "-o", tmp_path / "a", "--probabilities")
    _predict(other2d, images, "-o", tmp_path / "b", "--probabilities")
    _predict(ckpt, other2d, images, "-o", tmp_path / "ens", "--probabilities")
    _predict(ckpt, other2d, images, "-o", tmp_path / "thr", "--threshold", "0.3")
    names = sorted(p.stem for p in images.iterdir())
    assert sorted(p.stem for p in (tmp_path / "ens").glob("*.png")) == names
    differ = 0.0
    for name in names:
        pa, pb = _npz(tmp_path / "a" / f"{name}_probabilities.npz"), _npz(tmp_path / "b" / f"{name}_probabilities.npz")
        ens = _npz(tmp_path / "ens" / f"{name}_probabilities.npz")
        mean = (pa + pb) / 2
        np.testing.assert_allclose(ens, mean, atol=F16)
        differ = max(differ, float(np.abs(pa - pb).max()))
        mask = np.asarray(Image.open(tmp_path / "ens" / f"{name}.png"))
        clear = np.abs(mean[1] - mean[0]) > 2 * F16
        np.testing.assert_array_equal(mask[clear], np.where(mean.argmax(0) == 1, 255, 0)[clear])
        thr = np.asarray(Image.open(tmp_path / "thr" / f"{name}.png"))
        clear = np.abs(mean[1] - 0.3) > 2 * F16
        np.testing.assert_array_equal(thr[clear], np.where(mean[1] >= 0.3, 255, 0)[clear])
    assert differ > 0.05  # the members disagree, so the mean is neither of them


def test_cli_ensemble_of_two_3d_models_is_the_mean_and_its_argmax(ckpt3d, other3d, tmp_path):
    ckpt, volumes = ckpt3d
    case = sorted(volumes.iterdir())[0]
    name = case.name.removesuffix(".nii.gz")
    _predict(ckpt, case, "-o", tmp_path / "a", "--probabilities")
    _predict(other3d, case, "-o", tmp_path / "b", "--probabilities", "--overlap", "0.5")
    _predict(ckpt, other3d, case, "-o", tmp_path / "ens", "--probabilities", "--overlap", "0.5")

    def probs(folder: str) -> np.ndarray:
        return np.asarray(nib.load(tmp_path / folder / f"{name}_probabilities.nii.gz").dataobj, np.float32)

    pa, pb, ens = probs("a"), probs("b"), probs("ens")
    mean = (pa + pb) / 2
    np.testing.assert_allclose(ens, mean, atol=F16)
    assert float(np.abs(pa - pb).max()) > 5 * F16  # the members disagree beyond the tolerance
    labels = read_volume(tmp_path / "ens" / f"{name}.nii.gz").array
    top2 = np.sort(mean, axis=-1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 2 * F16
    assert clear.mean() > 0.5  # one-epoch models: probabilities near 1/4, many voxels within the tolerance
    np.testing.assert_array_equal(labels[clear], np.array([0, 26, 27, 28])[mean.argmax(-1)][clear])
    sidecar = json.loads((tmp_path / "ens" / f"{name}.json").read_text())
    members = sidecar["ensemble"]
    assert [m["checkpoint"] for m in members] == [str(ckpt), str(other3d)]
    assert [m["patch_size"] for m in members] == [[16, 16, 16], [12, 12, 12]]  # each its own windows
    assert {m["infer"]["overlap"] for m in members} == {0.5}  # the option applies to every member
    assert sidecar["checkpoint"].startswith("ensemble of 2 (")


# ------------------------------------------------------------------------------------------- folds of a run
def test_fold_parent_folder_stands_for_every_fold(ckpt2d, other2d, two_images, tmp_path):
    ckpt, images = ckpt2d[0], two_images
    run = tmp_path / "run"
    for k, src in ((0, ckpt), (1, other2d)):
        (run / f"fold_{k}" / "checkpoints").mkdir(parents=True)
        shutil.copy(src, run / f"fold_{k}" / "checkpoints" / "best.pt")
    (run / "cv_predictions").mkdir()
    assert expand_checkpoints([run]) == [run / "fold_0", run / "fold_1"]
    ens = medseg.Ensemble.from_checkpoint(run, device="cpu")
    assert [m.source for m in ens.members] == [str(run / f"fold_{k}" / "checkpoints" / "best.pt") for k in (0, 1)]
    _predict(run, images, "-o", tmp_path / "folds")
    _predict(ckpt, other2d, images, "-o", tmp_path / "files")
    for mask in sorted((tmp_path / "files").glob("*.png")):
        assert (tmp_path / "folds" / mask.name).read_bytes() == mask.read_bytes()
    # one fold alone is still a single model, and a data folder with fold_K sub-folders but no checkpoint no model
    assert type(medseg.Predictor.from_checkpoint(run / "fold_0")) is Predictor
    with pytest.raises(CheckpointError, match=r"run: a folder of 2 fold runs \(fold_0 \.\.\.\), not one run; give one "
                                              r"fold \(.*fold_0\) or predict with all of them as an ensemble"):
        Predictor.from_checkpoint(run)
    (tmp_path / "data" / "fold_0").mkdir(parents=True)
    assert is_model_path(run) and not is_model_path(tmp_path / "data") and not is_model_path(images)


def test_split_arguments_takes_leading_models_then_inputs(ckpt2d, tmp_path):
    ckpt, images = ckpt2d
    assert split_arguments([ckpt, ckpt.parent.parent, images]) == ([ckpt, ckpt.parent.parent], [images])
    assert split_arguments([images, images]) == ([images], [images])  # the first one is always the model
    with pytest.raises(ConfigError, match=r"^INPUTS: none after the models .*; give images, volumes or folders"):
        split_arguments([ckpt, tmp_path / "missing.pt"])


# ------------------------------------------------------------------------------------------- refused mixtures
@pytest.mark.parametrize(("edit", "what"), [
    (lambda p: p["labels"]["classes"][1].update(name="lesion"),
     "labels (class 1: 'polyp' values [255] vs 'lesion' values [255])"),
    (lambda p: p["labels"]["classes"][1].update(values=[128]),
     "labels (class 1: 'polyp' values [255] vs 'polyp' values [128])"),
    (lambda p: p["preprocessing"].update(image_size=[48, 48]), "preprocessing.image_size ([32, 32] vs [48, 48])"),
    (lambda p: p["preprocessing"].update(color="gray"), "preprocessing.color ('rgb' vs 'gray')"),
])
def test_cli_refuses_members_that_disagree_naming_both_and_the_key(ckpt2d, tmp_path, edit, what):
    ckpt, images = ckpt2d
    bad = _variant(ckpt, tmp_path / "bad.pt", edit)
    result = runner.invoke(app, ["predict", str(ckpt), str(bad), str(images), "-o", str(tmp_path / "out"),
                                 "--device", "cpu"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert lines == [f"error: ensemble: {ckpt} and {bad} differ in {what}; members must share labels, preprocessing "
                     "and input channels (architectures and window sizes may differ)"]
    assert not (tmp_path / "out").exists()


def test_3d_members_must_share_spacing_and_kind(ckpt2d, ckpt3d, tmp_path):
    ckpt, volumes = ckpt3d
    bad = _variant(ckpt, tmp_path / "coarse.pt", lambda p: p["preprocessing"].update(spacing_mm=[4.0, 4.0, 4.0]))
    with pytest.raises(ConfigError, match=r"differ in preprocessing\.spacing_mm \(\[6\.0, 6\.0, 6\.0\] vs \[4\.0, "):
        Ensemble.from_checkpoints([ckpt, bad], device="cpu")
    result = runner.invoke(app, ["predict", str(ckpt), str(ckpt2d[0]), str(volumes), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "differ in data kind (volumes3d vs images2d)" in result.output


def test_check_compatible_in_channels_and_the_settings_applied_to_the_average(ckpt2d):
    a = Predictor.from_checkpoint(ckpt2d[0], device="cpu")
    with pytest.raises(ConfigError, match=r"differ in in_channels \(3 vs 1\)"):
        check_compatible(a, dataclasses.replace(a, in_channels=1))
    b = dataclasses.replace(a, infer=a.infer.model_copy(update={"threshold": 0.3}))
    with pytest.raises(ConfigError, match=r"differ in infer\.threshold \(None vs 0\.3\), which applies to their "
                                          r"average; give --threshold to choose it$"):
        check_compatible(a, b, spell=lambda name: "--" + name)
    check_compatible(a, dataclasses.replace(a, infer=a.infer.model_copy(update={"tta": True})))  # per member
    with pytest.raises(ConfigError, match="^Ensemble: no members"):
        Ensemble(a.model, a.config, a.labels, a.preprocessing, a.infer, a.device, a.kind)
    nested = Ensemble.of([Ensemble.of([a, a]), a])
    assert len(nested.members) == 3 and all(m is a for m in nested.members)


# ------------------------------------------------------------------------------------------- memory discipline
def test_volume_path_runs_each_member_once_into_one_running_sum(ckpt3d, other3d, monkeypatch):
    """Each member's sliding window runs once; its result is added into the first and dropped before the next
    member runs, and the inversion receives that one running sum."""
    ckpt, volumes = ckpt3d
    ens = Ensemble.from_checkpoints([ckpt, other3d, ckpt], device="cpu")
    calls: list[tuple[torch.nn.Module, weakref.ref, int]] = []
    real_infer, real_invert = volume_module.infer_prepared, VolumePreprocessor.invert_probabilities
    alive_at_start: list[list[bool]] = []

    def infer(model, *args, **kwargs):
        alive_at_start.append([ref() is not None for _, ref, _ in calls])
        out = real_infer(model, *args, **kwargs)
        calls.append((model, weakref.ref(out), out.data_ptr()))
        return out

    seen: list[tuple[int, list[bool]]] = []

    def invert(self, probs, grid, **kwargs):
        seen.append((probs.data_ptr(), [ref() is not None for _, ref, _ in calls]))
        return real_invert(self, probs, grid, **kwargs)

    monkeypatch.setattr(volume_module, "infer_prepared", infer)
    monkeypatch.setattr(VolumePreprocessor, "invert_probabilities", invert)
    ens.predict(read_volume(sorted(volumes.iterdir())[0]))
    assert [c[0] for c in calls] == [m.model for m in ens.members]
    # when member k runs, only the running sum (member 0's result) is alive; at the end it is what is inverted
    assert alive_at_start == [[], [True], [True, False]]
    assert seen == [(calls[0][2], [True, False, False])]


# ------------------------------------------------------------------------------------------- workers
def test_a_worker_loads_every_member_again_with_its_settings(ckpt2d, other2d, two_images):
    """What each --workers process (and a torchrun rank on another device) does before its claim loop."""
    ens = Ensemble.from_checkpoints([ckpt2d[0], other2d], device="cpu", tta=True)
    sources = model_sources(ens)
    assert [s for s, _ in sources] == [str(ckpt2d[0]), str(other2d)]
    again = load_sources(sources, torch.device("cpu"))
    assert isinstance(again, Ensemble) and [m.infer.tta for m in again.members] == [True, True]
    assert all(m.model is not n.model for m, n in zip(again.members, ens.members, strict=True))
    image = sorted(two_images.iterdir())[0]
    np.testing.assert_array_equal(again.predict(image, output="probabilities"),
                                  ens.predict(image, output="probabilities"))
    single = load_sources(model_sources(ens.members[0]), torch.device("cpu"))
    assert type(single) is LoadedModel and single.source == str(ckpt2d[0])
