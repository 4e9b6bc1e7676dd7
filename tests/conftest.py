"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medseg.config.loading import validate_config
from medseg.data.synthetic.polyp import make_polyp_dataset
from medseg.data.synthetic.spine import make_spine_dataset
from medseg.training.loop import train

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _preprocessed_cache_in_tmp(tmp_path_factory):
    """Every test (and every process it starts) keeps the preprocessed volume cache in a temporary folder, never in
    the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDSEG_CACHE_DIR", str(tmp_path_factory.mktemp("medseg-cache")))
        yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of real sample data (``/work/shared/data``); fails on CI if missing, else skips."""
    if not SHARED_DATA.is_dir():
        message = f"shared sample data not found at {SHARED_DATA}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture(scope="session")
def kvasir(shared_data: Path) -> Path:
    """The real Kvasir-SEG subset (150 JPEG image/mask pairs)."""
    return shared_data / "kvasir-seg"


@pytest.fixture()
def tiny_2d_config() -> dict:
    """A small, fast images2d config dict (root filled in by the test)."""
    return {
        "data": {
            "kind": "images2d",
            "root": "data",
            "image_size": [32, 32],
            "val_fraction": 0.25,
            "labels": {"classes": {0: "background", 255: "polyp"}, "tolerance": 20},
            "augment": {"rotate_degrees": 10, "scale": 0.1},
        },
        "model": {"spatial_dims": 2, "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
        "train": {"max_epochs": 2, "batch_size": 4, "lr": 0.01, "device": "cpu", "preview_samples": 2},
    }


@pytest.fixture(scope="session")
def ckpt2d(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny images2d UNet trained one epoch on 6 synthetic polyp images, and its images.

    Shared by the prediction and export tests (read-only; a few seconds, once per session).
    """
    tmp = tmp_path_factory.mktemp("tiny2d")
    data = make_polyp_dataset(tmp / "data", n=6, size=(32, 32), seed=1)
    cfg = validate_config({
        "data": {"kind": "images2d", "root": str(data), "image_size": [32, 32], "val_fraction": 0.34,
                 "labels": {"classes": {0: "background", 255: "polyp"}, "tolerance": 20}},
        "model": {"spatial_dims": 2, "channels": [4, 8], "strides": [2], "num_res_units": 0},
        "train": {"max_epochs": 1, "batch_size": 2, "device": "cpu", "preview_samples": 0},
    })
    return train(cfg, run_dir=tmp / "run", progress=False).last_checkpoint, data / "images"


@pytest.fixture(scope="session")
def ckpt3d(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny volumes3d UNet trained one epoch on 2 small synthetic spine phantoms, and its images.

    Shared by the prediction tests (read-only; about a second, once per session).
    """
    tmp = tmp_path_factory.mktemp("tiny3d")
    root = make_spine_dataset(tmp / "data", n_cases=2, shape=(24, 24, 32), spacing=(3.0, 3.0, 3.0), n_vertebrae=3)
    classes = [{"name": "background", "values": [0]}] + [{"name": f"v{v}", "values": [v]} for v in (26, 27, 28)]
    cfg = validate_config({
        "data": {"kind": "volumes3d", "root": str(root), "images_dir": "imagesTr", "masks_dir": "labelsTr",
                 "val_fraction": 0.5, "labels": {"classes": classes}, "windows": ["bone"],
                 "spacing_mm": [6.0, 6.0, 6.0], "patch_size": [16, 16, 16], "samples_per_volume": 1},
        "model": {"spatial_dims": 3, "channels": [4, 8], "strides": [2], "num_res_units": 0},
        "train": {"max_epochs": 1, "batch_size": 1, "device": "cpu", "preview_samples": 0},
    })
    return train(cfg, run_dir=tmp / "run", progress=False).last_checkpoint, root / "imagesTr"


@pytest.fixture(autouse=True, scope="session")
def _probe_cache_in_tmp(tmp_path_factory):
    """The sliding window's forward-backend probe caches its choices in a session folder, not ~/.cache/medseg:
    through the environment, so the processes a test starts (CLI runs, prediction workers) do the same."""
    from medseg.sliding_window.backend import CACHE_FILE_ENV

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_FILE_ENV, str(tmp_path_factory.mktemp("probe") / "forward_backends.json"))
        yield
