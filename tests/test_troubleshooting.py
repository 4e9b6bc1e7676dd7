"""docs/troubleshooting.md quotes the errors users hit most; each quote must be what medseg prints today.

Every entry of the page has one ```` ```text ```` block with the message as the user sees it (the CLI's
``error: ...`` line, or a Python exception). Here each error is produced again, in the page's order, in a
folder that stands in for the page's ``/data`` (so paths read the same), and compared with the quote:
``...`` in a quote stands for text that differs from run to run (UIDs, PyTorch's own wording).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from medseg.cli.main import app
from medseg.data.synthetic.polyp import make_polyp_dataset
from medseg.data.synthetic.spine import make_spine_dataset

PAGE = Path(__file__).resolve().parents[1] / "docs" / "troubleshooting.md"
_TEXT_BLOCK = re.compile(r"^```text\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def page_messages() -> list[str]:
    """The quoted messages of the page, in order."""
    return [block.strip() for block in _TEXT_BLOCK.findall(PAGE.read_text(encoding="utf-8"))]


def _cli_error(args: list[str], code: int) -> str:
    """Run ``medseg ARGS``; it must exit ``code`` with exactly one ``error:`` line and no traceback."""
    result = CliRunner().invoke(app, args)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.output
    return lines[0]


def _polyp_config(data: Path, **changes: object) -> dict:
    cfg = {"version": 1,
           "data": {"kind": "images2d", "root": "my-polyps", "image_size": [32, 32], "val_fraction": 0.25,
                    "labels": {"classes": {0: "background", 255: "polyp"}}},
           "model": {"spatial_dims": 2, "channels": [4, 8], "strides": [2], "num_res_units": 0},
           "train": {"max_epochs": 1, "batch_size": 2, "device": "cpu", "preview_samples": 0}}
    for key, value in changes.items():
        section, name = key.split(".", 1)
        cfg[section][name] = value
    return cfg


def _write(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _polyps(root: Path) -> Path:
    return make_polyp_dataset(root / "my-polyps", n=4, size=(32, 32), seed=0)


# ------------------------------------------------------------------------------------------- the ten errors
def missing_folder(root: Path) -> str:
    _polyps(root)
    return _cli_error(["train", str(_write(root / "polyps.yaml", _polyp_config(root, **{"data.images_dir": "imgs"}))),
                       "-o", str(root / "runs" / "polyps")], 1)


def unpaired_files(root: Path) -> str:
    data = _polyps(root)
    (data / "masks" / "case_002.png").unlink()
    (data / "masks" / "case_003.png").rename(data / "masks" / "case_003_mask.png")
    return _cli_error(["train", str(_write(root / "polyps.yaml", _polyp_config(root))),
                       "-o", str(root / "runs" / "polyps")], 1)


def unknown_label_value(root: Path) -> str:
    data = _polyps(root)
    from PIL import Image

    mask = np.array(Image.open(data / "masks" / "case_001.png"))
    mask[:4, :4] = 128
    Image.fromarray(mask).save(data / "masks" / "case_001.png")
    return _cli_error(["train", str(_write(root / "polyps.yaml", _polyp_config(root))),
                       "-o", str(root / "runs" / "polyps")], 1)


def patch_not_multiple(root: Path) -> str:
    make_spine_dataset(root / "my-spine", n_cases=2, shape=(24, 24, 32), spacing=(3.0, 3.0, 3.0), n_vertebrae=3)
    cfg = {"version": 1,
           "data": {"kind": "volumes3d", "root": "my-spine", "images_dir": "imagesTr", "masks_dir": "labelsTr",
                    "val_fraction": 0.5, "windows": ["bone"], "spacing_mm": [6.0, 6.0, 6.0],
                    "patch_size": [40, 40, 30]},
           "model": {"spatial_dims": 3, "channels": [4, 8, 16, 32], "strides": [2, 2, 2], "num_res_units": 0},
           "train": {"max_epochs": 1, "batch_size": 1, "device": "cpu", "preview_samples": 0}}
    return _cli_error(["train", str(_write(root / "spine.yaml", cfg)), "-o", str(root / "runs" / "spine")], 2)


def cuda_not_available(root: Path) -> str:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here, so asking for it is no error")
    _polyps(root)
    return _cli_error(["train", str(_write(root / "polyps.yaml", _polyp_config(root))), "--device", "cuda",
                       "-o", str(root / "runs" / "polyps")], 2)


def checkpoint_refused(root: Path) -> str:
    torch.save(torch.nn.Conv2d(3, 2, 3), root / "model.pt")  # a whole pickled module, not a medseg checkpoint
    _polyps(root)
    return _cli_error(["predict", str(root / "model.pt"), str(root / "my-polyps" / "images"), "-o",
                       str(root / "predictions")], 1)


def output_exists(root: Path) -> str:
    _polyps(root)
    (root / "runs" / "polyps").mkdir(parents=True)
    (root / "runs" / "polyps" / "log.json").write_text("[]")
    return _cli_error(["train", str(_write(root / "polyps.yaml", _polyp_config(root))),
                       "-o", str(root / "runs" / "polyps")], 2)


def unknown_config_key(root: Path) -> str:
    cfg = _polyp_config(root)
    cfg["train"] = {"max_epoch": 2, "batch_size": 2}
    return _cli_error(["config", "check", str(_write(root / "polyps.yaml", cfg))], 2)


def out_of_memory(root: Path) -> str:
    from medseg.sliding_window.predict import sliding_window_predict

    class AlwaysOutOfMemory(torch.nn.Module):  # stands in for a GPU that has no memory left
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(MemoryError) as err:
        sliding_window_predict(AlwaysOutOfMemory(), torch.zeros(1, 1, 64, 64, 64), 32, overlap=0.25)
    # on this CPU-only machine the device is "cpu"; the page shows the message as it reads on a GPU
    return f"{type(err.value).__module__}.{type(err.value).__name__}: {err.value}".replace(" on cpu ", " on cuda:0 ")


def several_series(root: Path) -> str:
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    from medseg.io import read_volume

    folder = root / "studies" / "patient_c"
    folder.mkdir(parents=True)
    for series, description in ((1, "CT spine"), (2, "CT spine, second reconstruction")):
        uid = generate_uid(entropy_srcs=[description])  # fixed UIDs: a fixed order of the series listed
        for k in range(3):
            ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
            ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SeriesNumber = uid, generate_uid(), series
            ds.SeriesDescription = description
            ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], float(ds.ImagePositionPatient[2]) + 5.0 * k]
            ds.save_as(folder / f"{series}_{k}.dcm")
    with pytest.raises(Exception) as err:
        read_volume(folder)
    return f"{type(err.value).__module__}.{type(err.value).__name__}: {err.value}"


TRIGGERS: list[Callable[[Path], str]] = [
    missing_folder, unpaired_files, unknown_label_value, patch_not_multiple, cuda_not_available,
    checkpoint_refused, output_exists, unknown_config_key, out_of_memory, several_series,
]


def _matches(quote: str, message: str) -> bool:
    pattern = ".*?".join(re.escape(part) for part in quote.split("..."))
    return re.fullmatch(pattern, message, re.DOTALL) is not None


def test_page_quotes_one_message_per_entry():
    assert len(page_messages()) == len(TRIGGERS) == 10


@pytest.mark.parametrize("index", range(len(TRIGGERS)), ids=[t.__name__ for t in TRIGGERS])
def test_quoted_message_is_what_medseg_prints(index, tmp_path, monkeypatch):
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.chdir(root)
    message = TRIGGERS[index](root).replace(str(root), "/data")
    quote = page_messages()[index]
    assert _matches(quote, message), f"page says:\n{quote}\nmedseg prints:\n{message}"


def test_quotes_with_gaps_still_have_to_match():
    assert _matches("error: x ... y", "error: x 123 y")
    assert not _matches("error: x ... y", "error: x 123 z")
    assert not _matches("error: x", "error: x and more")
