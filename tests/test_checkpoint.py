"""Checkpoints: atomic, self-describing, and never unpickling code."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from medseg.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from medseg.errors import CheckpointError

MINIMAL = {"config": {"data": {"root": "/x"}}, "labels": {}, "state_dict": {"w": torch.ones(2)},
           "in_channels": 1, "out_channels": 2}


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_round_trip_keeps_tensors_and_marks_format(tmp_path):
    path = save_checkpoint(MINIMAL, tmp_path / "c.pt")
    loaded = load_checkpoint(path)
    assert loaded["format"] == "medseg-checkpoint" and loaded["format_version"] == FORMAT_VERSION
    torch.testing.assert_close(loaded["state_dict"]["w"], torch.ones(2), rtol=0, atol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind


def test_run_folder_resolves_to_best_then_last(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    save_checkpoint({**MINIMAL, "epoch": 1}, tmp_path / "checkpoints" / "last.pt")
    assert load_checkpoint(tmp_path)["epoch"] == 1
    save_checkpoint({**MINIMAL, "epoch": 0}, tmp_path / "checkpoints" / "best.pt")
    assert load_checkpoint(tmp_path)["epoch"] == 0


def test_pickled_object_refused_and_not_executed(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pt"
    torch.save({"format": "medseg-checkpoint", "payload": _Evil(marker)}, path)
    with pytest.raises(CheckpointError, match="evil.pt: refused: the file carries pickled Python objects"):
        load_checkpoint(path)
    assert not marker.exists()


def test_plain_pickle_file_refused(tmp_path):
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="model.pkl"):
        load_checkpoint(path)


def test_foreign_checkpoint_named(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.ones(1)}}, path)
    with pytest.raises(CheckpointError, match=r"foreign.pt: not a medseg checkpoint \(format field None"):
        load_checkpoint(path)


def test_truncated_and_missing(tmp_path):
    path = save_checkpoint(MINIMAL, tmp_path / "c.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="c.pt: not a readable PyTorch checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="none.pt: checkpoint file not found"):
        load_checkpoint(tmp_path / "none.pt")


def test_newer_format_refused(tmp_path):
    path = tmp_path / "new.pt"
    torch.save({**MINIMAL, "format": "medseg-checkpoint", "format_version": FORMAT_VERSION + 1}, path)
    with pytest.raises(CheckpointError, match="newer than this medseg reads"):
        load_checkpoint(path)


def test_failed_save_keeps_previous_file(tmp_path):
    path = save_checkpoint(MINIMAL, tmp_path / "c.pt")
    before = path.read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError)):  # which one depends on the object
        save_checkpoint({**MINIMAL, "bad": lambda: 0}, path)  # lambdas cannot be saved
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def _refusal(path: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and "\x1b" not in message and "weights_only" not in message
    return message


def test_text_file_is_not_a_pytorch_checkpoint(tmp_path):
    path = tmp_path / "README.md"
    path.write_text("# medseg\n\nSegmentation of medical images.\n")
    assert _refusal(path) == (
        f"{path}: not a PyTorch checkpoint (a .pt file saved by torch.save is a zip archive; this file starts "
        "with b'# medseg\\n\\nSegmen')"
    )


def test_png_and_coloured_text_are_shown_safely(tmp_path):
    png = tmp_path / "scan.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(40))
    assert _refusal(png) == (
        f"{png}: not a PyTorch checkpoint (a .pt file saved by torch.save is a zip archive; this file starts "
        "with b'\\x89PNG\\r\\n\\x1a\\n\\x00\\x00\\x00\\rIHDR')"
    )
    ansi = tmp_path / "ansi.pt"
    ansi.write_text("\x1b[31mred\x1b[0m text")
    assert _refusal(ansi).endswith("this file starts with b'\\x1b[31mred\\x1b[0m tex')")


def test_empty_file(tmp_path):
    path = tmp_path / "best.pt"
    path.write_bytes(b"")
    assert _refusal(path) == f"{path}: empty file (0 bytes); not a checkpoint"


def test_truncated_checkpoint_says_truncated_in_one_sentence(tmp_path):
    path = save_checkpoint(MINIMAL, tmp_path / "c.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert _refusal(path) == (
        f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): PytorchStreamReader failed reading "
        "zip archive: failed finding central directory"
    )


def test_pickled_object_message_names_the_object_without_torch_advice(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"payload": _Evil(tmp_path / "executed")}, path)
    message = _refusal(path)
    assert message.startswith(f"{path}: refused: the file carries pickled Python objects that a weights-only load "
                              "does not allow (Unsupported global: GLOBAL ")
    assert message.endswith("was not an allowed global by default); medseg checkpoints hold tensors and plain "
                            "values only")
    assert not (tmp_path / "executed").exists()


def test_zip_without_torch_data_is_not_a_checkpoint(tmp_path):
    import zipfile

    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("weights.txt", "1 2 3")
    assert _refusal(path) == (f"{path}: not a PyTorch checkpoint (a zip archive without the data.pkl entry that "
                              "torch.save writes; it holds 1 entries)")


def test_legacy_torch_file_is_still_read_by_torch(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({**MINIMAL, "format": "medseg-checkpoint", "format_version": 1}, path,
               _use_new_zipfile_serialization=False)
    torch.testing.assert_close(load_checkpoint(path)["state_dict"]["w"], torch.ones(2), rtol=0, atol=0)
