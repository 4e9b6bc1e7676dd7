"""Hostile and broken inputs, built from the real files in ../shared/data: every one must end in one clear
medseg error line with the right exit code, within a time and memory cap, writing nothing under a final name.

Runs as root in CI, so "unreadable permission" is exercised as FIFOs, folders where files are expected,
symlink loops and over-long names (root reads any mode bits).
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

# --------------------------------------------------------------------------------------------- helpers
CT = "ct-organs-totalseg/example_ct_sm.nii.gz"
SEG = "ct-organs-totalseg/example_seg.nii.gz"
DCM = "dicom-seg-dcmqi/ct"
JPG = "kvasir-seg/images"


def _middle_of_largest_tensor(path: Path) -> int:
    """Offset of the middle byte of the largest stored tensor of a torch.save zip (not zip padding)."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as zf:
        info = max(zf.infolist(), key=lambda i: i.compress_size)
    data = path.read_bytes()
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    return info.header_offset + 30 + name_len + extra_len + info.compress_size // 2


def _flip(data: bytes, offset: int) -> bytes:
    b = bytearray(data)
    b[offset] ^= 0xFF
    return bytes(b)


def _nii_bytes(shared: Path) -> bytes:
    return gzip.decompress((shared / CT).read_bytes())


def _set_header(raw: bytes, fmt: str, offset: int, *values: object) -> bytes:
    b = bytearray(raw)
    struct.pack_into(fmt, b, offset, *values)
    return bytes(b)


def _png_with_size(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data = zlib.compress(b"\x00" * 16)
    idat = b"IDAT" + data
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
            + struct.pack(">I", len(data)) + idat + struct.pack(">I", zlib.crc32(idat))
            + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND")))


def _first_jpg(shared: Path) -> Path:
    return sorted((shared / JPG).glob("*.jpg"))[0]


# A volume case returns the path to give `medseg inspect`; the error line must name `name_hint`.
def _vol_cases() -> dict[str, Callable[[Path, Path], Path]]:
    def write(tmp: Path, name: str, data: bytes) -> Path:
        (tmp / name).write_bytes(data)
        return tmp / name

    def nifti(tmp: Path, name: str, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
        nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), tmp / name)
        return tmp / name

    def header_nan_affine(tmp: Path, s: Path) -> Path:
        img = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4))
        img.set_qform(None, code=0)
        img.set_sform(np.eye(4), code=1)
        raw = bytearray(img.header.binaryblock) + b"\x00" * 4 + bytes(4 * 4 * 4 * 2)
        struct.pack_into("<f", raw, 280, float("nan"))  # srow_x[0]
        return write(tmp, "nan_affine.nii", bytes(raw))

    def fifo(tmp: Path, s: Path) -> Path:
        os.mkfifo(tmp / "fifo.nii")
        return tmp / "fifo.nii"

    def loop(tmp: Path, s: Path) -> Path:
        os.symlink(tmp / "loop.nii.gz", tmp / "loop.nii.gz")
        return tmp / "loop.nii.gz"

    def folder_as_file(tmp: Path, s: Path) -> Path:
        (tmp / "folder.nii.gz").mkdir()
        return tmp / "folder.nii.gz"

    def mha(tmp: Path, name: str, dims: str, extra: bytes = b"\x00" * 64, datafile: str = "LOCAL") -> Path:
        header = (f"ObjectType = Image\nNDims = 3\nDimSize = {dims}\nElementType = MET_SHORT\n"
                  f"ElementSpacing = 1 1 1\nElementDataFile = {datafile}\n").encode()
        return write(tmp, name, header + extra)

    return {
        "nii_gz_truncated": lambda t, s: write(t, "trunc.nii.gz", (s / CT).read_bytes()[: 483312 // 2]),
        "nii_truncated": lambda t, s: write(t, "trunc.nii", _nii_bytes(s)[:200_000]),
        "nii_gz_bitflip_stream": lambda t, s: write(t, "flip.nii.gz", _flip((s / CT).read_bytes(), 200_000)),
        "nii_gz_bitflip_flags": lambda t, s: write(t, "flags.nii.gz", _flip((s / CT).read_bytes(), 3)),
        "nii_header_magic": lambda t, s: write(t, "magic.nii", _set_header(_nii_bytes(s), "4s", 344, b"xyz\0")),
        "nii_huge_dims": lambda t, s: write(t, "huge.nii", _set_header(_nii_bytes(s), "<8h", 40,
                                                                        3, 30000, 30000, 30000, 1, 1, 1, 1)),
        "nii_gz_huge_dims": lambda t, s: write(t, "huge.nii.gz", gzip.compress(_set_header(
            _nii_bytes(s), "<8h", 40, 3, 30000, 30000, 30000, 1, 1, 1, 1))),
        "nii_gz_dims_beyond_file": lambda t, s: write(t, "big.nii.gz", gzip.compress(_set_header(
            _nii_bytes(s), "<8h", 40, 3, 2000, 2000, 200, 1, 1, 1, 1))),
        "nii_zero_dim": lambda t, s: write(t, "zero.nii", _set_header(_nii_bytes(s), "<4h", 40, 3, 122, 0, 30)),
        "nii_negative_dim": lambda t, s: write(t, "neg.nii", _set_header(_nii_bytes(s), "<4h", 40, 3, -122, 101, 30)),
        "nii_bad_datatype": lambda t, s: write(t, "dtype.nii", _set_header(_nii_bytes(s), "<2h", 70, 1234, 16)),
        "nii_nan_voxels": lambda t, s: nifti(t, "nan.nii.gz", np.where(np.arange(64).reshape(4, 4, 4) == 5, np.nan,
                                                                          1.0).astype(np.float32)),
        "nii_inf_voxels": lambda t, s: nifti(t, "inf.nii", np.full((4, 4, 4), np.inf, np.float64)),
        "nii_complex": lambda t, s: nifti(t, "complex.nii", np.ones((4, 4, 4), np.complex64)),
        "nii_rgb24": lambda t, s: nifti(t, "rgb.nii", np.zeros((4, 4, 4), dtype=[("R", "u1"), ("G", "u1"),
                                                                               ("B", "u1")])),
        "nii_4d": lambda t, s: nifti(t, "four.nii", np.zeros((4, 4, 4, 3), np.int16)),
        "nii_2d": lambda t, s: nifti(t, "flat.nii", np.zeros((4, 4), np.int16)),
        "nii_nan_affine": header_nan_affine,
        "nii_empty_file": lambda t, s: write(t, "empty.nii", b""),
        "nii_gz_random_bytes": lambda t, s: write(t, "random.nii.gz", np.random.default_rng(0).bytes(4096)),
        "nii_text": lambda t, s: write(t, "text.nii", b"this is not an image\n" * 30),
        "nii_non_utf8_name": lambda t, s: write(t, os.fsdecode(b"\xff\xfe-trunc.nii.gz"),
                                                (s / CT).read_bytes()[:1000]),
        "nii_fifo": fifo,
        "nii_symlink_loop": loop,
        "nii_folder_not_file": folder_as_file,
        "nii_name_too_long": lambda t, s: t / ("x" * 300 + ".nii"),
        "nii_missing": lambda t, s: t / "absent.nii.gz",
        "mha_huge_dims": lambda t, s: mha(t, "huge.mha", "100000 100000 100000"),
        "mha_truncated": lambda t, s: mha(t, "short.mha", "64 64 64"),
        "mha_zero_dim": lambda t, s: mha(t, "zero.mha", "64 0 64"),
        "mhd_missing_raw": lambda t, s: mha(t, "gone.mhd", "4 4 4", b"", datafile="gone.raw"),
        "nrrd_huge_dims": lambda t, s: write(t, "huge.nrrd", b"NRRD0004\ntype: short\ndimension: 3\n"
                                                             b"sizes: 100000 100000 100000\nencoding: raw\n\n\x00\x00"),
        "unknown_suffix": lambda t, s: write(t, "volume.xyz", b"data"),
    }


VOLUME_CASES = _vol_cases()


@pytest.mark.parametrize("case", sorted(VOLUME_CASES))
def test_bad_volume_file_inspect(case, tmp_path, shared_data, run_cli):
    path = VOLUME_CASES[case](tmp_path, shared_data)
    hint = os.fsencode(path.name)[-12:].decode("utf-8", "ignore")
    out = run_cli(case, ["inspect", path], expect=(1,), names=[hint])
    assert out.kind == "clear", out.detail


def test_valid_volume_with_non_utf8_name_is_described(tmp_path, shared_data, run_cli):
    path = tmp_path / os.fsdecode(b"\xff\xfe-ct.nii.gz")
    shutil.copy(shared_data / CT, path)
    from typer.testing import CliRunner

    from medseg.cli.main import app

    result = CliRunner().invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert b"\xff\xfe-ct.nii.gz: nifti volume, shape (122, 101, 30)" in result.stdout_bytes


# --------------------------------------------------------------------------------------------- DICOM
def _dicom_copy(shared: Path, tmp: Path) -> Path:
    folder = tmp / "series"
    shutil.copytree(shared / DCM, folder)
    return folder


def _edit_all(folder: Path, edit: Callable[[object], None]) -> None:
    import pydicom

    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(f)
        edit(ds)
        ds.save_as(f)


def _dicom_cases() -> dict[str, Callable[[Path], None]]:
    def no_pixels(folder: Path) -> None:
        _edit_all(folder, lambda ds: ds.__delattr__("PixelData"))

    def rows_lie_huge(folder: Path) -> None:
        def edit(ds: object) -> None:
            ds.Rows, ds.Columns = 65535, 65535  # type: ignore[attr-defined]
        _edit_all(folder, edit)

    def rows_lie_small(folder: Path) -> None:
        def edit(ds: object) -> None:
            ds.Rows = 600  # type: ignore[attr-defined]
        _edit_all(folder, edit)

    def truncated_one(folder: Path) -> None:
        f = sorted(folder.iterdir())[1]
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])

    def all_truncated(folder: Path) -> None:
        for f in folder.iterdir():
            f.write_bytes(f.read_bytes()[:600])

    def garbage(folder: Path) -> None:
        for i, f in enumerate(sorted(folder.iterdir())):
            f.write_bytes(np.random.default_rng(i).bytes(3000))

    def empty(folder: Path) -> None:
        for f in folder.iterdir():
            f.unlink()

    return {"dicom_no_pixel_data": no_pixels, "dicom_rows_claim_huge": rows_lie_huge,
            "dicom_rows_mismatch": rows_lie_small, "dicom_one_file_truncated": truncated_one,
            "dicom_all_truncated": all_truncated, "dicom_garbage_files": garbage, "dicom_empty_folder": empty}


DICOM_CASES = _dicom_cases()


@pytest.mark.parametrize("case", sorted(DICOM_CASES))
def test_bad_dicom_series_read_refused(case, tmp_path, shared_data, call_guarded):
    from medseg.io import read_volume

    folder = _dicom_copy(shared_data, tmp_path)
    DICOM_CASES[case](folder)
    out = call_guarded(case, lambda: read_volume(folder), names=["series"])
    assert out.kind == "clear", out.detail


def test_dicom_folder_with_fifo_loop_and_non_utf8_names_reads_the_series(tmp_path, shared_data, run_cli):
    folder = _dicom_copy(shared_data, tmp_path)
    for i, f in enumerate(sorted(folder.iterdir())):
        f.rename(folder / os.fsdecode(b"\xff" + bytes([0x30 + i]) + b".dcm"))
    os.mkfifo(folder / "pipe.dcm")
    os.symlink(folder / "loop", folder / "loop")
    (folder / "subdir.dcm").mkdir()
    out = run_cli("dicom_fifo_loop_nonutf8_inspect", ["inspect", folder], expect=(0,))
    assert out.exit_code == 0 and out.kind != "hung", out.detail
    assert "1 series (1 usable as volumes)" in out.stdout
    assert "not a regular file" in out.stdout  # the FIFO is reported, never opened
    from medseg.io import read_volume

    vol = read_volume(folder)
    assert vol.shape == (512, 512, 3)


# --------------------------------------------------------------------------------------------- 2D images
@pytest.fixture(scope="module")
def ckpt2d(tmp_path_factory) -> Path:
    from medseg.config import validate_config
    from medseg.data.synthetic.polyp import make_polyp_dataset
    from medseg.training.loop import train

    tmp = tmp_path_factory.mktemp("hostile2d")
    data = make_polyp_dataset(tmp / "data", n=6, size=(32, 32), seed=1)
    cfg = validate_config({
        "data": {"kind": "images2d", "root": str(data), "image_size": [32, 32], "val_fraction": 0.34,
                 "labels": {"classes": {0: "background", 255: "polyp"}, "tolerance": 20}},
        "model": {"spatial_dims": 2, "channels": [4, 8], "strides": [2], "num_res_units": 0},
        "train": {"max_epochs": 1, "batch_size": 2, "device": "cpu", "preview_samples": 0},
    })
    return train(cfg, run_dir=tmp / "run", progress=False).last_checkpoint


def _image_cases() -> dict[str, Callable[[Path, Path], Path]]:
    def write(tmp: Path, name: str, data: bytes) -> Path:
        (tmp / name).write_bytes(data)
        return tmp / name

    def fifo(tmp: Path, s: Path) -> Path:
        os.mkfifo(tmp / "pipe.png")
        return tmp / "pipe.png"

    def loop(tmp: Path, s: Path) -> Path:
        os.symlink(tmp / "loop.jpg", tmp / "loop.jpg")
        return tmp / "loop.jpg"

    return {
        "jpg_truncated": lambda t, s: write(t, "trunc.jpg", _first_jpg(s).read_bytes()[:5000]),
        "jpg_magic_flipped": lambda t, s: write(t, "magic.jpg", _flip(_first_jpg(s).read_bytes(), 1)),
        "jpg_sof_bitflip": lambda t, s: write(t, "sof.jpg", _flip(_flip(_first_jpg(s).read_bytes(), 163), 165)),
        "png_claims_100000x100000": lambda t, s: write(t, "bomb.png", _png_with_size(100_000, 100_000)),
        "png_claims_0x0": lambda t, s: write(t, "zero.png", _png_with_size(0, 0)),
        "png_empty_file": lambda t, s: write(t, "empty.png", b""),
        "png_text": lambda t, s: write(t, "text.png", b"not a png at all"),
        "jpg_non_utf8_name": lambda t, s: write(t, os.fsdecode(b"\xfe\xff-trunc.jpg"),
                                                _first_jpg(s).read_bytes()[:3000]),
        "png_fifo": fifo,
        "jpg_symlink_loop": loop,
        "jpg_name_too_long": lambda t, s: t / ("y" * 300 + ".jpg"),
        "jpg_missing": lambda t, s: t / "absent.jpg",
    }


IMAGE_CASES = _image_cases()


@pytest.mark.parametrize("case", sorted(IMAGE_CASES))
def test_bad_image_predict(case, tmp_path, shared_data, ckpt2d, run_cli):
    inputs = tmp_path / "in"
    inputs.mkdir()
    path = IMAGE_CASES[case](inputs, shared_data)
    out_dir = tmp_path / "out"
    hint = os.fsencode(path.name)[-10:].decode("utf-8", "ignore")
    out = run_cli(case, ["predict", ckpt2d, path, "-o", out_dir, "--device", "cpu", "-q"], expect=(1,),
                  names=[hint])
    assert out.kind == "clear", out.detail
    finals = [p for p in out_dir.rglob("*") if not p.name.startswith(".")] if out_dir.is_dir() else []
    assert finals == []


def test_bad_image_among_good_ones_fails_alone(tmp_path, shared_data, ckpt2d, run_cli):
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = sorted((shared_data / JPG).glob("*.jpg"))[:2]
    for f in good:
        shutil.copy(f, inputs / f.name)
    (inputs / "bad.jpg").write_bytes(good[0].read_bytes()[:4000])
    out = run_cli("jpg_truncated_among_good", ["predict", ckpt2d, inputs, "-o", tmp_path / "out", "-q",
                                               "--device", "cpu"], expect=(1,), names=["bad.jpg"])
    assert out.kind == "clear", out.detail
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(f"{f.stem}.png" for f in good)
    # the settings records (OUT/.medseg-predict/<name>.json) of the good images only
    assert sorted(p.name for p in (out / ".medseg-predict").iterdir()) == sorted(f"{f.stem}.json" for f in good)


# --------------------------------------------------------------------------------------------- checkpoints
class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.marker,))


def _ckpt_cases() -> dict[str, Callable[[Path, Path], Path]]:
    def evil(tmp: Path, good: Path) -> Path:
        torch.save({"format": "medseg-checkpoint", "payload": _Evil(tmp / "PWNED")}, tmp / "evil.pt")
        return tmp / "evil.pt"

    def raw_pickle(tmp: Path, good: Path) -> Path:
        (tmp / "raw.pt").write_bytes(pickle.dumps(_Evil(tmp / "PWNED")))
        return tmp / "raw.pt"

    def edited(name: str, **changes: object) -> Callable[[Path, Path], Path]:
        def build(tmp: Path, good: Path) -> Path:
            payload = torch.load(good, weights_only=True)
            payload.update(changes)
            torch.save(payload, tmp / name)
            return tmp / name
        return build

    def write(name: str, data: Callable[[Path], bytes]) -> Callable[[Path, Path], Path]:
        def build(tmp: Path, good: Path) -> Path:
            (tmp / name).write_bytes(data(good))
            return tmp / name
        return build

    return {
        "ckpt_pickled_object": evil,
        "ckpt_raw_pickle": raw_pickle,
        "ckpt_truncated": write("trunc.pt", lambda g: g.read_bytes()[: g.stat().st_size // 2]),
        "ckpt_bitflip": write("flip.pt", lambda g: _flip(g.read_bytes(), _middle_of_largest_tensor(g))),
        "ckpt_random_bytes": write("random.pt", lambda g: np.random.default_rng(1).bytes(5000)),
        "ckpt_empty": write("empty.pt", lambda g: b""),
        "ckpt_plain_state_dict": lambda t, g: (torch.save({"w": torch.ones(2)}, t / "plain.pt"), t / "plain.pt")[1],
        "ckpt_labels_malformed": edited("labels.pt", labels={"classes": "polyp"}),
        "ckpt_out_channels_lie": edited("outch.pt", out_channels=7),
        "ckpt_in_channels_negative": edited("inch.pt", in_channels=-1),
        "ckpt_config_not_dict": edited("cfg.pt", config=[1, 2]),
        "ckpt_newer_format": edited("newer.pt", format_version=99),
        "ckpt_weights_wrong_shape": edited("weights.pt", state_dict={"model.0.conv.weight": torch.zeros(1)}),
    }


CKPT_CASES = _ckpt_cases()


@pytest.mark.parametrize("case", sorted(CKPT_CASES))
def test_bad_checkpoint_predict(case, tmp_path, shared_data, ckpt2d, run_cli):
    ckpt = CKPT_CASES[case](tmp_path, ckpt2d)
    image = _first_jpg(shared_data)
    out = run_cli(case, ["predict", ckpt, image, "-o", tmp_path / "out", "--device", "cpu", "-q"],
                  expect=(1, 2), names=[ckpt.name])
    assert out.kind == "clear", out.detail
    assert not (tmp_path / "PWNED").exists(), "loading the checkpoint ran code"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# --------------------------------------------------------------------------------------------- evaluate
def _eval_cases() -> dict[str, Callable[[Path, Path], tuple[Path, Path, str]]]:
    def pair(tmp: Path) -> tuple[Path, Path]:
        (tmp / "pred").mkdir()
        (tmp / "truth").mkdir()
        return tmp / "pred", tmp / "truth"

    def vol(name: str, pred_array: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path, Path], tuple]:
        def build(tmp: Path, s: Path) -> tuple[Path, Path, str]:
            pred, truth = pair(tmp)
            img = nib.load(s / SEG)
            seg = np.asarray(img.dataobj)
            shutil.copy(s / SEG, truth / "case.nii.gz")
            nib.save(nib.Nifti1Image(pred_array(seg), img.affine), pred / "case.nii.gz")
            return pred, truth, "case.nii.gz"
        return build

    def truncated_pred(tmp: Path, s: Path) -> tuple[Path, Path, str]:
        pred, truth = pair(tmp)
        shutil.copy(s / SEG, truth / "case.nii.gz")
        (pred / "case.nii.gz").write_bytes((s / SEG).read_bytes()[:9000])
        return pred, truth, "case.nii.gz"

    def huge_truth(tmp: Path, s: Path) -> tuple[Path, Path, str]:
        pred, truth = pair(tmp)
        shutil.copy(s / SEG, pred / "case.nii.gz")
        raw = gzip.decompress((s / SEG).read_bytes())
        (truth / "case.nii").write_bytes(_set_header(raw, "<8h", 40, 3, 30000, 30000, 30000, 1, 1, 1, 1))
        return pred, truth, "case.nii"

    def truncated_mask(tmp: Path, s: Path) -> tuple[Path, Path, str]:
        pred, truth = pair(tmp)
        m = sorted((s / "kvasir-seg/masks").glob("*.jpg"))[0]
        shutil.copy(m, truth / m.name)
        (pred / f"{m.stem}.png").write_bytes(_png_with_size(100_000, 100_000))
        return pred, truth, f"{m.stem}.png"

    def empty_folders(tmp: Path, s: Path) -> tuple[Path, Path, str]:
        pred, truth = pair(tmp)
        return pred, truth, "pred"

    return {
        "eval_pred_nan_voxels": vol("nan", lambda a: np.where(a > 0, np.nan, 0).astype(np.float32)),
        "eval_pred_shape_mismatch": vol("shape", lambda a: a[:-1].copy()),
        "eval_pred_truncated": truncated_pred,
        "eval_truth_header_huge": huge_truth,
        "eval_pred_png_bomb": truncated_mask,
        "eval_empty_folders": empty_folders,
    }


EVAL_CASES = _eval_cases()


@pytest.mark.parametrize("case", sorted(EVAL_CASES))
def test_bad_evaluate_inputs(case, tmp_path, shared_data, run_cli):
    pred, truth, hint = EVAL_CASES[case](tmp_path, shared_data)
    csv = tmp_path / "metrics.csv"
    out = run_cli(case, ["evaluate", "--pred", pred, "--truth", truth, "-o", csv], expect=(1,), names=[hint])
    assert out.kind == "clear", out.detail
    assert not csv.exists()


# --------------------------------------------------------------------------------------------- configs
GOOD = {
    "data": {"kind": "images2d", "root": "data", "image_size": [32, 32]},
    "model": {"spatial_dims": 2, "channels": [4, 8], "strides": [2]},
    "train": {"max_epochs": 1, "device": "cpu"},
}


def _config_cases() -> dict[str, Callable[[Path], tuple[Path, list[str], str]]]:
    def text(name: str, body: str | bytes, sets: list[str] | None = None, hint: str | None = None):
        def build(tmp: Path) -> tuple[Path, list[str], str]:
            path = tmp / name
            path.write_bytes(body if isinstance(body, bytes) else body.encode())
            return path, sets or [], hint or name
        return build

    def edited(name: str, edit: Callable[[dict], None], hint: str) -> Callable[[Path], tuple]:
        def build(tmp: Path) -> tuple[Path, list[str], str]:
            raw = yaml.safe_load(yaml.safe_dump(GOOD))
            raw["data"]["root"] = str(tmp)
            edit(raw)
            (tmp / name).write_text(yaml.safe_dump(raw))
            return tmp / name, [], hint
        return build

    good_text = yaml.safe_dump(GOOD)
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True))

    def fifo(tmp: Path) -> tuple[Path, list[str], str]:
        os.mkfifo(tmp / "pipe.yaml")
        return tmp / "pipe.yaml", [], "pipe.yaml"

    def folder(tmp: Path) -> tuple[Path, list[str], str]:
        (tmp / "conf.yaml").mkdir()
        return tmp / "conf.yaml", [], "conf.yaml"

    return {
        "yaml_alias_bomb": text("bomb.yaml", bomb),
        "yaml_python_object_tag": text("evil.yaml", "data: !!python/object/apply:os.system ['touch PWNED']\n"),
        "yaml_python_name_tag": text("evil2.yaml", "data: !!python/name:os.system\n"),
        "yaml_invalid_syntax": text("syntax.yaml", "data: [unclosed\n  model: {\n"),
        "yaml_top_level_list": text("list.yaml", "- data\n- model\n"),
        "yaml_binary": text("binary.yaml", b"\xff\xfe\x00\x01garbage\x80"),
        "yaml_too_big": text("big.yaml", "# " + "x" * 1_100_000 + "\n"),
        "yaml_deep_nesting": text("deep.yaml", "data: " + "[" * 5000 + "]" * 5000 + "\n"),
        "yaml_self_reference": text("self.yaml", "data: &a {root: *a}\n"),
        "yaml_duplicate_anchor_merge": text("merge.yaml", "base: &b {x: 1}\ndata: {<<: *b}\n"),
        "yaml_fifo": fifo,
        "yaml_folder": folder,
        "yaml_missing": lambda t: (t / "nope.yaml", [], "nope.yaml"),
        "cfg_wrong_type": edited("type.yaml", lambda r: r["train"].update(max_epochs="ten"), "train.max_epochs"),
        "cfg_out_of_range_lr": edited("lr.yaml", lambda r: r["train"].update(lr=-1.0), "train.lr"),
        "cfg_zero_image_size": edited("size.yaml", lambda r: r["data"].update(image_size=[0, 32]), "image_size"),
        "cfg_negative_batch": edited("batch.yaml", lambda r: r["train"].update(batch_size=-4), "batch_size"),
        "cfg_unknown_key": edited("key.yaml", lambda r: r["train"].update(epochz=3), "epochz"),
        "cfg_root_missing": edited("root.yaml", lambda r: r["data"].update(root="/does/not/exist"),
                                   "/does/not/exist"),
        "set_without_equals": text("ok1.yaml", good_text, ["train.max_epochs"], "train.max_epochs"),
        "set_wrong_type": text("ok2.yaml", good_text, ["train.lr=abc"], "train.lr"),
        "set_deep_value": text("ok3.yaml", good_text, ["train.lr=" + "[" * 3000], "train.lr"),
        "set_into_value": text("ok4.yaml", good_text, ["train.lr.x=1"], "train.lr"),
    }


CONFIG_CASES = _config_cases()


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_config_train(case, tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path, sets, hint = CONFIG_CASES[case](tmp_path)
    args = ["train", path, "-o", tmp_path / "run", "-q"] + [x for s in sets for x in ("--set", s)]
    expect = (1,) if case == "cfg_root_missing" else (2,)
    out = run_cli(case, args, expect=expect, names=[hint])
    assert out.kind == "clear", out.detail
    assert not (tmp_path / "PWNED").exists()
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()
