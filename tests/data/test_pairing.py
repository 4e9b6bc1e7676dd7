"""Tests for medseg.data.pairing on real files (tiny Pillow images and the Kvasir-SEG folder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medseg.config.schema import DataConfig
from medseg.data.pairing import (
    VOLUMES,
    Pair,
    find_pairs,
    find_pairs_from_config,
)
from medseg.data.splits import split_pairs
from medseg.errors import ConfigError, DataError
from medseg.io.images import image_size


@pytest.fixture
def kvasir_dir(kvasir: Path) -> Path:
    return kvasir


def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "P" if path.suffix == ".gif" else "RGB"
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).convert(mode).save(path)
    return path


def _tree(root: Path, names: list[str]) -> Path:
    for name in names:
        _image(root / name)
    return root


def test_same_stem_pairs_sorted_and_hidden_files_ignored(tmp_path):
    _tree(tmp_path, ["images/b.jpg", "images/a.png", "masks/a.png", "masks/b.jpg"])
    _tree(tmp_path, ["images/._a.jpg", "masks/._a.jpg"])
    (tmp_path / "images" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "masks" / "notes.txt").write_text("not a mask")
    pairs = find_pairs(tmp_path)
    assert pairs == [
        Pair("a", tmp_path / "images/a.png", tmp_path / "masks/a.png"),
        Pair("b", tmp_path / "images/b.jpg", tmp_path / "masks/b.jpg"),
    ]
    with pytest.raises(AttributeError):
        pairs[0].case_id = "c"  # type: ignore[misc]


def test_real_kvasir_folder(kvasir_dir):
    pairs = find_pairs(kvasir_dir)
    assert len(pairs) == 150
    assert pairs[0].case_id == "cju14g8o4xui30878gkgbrvqj"
    assert pairs[0].image == kvasir_dir / "images" / "cju14g8o4xui30878gkgbrvqj.jpg"
    assert pairs[0].mask == kvasir_dir / "masks" / "cju14g8o4xui30878gkgbrvqj.jpg"
    assert [p.case_id for p in pairs] == sorted(p.case_id for p in pairs)
    for pair in pairs[::30]:
        assert image_size(pair.image) == image_size(pair.mask)
    train, val = split_pairs(pairs, val_fraction=0.2, seed=42)
    assert (len(train), len(val)) == (120, 30)
    assert split_pairs(pairs, val_fraction=0.2, seed=42) == (train, val)


def test_suffix_rule_carvana_same_folder(tmp_path):
    _tree(tmp_path, ["train/car1.jpg", "train/car1_mask.gif", "train/car2.jpg"])
    _image(tmp_path / "train/car2_mask.gif")
    pairs = find_pairs(tmp_path, images_dir="train", masks_dir="train", rule="suffix")
    assert [(p.case_id, p.image.name, p.mask.name) for p in pairs] == [
        ("car1", "car1.jpg", "car1_mask.gif"),
        ("car2", "car2.jpg", "car2_mask.gif"),
    ]


def test_suffix_rule_separate_folders(tmp_path):
    _tree(tmp_path, ["train/x.jpg", "train_masks/x_mask.gif"])
    pairs = find_pairs(tmp_path, images_dir="train", masks_dir="train_masks", rule="suffix")
    assert pairs == [Pair("x", tmp_path / "train/x.jpg", tmp_path / "train_masks/x_mask.gif")]


def test_replace_rule(tmp_path):
    _tree(tmp_path, ["images/P1_Slice_07.png", "masks/P1_Labels_slice_07.png"])
    pairs = find_pairs(tmp_path, rule="replace")
    assert [(p.case_id, p.mask.name) for p in pairs] == [("P1_Slice_07", "P1_Labels_slice_07.png")]


def test_list_rule_with_header_and_comments(tmp_path):
    _tree(tmp_path, ["img/a.jpg", "lab/a.png", "img/b.jpg", "lab/b.png"])
    (tmp_path / "pairs.csv").write_text(
        "image,mask\n# a comment\nimg/b.jpg, lab/b.png\n\nimg/a.jpg,lab/a.png\n"
    )
    pairs = find_pairs(tmp_path, rule="list", list_file=Path("pairs.csv"))
    assert [(p.case_id, p.image, p.mask) for p in pairs] == [
        ("a", tmp_path / "img/a.jpg", tmp_path / "lab/a.png"),
        ("b", tmp_path / "img/b.jpg", tmp_path / "lab/b.png"),
    ]


def test_list_rule_names_bad_lines(tmp_path):
    _tree(tmp_path, ["img/a.jpg", "lab/a.png"])
    (tmp_path / "pairs.txt").write_text("img/a.jpg,lab/a.png\nimg/gone.jpg,lab/a.png\njust-one\n")
    with pytest.raises(
        DataError,
        match=r"pairs\.txt: 2 bad line\(s\).*line 2: image 'img/gone\.jpg' does not exist; "
        r"line 3: expected 'image,mask'",
    ):
        find_pairs(tmp_path, rule="list", list_file=Path("pairs.txt"))
    pairs = find_pairs(tmp_path, rule="list", list_file=tmp_path / "pairs.txt", strict=False)
    assert [p.case_id for p in pairs] == ["a"]


def test_list_rule_needs_list_file(tmp_path):
    with pytest.raises(ConfigError, match="data.pair_list: required"):
        find_pairs(tmp_path, rule="list")
    with pytest.raises(DataError, match=r"data.pair_list: file .*missing\.csv does not exist"):
        find_pairs(tmp_path, rule="list", list_file=Path("missing.csv"))


def test_missing_root_and_folders(tmp_path):
    with pytest.raises(DataError, match=r"data\.root: folder .*nowhere does not exist"):
        find_pairs(tmp_path / "nowhere")
    _tree(tmp_path, ["imgs/a.jpg"])
    with pytest.raises(DataError, match=r"data\.images_dir: folder .*images does not exist.*imgs"):
        find_pairs(tmp_path)
    with pytest.raises(DataError, match=r"data\.masks_dir: folder .*masks does not exist"):
        find_pairs(tmp_path, images_dir="imgs")


def test_no_images_found(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "images" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"images: no images found; allowed suffixes: \.jpg"):
        find_pairs(tmp_path)


def test_unmatched_files_are_listed(tmp_path):
    names = [f"images/img{i:02d}.jpg" for i in range(12)] + ["masks/img00.png", "masks/stray.png"]
    _tree(tmp_path, names)
    pattern = (
        r"11 image\(s\) without mask in .*masks: img01\.jpg, img02\.jpg, .*img10\.jpg "
        r"and 1 more; 1 mask\(s\) without image in .*images: stray\.png"
    )
    with pytest.raises(DataError, match=pattern):
        find_pairs(tmp_path)
    assert [p.case_id for p in find_pairs(tmp_path, strict=False)] == ["img00"]


def test_duplicate_stems_are_refused(tmp_path):
    _tree(tmp_path, ["images/a.jpg", "images/a.png", "masks/a.png"])
    with pytest.raises(
        DataError, match=r"images: 1 stem\(s\) used by several files: a \(a\.jpg, a\.png\)"
    ):
        find_pairs(tmp_path)


def test_bad_rule_settings(tmp_path):
    _tree(tmp_path, ["images/a.jpg", "masks/a.png"])
    with pytest.raises(ConfigError, match=r"data\.pairing: unknown 'stem'; choose from"):
        find_pairs(tmp_path, rule="stem")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="rule 'same_stem' needs separate"):
        find_pairs(tmp_path, masks_dir="images")










# ------------------------------------------------------------------ one finder for volumes too
def _touch(root: Path, names: list[str]) -> Path:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"\0")
    return root


def test_volumes_same_stem_with_nnunet_channel_suffix_and_two_dot_suffixes(tmp_path):
    _touch(tmp_path, ["imagesTr/la_001_0000.nii.gz", "labelsTr/la_001.nii.gz",
                      "imagesTr/la_002.mha", "labelsTr/la_002.nrrd", "imagesTr/notes.txt"])
    pairs = find_pairs(tmp_path, images_dir="imagesTr", masks_dir="labelsTr", kind=VOLUMES)
    assert [(p.case_id, p.image.name, p.mask.name) for p in pairs] == [
        ("la_001", "la_001_0000.nii.gz", "la_001.nii.gz"), ("la_002", "la_002.mha", "la_002.nrrd")]


def test_three_cases_of_two_channels_pair_in_channel_order_and_files_lists_them_all(tmp_path):
    names = [f"imagesTr/{c}_{i:04d}.nii.gz" for c in ("a", "b", "c") for i in (1, 0)]  # written out of order
    _touch(tmp_path, names + ["labelsTr/a.nii.gz", "labelsTr/b.nii.gz", "labelsTr/c.nii.gz"])
    pairs = find_pairs(tmp_path, images_dir="imagesTr", masks_dir="labelsTr", kind=VOLUMES)
    assert [p.case_id for p in pairs] == ["a", "b", "c"]
    assert [[f.relative_to(tmp_path).as_posix() for f in p.files()] for p in pairs] == [
        [f"imagesTr/{c}_0000.nii.gz", f"imagesTr/{c}_0001.nii.gz", f"labelsTr/{c}.nii.gz"] for c in "abc"]
    assert all(p.image == p.channels[0] for p in pairs)
    cfg = DataConfig(kind="volumes3d", root=tmp_path, images_dir="imagesTr", masks_dir="labelsTr",
                     channels=[{"name": "CT"}, {"name": "PET"}])
    assert find_pairs_from_config(cfg) == pairs


def test_a_case_without_one_channel_is_one_line_naming_the_case_and_the_file(tmp_path):
    _touch(tmp_path, ["imagesTr/a_0000.nii.gz", "imagesTr/a_0001.nii.gz", "imagesTr/b_0000.nii.gz",
                      "labelsTr/a.nii.gz", "labelsTr/b.nii.gz"])
    with pytest.raises(DataError) as err:
        find_pairs(tmp_path, images_dir="imagesTr", masks_dir="labelsTr", kind=VOLUMES)
    assert "\n" not in str(err.value)
    assert "case b: has _0000; other cases have _0000, _0001 (missing b_0001.nii.gz)" in str(err.value)
    pairs = find_pairs(tmp_path, images_dir="imagesTr", masks_dir="labelsTr", kind=VOLUMES, strict=False)
    assert [p.case_id for p in pairs] == ["a"]


def test_a_gap_in_the_channels_names_the_missing_file(tmp_path):
    _touch(tmp_path, ["imagesTr/a_0000.nii.gz", "imagesTr/a_0002.nii.gz", "labelsTr/a.nii.gz"])
    with pytest.raises(DataError, match=r"have channel files _0000, _0002; number them from _0000 without gaps "
                       r"\(no _0001\)"):
        find_pairs(tmp_path, images_dir="imagesTr", masks_dir="labelsTr", kind=VOLUMES)


def test_one_odd_case_is_named_alone_against_the_channels_most_cases_have(tmp_path):
    names = [f"imagesTr/case{c:02d}_{i:04d}.nii.gz" for c in (0, 1, 3) for i in (0, 1)]
    _touch(tmp_path, [*names, "imagesTr/case02_0000.nii.gz", "imagesTr/case02_0002.nii.gz",
                      *(f"labelsTr/case{c:02d}.nii.gz" for c in range(4))])
    with pytest.raises(DataError) as err:
        find_pairs(tmp_path, images_dir="imagesTr", masks_dir="labelsTr", kind=VOLUMES)
    message = str(err.value)
    assert message.startswith("case case02: has _0000, _0002; other cases have _0000, _0001 (missing "
                              "case02_0001.nii.gz, unexpected case02_0002.nii.gz); fix the file names")
    assert "case00" not in message and "case01" not in message and "\n" not in message
    pairs = find_pairs(tmp_path, images_dir="imagesTr", masks_dir="labelsTr", kind=VOLUMES, strict=False)
    assert [p.case_id for p in pairs] == ["case00", "case01", "case03"]
    # data.channels decides when set: three channels named, so the two-channel cases are the odd ones
    _touch(tmp_path, ["imagesTr/case02_0001.nii.gz"])
    cfg = DataConfig(kind="volumes3d", root=tmp_path, images_dir="imagesTr", masks_dir="labelsTr", strict=False,
                     channels=[{"name": "T1"}, {"name": "T2"}, {"name": "FLAIR"}])
    assert [p.case_id for p in find_pairs_from_config(cfg)] == ["case02"]


def test_channel_count_must_match_data_channels(tmp_path):
    _touch(tmp_path, ["imagesTr/a_0000.nii.gz", "imagesTr/a_0001.nii.gz", "labelsTr/a.nii.gz"])
    base = {"kind": "volumes3d", "root": tmp_path, "images_dir": "imagesTr", "masks_dir": "labelsTr"}
    with pytest.raises(ConfigError, match=r"data\.channels: not set, so one image file per case is expected, but "
                       r"case a has 2 \(a_0000\.nii\.gz, a_0001\.nii\.gz\)"):
        find_pairs_from_config(DataConfig(**base))
    with pytest.raises(ConfigError, match=r"data\.channels: lists 3 channel\(s\) \(CT, PET, MR\), but case a has 2"):
        find_pairs_from_config(DataConfig(**base, channels=[{"name": "CT"}, {"name": "PET"}, {"name": "MR"}]))


def test_a_plain_image_and_a_channel_file_for_one_mask_are_refused(tmp_path):
    _touch(tmp_path, ["imagesTr/a.nii.gz", "imagesTr/a_0000.nii.gz", "labelsTr/a.nii.gz"])
    with pytest.raises(DataError, match=r"a\.nii\.gz: mask matches images a\.nii\.gz, a_0000\.nii\.gz; name every "
                       "channel file"):
        find_pairs(tmp_path, images_dir="imagesTr", masks_dir="labelsTr", kind=VOLUMES)


def test_volumes_follow_the_same_strict_rule_and_suffix_rule_as_images(tmp_path):
    _touch(tmp_path, ["img/ct1.nii.gz", "img/ct2.nii.gz", "lab/ct1_seg.nii.gz", "lab/ct9_seg.nii.gz"])
    with pytest.raises(DataError, match=r"1 image\(s\) without mask.*ct2\.nii\.gz.*1 mask\(s\) without image.*ct9"):
        find_pairs(tmp_path, images_dir="img", masks_dir="lab", rule="suffix", mask_suffix="_seg", kind=VOLUMES)
    pairs = find_pairs(tmp_path, images_dir="img", masks_dir="lab", rule="suffix", mask_suffix="_seg",
                       kind=VOLUMES, strict=False)
    assert [(p.case_id, p.mask.name) for p in pairs] == [("ct1", "ct1_seg.nii.gz")]


def test_volume_list_file_uses_volume_case_names_and_the_header_rule(tmp_path):
    _touch(tmp_path, ["a/x.nii.gz", "b/x_lab.nii.gz", "a/y.png"])
    (tmp_path / "pairs.csv").write_text("image,mask\na/x.nii.gz,b/x_lab.nii.gz\n")
    pairs = find_pairs(tmp_path, rule="list", list_file=Path("pairs.csv"), kind=VOLUMES)
    assert [(p.case_id, p.mask.name) for p in pairs] == [("x", "x_lab.nii.gz")]
    (tmp_path / "bad.csv").write_text("a/y.png,b/x_lab.nii.gz\n")
    with pytest.raises(DataError, match=r"line 1: image suffix '\.png' not in \.nii\.gz"):
        find_pairs(tmp_path, rule="list", list_file=Path("bad.csv"), kind=VOLUMES)


def test_find_pairs_from_config_picks_the_kind_and_strict_from_the_data_section(tmp_path):
    _touch(tmp_path, ["images/c_0000.nii.gz", "masks/c.nii.gz", "masks/orphan.nii.gz"])
    data = DataConfig(kind="volumes3d", root=tmp_path)
    with pytest.raises(DataError, match="orphan"):
        find_pairs_from_config(data)
    assert [p.case_id for p in find_pairs_from_config(data.model_copy(update={"strict": False}))] == ["c"]
    with pytest.raises(DataError, match="no images found"):
        find_pairs_from_config(data.model_copy(update={"kind": "images2d"}))
