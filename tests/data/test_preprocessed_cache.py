"""The preprocessed volume cache: reuse without reading, rebuild on change, exact agreement with fresh preprocessing,
atomic entries, memory maps that pickle small, ``medseg preprocess`` and training with and without it."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medseg.config.loading import validate_config
from medseg.config.schema import DataConfig
from medseg.data import volume_preprocessing
from medseg.data.labels import LabelMap
from medseg.data.pairing import find_pairs_from_config
from medseg.data.preprocessed_cache import (
    CachedCase,
    PreprocessedCache,
    cache_dir_for,
    cached_cases,
    preprocess_dataset,
)
from medseg.data.synthetic.spine import make_spine_dataset
from medseg.data.volume_dataset import PatchDataset, prepare_cases
from medseg.data.volume_preprocessing import VolumePreprocessor
from medseg.errors import ConfigError, DataError, MedsegError

LABELS = LabelMap.from_mapping({0: "background", 26: "v26", 27: "v27", 28: "v28"})


@pytest.fixture(scope="module")
def spine_source(tmp_path_factory) -> Path:
    return make_spine_dataset(tmp_path_factory.mktemp("spine") / "data", n_cases=3, shape=(24, 24, 32),
                              spacing=(3.0, 3.0, 3.0), n_vertebrae=3)


@pytest.fixture()
def spine(spine_source, tmp_path) -> Path:
    """A private copy (tests change its files)."""
    return Path(shutil.copytree(spine_source, tmp_path / "data"))


def _data(root: Path, **extra) -> DataConfig:
    return DataConfig(**{"kind": "volumes3d", "root": root, "images_dir": "imagesTr", "masks_dir": "labelsTr",
                         "spacing_mm": (4.0, 4.0, 4.0), **extra})


def _setup(root: Path, **extra):
    cfg = _data(root, **extra)
    return find_pairs_from_config(cfg), VolumePreprocessor.from_config(cfg)


@pytest.fixture()
def count_reads(monkeypatch):
    """Counts every volume file the preprocessor reads."""
    calls: list[Path] = []
    real = volume_preprocessing.read_volume

    def counting(path, *args, **kwargs):
        calls.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(volume_preprocessing, "read_volume", counting)
    return calls


def _assert_same_case(cached, fresh) -> None:
    assert cached.case_id == fresh.case_id
    assert cached.image.dtype == fresh.image.dtype == torch.float16
    assert cached.label.dtype == fresh.label.dtype == torch.uint8
    assert torch.equal(cached.image, fresh.image) and torch.equal(cached.label, fresh.label)
    for f in dataclasses.fields(fresh.grid):
        assert np.array_equal(np.asarray(getattr(cached.grid, f.name)), np.asarray(getattr(fresh.grid, f.name))), f
    assert sorted(cached.foreground) == sorted(fresh.foreground)
    for c, pos in fresh.foreground.items():
        assert np.array_equal(cached.foreground[c], pos)


def test_cached_cases_equal_fresh_ones_and_are_reused_without_reading(spine, tmp_path, count_reads):
    pairs, pre = _setup(spine)
    fresh = prepare_cases(pairs, pre, LABELS)
    count_reads.clear()
    first, report = cached_cases(pairs, pre, LABELS, root=tmp_path / "cache")
    assert report.built == ("case_000", "case_001", "case_002") and report.reused == ()
    assert len(count_reads) == 6  # image and label of each case, once
    count_reads.clear()
    again, report = cached_cases(pairs, pre, LABELS, root=tmp_path / "cache")
    assert count_reads == []
    assert report.built == () and report.reused == ("case_000", "case_001", "case_002")
    for cached, new in zip(again, fresh, strict=True):
        assert isinstance(cached, CachedCase)
        _assert_same_case(cached, new)
    assert sorted(p.name for p in report.folder.iterdir() if not p.name.startswith("case_")) == ["settings.json"]
    assert json.loads((report.folder / "settings.json").read_text())["labels"] == LABELS.to_dict()


def test_a_distributed_rank_builds_its_share_first(spine, tmp_path, count_reads):
    pairs, pre = _setup(spine)
    cases, report = cached_cases(pairs, pre, LABELS, root=tmp_path / "cache", share=(1, 2))
    assert [p.name for p in count_reads[::2]] == ["case_001.nii.gz", "case_000.nii.gz", "case_002.nii.gz"]
    assert [c.case_id for c in cases] == ["case_000", "case_001", "case_002"] and len(report.built) == 3


def test_a_changed_source_file_rebuilds_that_case_only(spine, tmp_path, count_reads):
    pairs, pre = _setup(spine)
    root = tmp_path / "cache"
    cached_cases(pairs, pre, LABELS, root=root)
    mask = spine / "labelsTr" / "case_001.nii.gz"
    img = nib.load(mask)
    edited = np.where(np.asarray(img.dataobj) == 27, 0, np.asarray(img.dataobj)).astype(np.uint8)
    st = os.stat(mask)
    nib.save(nib.Nifti1Image(edited, img.affine), mask)
    os.utime(mask, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a new mtime even on coarse clocks
    count_reads.clear()
    cases, report = cached_cases(pairs, pre, LABELS, root=root)
    assert report.built == ("case_001",) and report.reused == ("case_000", "case_002")
    assert [p.name for p in count_reads] == ["case_001.nii.gz", "case_001.nii.gz"]
    _assert_same_case(cases[1], prepare_cases(pairs[1:2], pre, LABELS)[0])
    assert 2 not in cases[1].foreground and 2 in cases[0].foreground  # class v27 gone from the edited case
    # only the mtime changes: rebuilt again (a stale entry stays beside the new one)
    os.utime(mask, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
    assert cached_cases(pairs, pre, LABELS, root=root)[1].built == ("case_001",)
    assert len([p for p in report.folder.iterdir() if p.name.startswith("case_001-")]) == 3


def test_settings_that_change_the_volumes_give_a_new_entry(spine, tmp_path):
    pairs, pre = _setup(spine)
    root = tmp_path / "cache"

    def folder(pre=pre, labels=LABELS, tolerance=0):
        return PreprocessedCache(root, pre, labels, tolerance=tolerance).folder

    _, report = cached_cases(pairs[:1], pre, LABELS, root=root)
    assert report.folder == folder()
    other = VolumePreprocessor({**pre.settings, "spacing_mm": [6.0, 6.0, 6.0]})
    cases, report = cached_cases(pairs[:1], other, LABELS, root=root)
    assert report.folder != folder() and report.built == ("case_000",)
    assert cases[0].grid.shape_out == prepare_cases(pairs[:1], other, LABELS)[0].grid.shape_out
    assert folder(VolumePreprocessor({**pre.settings, "windows": [[400, 1800]]})) != folder()
    assert folder(labels=LabelMap.from_mapping({0: "background", 26: "v26", 27: "v27", 28: "x"})) != folder()
    assert folder(tolerance=1) != folder()
    # the patch size and the kind do not change a prepared volume
    assert folder(VolumePreprocessor({**pre.settings, "patch_size": [8, 8, 8], "kind": "slices2d"})) == folder()


def test_a_killed_build_leaves_nothing_trusted_and_its_folder_is_cleaned(spine, tmp_path, monkeypatch):
    pairs, pre = _setup(spine)
    root = tmp_path / "cache"
    real_save = np.save

    def killed(path, *args, **kwargs):
        if Path(path).name == "label.npy":
            raise KeyboardInterrupt  # the process stops between two files of an entry
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(np, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        cached_cases(pairs[:1], pre, LABELS, root=root)
    monkeypatch.setattr(np, "save", real_save)
    cache = PreprocessedCache(root, pre, LABELS)
    assert [p.name for p in cache.folder.iterdir()] == ["settings.json"]  # no entry, no temporary folder
    # a process killed hard leaves its temporary folder: ignored, then deleted once its process is gone
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    host = cache.entry(pairs[0]).name
    left = cache.folder / f".{host}@{_host_name()}@{int(dead.stdout)}@abc123.tmp"
    running = cache.folder / f".{host}@{_host_name()}@{os.getppid()}@def456.tmp"
    for folder in (left, running):
        folder.mkdir()
        (folder / "image.npy").write_bytes(b"partial")
    cases, report = cached_cases(pairs[:1], pre, LABELS, root=root)
    assert report.built == ("case_000",) and not left.exists() and running.exists()
    _assert_same_case(cases[0], prepare_cases(pairs[:1], pre, LABELS)[0])


def _host_name() -> str:
    import re
    import socket

    return re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname().replace("@", "_"))[:64] or "host"


def test_two_builds_of_one_entry_keep_one_complete_entry(spine, tmp_path, monkeypatch):
    pairs, pre = _setup(spine)
    cache = PreprocessedCache(tmp_path / "cache", pre, LABELS)
    assert cache.build(pairs[0]) is True and cache.build(pairs[0]) is False
    # a second process that looked before the first one finished computes the entry too; its rename loses
    monkeypatch.setattr(cache, "load", lambda pair: None)
    assert cache.build(pairs[0]) is True
    monkeypatch.undo()
    assert [p.name for p in cache.folder.iterdir() if p.name != "settings.json"] == [cache.entry(pairs[0]).name]
    _assert_same_case(cache.load(pairs[0]), prepare_cases(pairs[:1], pre, LABELS)[0])
    # a damaged entry (a file deleted by hand) is rebuilt, not trusted
    (cache.entry(pairs[0]) / "label.npy").unlink()
    assert cache.load(pairs[0]) is None and cache.build(pairs[0]) is True
    _assert_same_case(cache.load(pairs[0]), prepare_cases(pairs[:1], pre, LABELS)[0])


def test_cached_cases_pickle_small_and_patches_are_copies(spine, tmp_path):
    pairs, pre = _setup(spine, spacing_mm=(3.0, 3.0, 3.0))
    cases, _ = cached_cases(pairs[:1], pre, LABELS, root=tmp_path / "cache")
    case = cases[0]
    blob = pickle.dumps(case)
    assert len(blob) < case.image.nbytes // 4
    back = pickle.loads(blob)
    assert torch.equal(back.image, case.image) and torch.equal(back.label, case.label)
    ds = PatchDataset(cases, patch_size=(8, 8, 8), samples_per_volume=2, foreground_fraction=0.0, seed=0)
    before = case.image.clone()
    item = ds[0]
    item["image"].fill_(7.0)
    item["label"].fill_(3)
    assert torch.equal(case.image, before)
    reread = np.load(case.folder / "image.npy")
    assert np.array_equal(reread, before.numpy())


def test_errors_name_the_case_file(spine, tmp_path):
    pairs, pre = _setup(spine)
    (spine / "imagesTr" / "case_002.nii.gz").write_bytes(b"not a volume")
    with pytest.raises(DataError, match=r"case_002\.nii\.gz") as err:
        cached_cases(pairs, pre, LABELS, root=tmp_path / "cache")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="images2d"):
        preprocess_dataset(DataConfig(kind="images2d", root=spine))
    with pytest.raises(ConfigError, match="workers"):
        preprocess_dataset(_data(spine, cache_dir=tmp_path / "c"), workers=0)
    assert cache_dir_for(_data(spine, cache=False)) is None
    assert cache_dir_for(_data(spine)) == Path(os.environ["MEDSEG_CACHE_DIR"])


def test_medseg_preprocess_builds_then_reuses(spine, tmp_path):
    from medseg.cli.main import app

    classes = [{"name": "background", "values": [0]}] + [{"name": f"v{v}", "values": [v]} for v in (26, 27, 28)]
    config = tmp_path / "spine.yaml"
    config.write_text(json.dumps({
        "data": {"kind": "volumes3d", "root": "data", "images_dir": "imagesTr", "masks_dir": "labelsTr",
                 "labels": {"classes": classes}, "windows": ["bone"], "spacing_mm": [4.0, 4.0, 4.0],
                 "patch_size": [16, 16, 16], "cache_dir": "cache"},
        "model": {"spatial_dims": 3, "channels": [4, 8], "strides": [2], "num_res_units": 0},
    }))
    runner = CliRunner()
    first = runner.invoke(app, ["preprocess", str(config)])
    assert first.exit_code == 0, first.output
    assert "built 3 cases, reused 0 from " + str(tmp_path / "cache" / "v1-") in first.output
    second = runner.invoke(app, ["preprocess", str(config), "--set", "data.patch_size=[32,32,32]"])
    assert second.exit_code == 0 and "built 0 cases, reused 3" in second.output, second.output
    bad = runner.invoke(app, ["preprocess", str(config), "--workers", "0"])
    assert bad.exit_code == 2 and "--workers" in bad.output and len(bad.output.strip().splitlines()) == 1
    off = runner.invoke(app, ["preprocess", str(config), "--set", "data.cache=false"])
    assert off.exit_code == 2 and off.output.startswith("error: data.cache"), off.output


def test_worker_processes_build_and_report_a_bad_file_in_one_line(spine, tmp_path, monkeypatch):
    """Two worker processes, one pass. Forked here, since a spawned worker imports torch and MONAI again (over a
    minute on a busy 2-core machine); tasks, results and errors are pickled either way."""
    from medseg.data import preprocessed_cache

    monkeypatch.setattr(preprocessed_cache, "_START_METHOD", "fork")
    pairs, pre = _setup(spine)
    (spine / "labelsTr" / "case_001.nii.gz").write_bytes(b"broken")
    with pytest.raises(DataError, match=r"labelsTr/case_001\.nii\.gz") as err:
        cached_cases(pairs[:2], pre, LABELS, root=tmp_path / "cache", workers=2)
    assert "\n" not in str(err.value)
    # the other worker's case was running, so it was finished and published before the error came out
    cache = PreprocessedCache(tmp_path / "cache", pre, LABELS)
    _assert_same_case(cache.load(pairs[0]), prepare_cases(pairs[:1], pre, LABELS)[0])
    assert cache.load(pairs[1]) is None and not list(cache.folder.glob(".*.tmp"))


def test_training_with_the_cache_matches_training_without(spine, tmp_path, caplog):
    from medseg.training.loop import train

    classes = [{"name": "background", "values": [0]}] + [{"name": f"v{v}", "values": [v]} for v in (26, 27, 28)]
    raw = {
        "data": {"kind": "volumes3d", "root": str(spine), "images_dir": "imagesTr", "masks_dir": "labelsTr",
                 "val_fraction": 0.34, "labels": {"classes": classes}, "windows": ["bone"],
                 "spacing_mm": [6.0, 6.0, 6.0], "patch_size": [16, 16, 16], "samples_per_volume": 1,
                 "cache_dir": str(tmp_path / "cache")},
        "model": {"spatial_dims": 3, "channels": [4, 8], "strides": [2], "num_res_units": 0},
        "train": {"max_epochs": 1, "batch_size": 1, "device": "cpu", "preview_samples": 0},
    }
    plain = validate_config({**raw, "data": {**raw["data"], "cache": False}})
    a = train(plain, run_dir=tmp_path / "plain", progress=False)
    with caplog.at_level(logging.INFO, logger="medseg.training.volume_task"):
        b = train(validate_config(raw), run_dir=tmp_path / "cached", progress=False)
    assert "reused 0 cached cases, built 3" in caplog.text
    la = json.loads((a.run_dir / "log.json").read_text())
    lb = json.loads((b.run_dir / "log.json").read_text())
    assert la[0]["train_loss"] == lb[0]["train_loss"] and la[0]["val_loss"] == lb[0]["val_loss"]
    assert len(list((tmp_path / "cache").glob("v1-*/case_*"))) == 3


def test_open_file_limits_are_raised_and_never_mistaken_for_damage(spine, tmp_path, monkeypatch):
    """Each mapped array holds a file descriptor: 1,200 cases need more than the common soft limit of 1024."""
    import errno

    resource = pytest.importorskip("resource")  # not on Windows
    from medseg.data import cache_entries

    pairs, pre = _setup(spine)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1100:
        pytest.skip(f"hard open-file limit {hard} too low to test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
    try:
        cached_cases(pairs, pre, LABELS, root=tmp_path / "cache")
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == 6 + 1024
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    def exhausted(folder):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(cache_entries, "_map_arrays", exhausted)
    cache = PreprocessedCache(tmp_path / "cache", pre, LABELS)
    with pytest.raises(MedsegError, match="too many open files .*ulimit -n"):
        cache.load(pairs[0])
    assert (cache.entry(pairs[0]) / "image.npy").is_file()  # the entry was kept
