"""Tests for medseg.data.splits: fraction + seed splits, split files, the split a run keeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from medseg.config.schema import DataConfig
from medseg.data.pairing import Pair
from medseg.data.splits import read_split_file, select_split, split_for_run, split_pairs, write_split_file
from medseg.errors import DataError


def test_split_pairs_sizes_and_determinism():
    items = [f"case_{i:03d}" for i in range(10)]
    train, val = split_pairs(items, val_fraction=0.25, seed=1)
    assert (len(train), len(val)) == (8, 2)  # round(2.5) == 2
    assert sorted(train + val) == items and not set(train) & set(val)
    assert train == sorted(train) and val == sorted(val)
    assert split_pairs(items, val_fraction=0.25, seed=1) == (train, val)
    vals = {tuple(split_pairs(items, val_fraction=0.25, seed=s)[1]) for s in range(5)}
    assert len(vals) > 1
    assert split_pairs(items[:3], val_fraction=0.01, seed=0)[1] != []  # at least one
    assert len(split_pairs(items[:2], val_fraction=0.9, seed=0)[0]) == 1  # at least one train
    assert split_pairs(items, val_fraction=0.0, seed=0) == (items, [])


def test_split_pairs_rejects_bad_input():
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\), got 1.0"):
        split_pairs(["a", "b"], val_fraction=1.0, seed=0)
    with pytest.raises(DataError, match="need at least 2"):
        split_pairs(["a"], val_fraction=0.2, seed=0)


def test_split_file_round_trip(tmp_path):
    path = write_split_file(tmp_path / "splits" / "val.txt", ["b", "a", "c"])
    assert path.read_text() == "b\na\nc\n"
    assert read_split_file(path) == ["b", "a", "c"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["val.txt"]


def test_split_file_errors(tmp_path):
    path = tmp_path / "val.txt"
    path.write_text("# validation cases\na\n\nb\na\n")
    with pytest.raises(
        DataError, match=r"val\.txt: case id\(s\) listed twice: a \(lines 2 and 5\)"
    ):
        read_split_file(path)
    with pytest.raises(DataError, match=r"nope\.txt: split file does not exist"):
        read_split_file(tmp_path / "nope.txt")
    with pytest.raises(ValueError, match="cannot be written"):
        write_split_file(tmp_path / "bad.txt", ["ok", "two\nlines"])
    assert not (tmp_path / "bad.txt").exists()


def _pairs(ids):
    return [Pair(case_id=c, image=Path(f"{c}.png"), mask=Path(f"{c}_m.png")) for c in ids]


def test_split_for_run_writes_the_split_and_a_resume_reads_it_back(tmp_path):
    data = DataConfig(root=tmp_path, val_fraction=0.25, seed=3)
    pairs = _pairs(["a", "b", "c", "d", "e", "f", "g", "h"])
    train, val = split_for_run(pairs, data, tmp_path / "run", resume=False)
    assert (train, val) == split_pairs(pairs, val_fraction=0.25, seed=3) and len(val) == 2
    assert read_split_file(tmp_path / "run" / "splits" / "val.txt") == [p.case_id for p in val]
    # a resume keeps the saved split even when the seed in the config would choose another
    other = data.model_copy(update={"seed": 4})
    assert split_for_run(pairs, other, tmp_path / "run", resume=True) == (train, val)
    assert split_for_run(pairs, other, tmp_path / "run2", resume=False) != (train, val)


def test_select_split_prefers_list_files_and_names_missing_cases(tmp_path):
    pairs = _pairs(["a", "b", "c"])
    write_split_file(tmp_path / "train.txt", ["c", "a"])
    write_split_file(tmp_path / "val.txt", ["b"])
    data = DataConfig(root=tmp_path, train_list=tmp_path / "train.txt", val_list=tmp_path / "val.txt")
    train, val = select_split(pairs, data)
    assert [p.case_id for p in train] == ["c", "a"] and [p.case_id for p in val] == ["b"]
    only_val = DataConfig(root=tmp_path, val_list=tmp_path / "val.txt")
    assert [p.case_id for p in select_split(pairs, only_val)[0]] == ["a", "c"]
    write_split_file(tmp_path / "train.txt", ["a", "zz"])
    with pytest.raises(DataError, match="split lists name cases not found under .*: zz"):
        select_split(pairs, data)


def test_split_for_run_refuses_a_split_without_training_cases(tmp_path):
    write_split_file(tmp_path / "val.txt", ["a"])
    data = DataConfig(root=tmp_path, val_list=tmp_path / "val.txt")
    with pytest.raises(DataError, match=r"no training cases left after the split \(1 cases found\)"):
        split_for_run(_pairs(["a"]), data, tmp_path / "run", resume=False)
