"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


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
