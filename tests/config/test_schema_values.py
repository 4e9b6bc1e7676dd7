"""Every config value is checked where it enters: finite floats, no booleans for numbers, positive spacings, known
window presets, no duplicate YAML keys, class weights not all zero (so `config check` passing means training will
not crash on the config)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from medseg.cli.main import app
from medseg.config import load_config
from medseg.config.schema import WINDOW_PRESETS
from medseg.data.transforms import WINDOW_PRESETS as TRANSFORM_PRESETS
from medseg.errors import ConfigError

BASE = "data:\n  root: x\n  kind: volumes3d\nmodel:\n  spatial_dims: 3\n"


def _load(tmp_path: Path, text: str, sets: tuple[str, ...] = ()):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return load_config(path, list(sets))


@pytest.mark.parametrize(("key", "value", "message"), [
    ("data.spacing_mm", "[0, 4, 4]", r"data\.spacing_mm\.0: Input should be greater than 0 \(found: 0\)"),
    ("data.spacing_mm", "[4, -1, 4]", r"data\.spacing_mm\.1: Input should be greater than 0 \(found: -1\)"),
    ("data.spacing_mm", "[4, 4, .nan]", r"data\.spacing_mm\.2: Input should be a finite number \(found: nan\)"),
    ("data.spacing_mm", "[4, 4, .inf]", r"data\.spacing_mm\.2: Input should be a finite number \(found: inf\)"),
    ("train.lr", ".inf", r"train\.lr: Input should be a finite number \(found: inf\)"),
    ("train.grad_clip", ".inf", r"train\.grad_clip: Input should be a finite number"),
    ("train.early_stopping_min_delta", ".nan", r"train\.early_stopping_min_delta: Input should be a finite number"),
    ("loss.class_weights", "[.nan, 1]", r"loss\.class_weights\.0: Input should be a finite number"),
    ("data.augment.noise_std", "-.inf", r"data\.augment\.noise_std: Input should be a finite number"),
    ("data.windows", "[{center_hu: .nan, width_hu: 400}]", r"center_hu: Input should be a finite number"),
    ("train.max_epochs", "true", r"train\.max_epochs: a boolean is not allowed here; give a number \(found: True\)"),
    ("train.batch_size", "false", r"train\.batch_size: a boolean is not allowed here"),
    ("data.seed", "true", r"data\.seed: a boolean is not allowed here"),
    ("train.lr", "true", r"train\.lr: a boolean is not allowed here"),
    ("model.channels", "[true, 8]", r"model\.channels: a boolean is not allowed here"),
    ("infer.roi_size", "[true, 32, 32]", r"infer\.roi_size: a boolean is not allowed here"),
    ("data.windows", "[true]", r"data\.windows: a boolean is not allowed here"),
    ("data.labels.classes", "{0: bg, true: bone}", r"data\.labels\.classes: gray values must be integers"),
    ("data.labels.classes", "{0: bg, 1: true}", r"data\.labels\.classes: class names must be text, got \['bg', True\]"),
    ("data.windows", "[bone, nope]", r"data\.windows: unknown window preset 'nope'; choose from \['bone', 'brain', "
                                     r"'lung', 'mediastinum', 'soft_tissue', 'spine'\]"),
    ("loss.class_weights", "[0, 0]", r"loss\.class_weights: class weights must not all be 0"),
])
def test_bad_value_is_refused_naming_key_and_value(tmp_path, key, value, message):
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, BASE, (f"{key}={value}",))
    assert "(from --set)" in str(err.value) and "(line" not in str(err.value)  # no line of the file: --set's
    text = str(err.value).replace(" (from --set)", "")
    assert re.search(message, text), text
    assert "\n" not in text and text.startswith(f"{tmp_path / 'exp.yaml'}: ")


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("train.max_epochs", "3", 3),
    ("train.lr", "1", 1.0),  # an integer is a fine float
    ("data.strict", "false", False),
    ("train.amp", "true", True),
    ("data.spacing_mm", "[0.5, 0.5, 2]", (0.5, 0.5, 2.0)),
    ("data.windows", "[spine, {center_hu: 40, width_hu: 400}]", "spine"),
    ("loss.class_weights", "[0, 1]", [0.0, 1.0]),
])
def test_good_values_still_pass(tmp_path, key, value, expected):
    cfg = _load(tmp_path, BASE, (f"{key}={value}",))
    section, *rest = key.split(".")
    got = getattr(getattr(cfg, section), rest[0])
    assert (got[0] if key == "data.windows" else got) == expected


def test_window_presets_have_one_home():
    assert TRANSFORM_PRESETS is WINDOW_PRESETS and WINDOW_PRESETS["soft_tissue"] == (40.0, 400.0)


def test_duplicate_yaml_key_names_it_and_both_lines(tmp_path):
    text = "data:\n  root: x\n  labels:\n    classes:\n      0: background\n      255: polyp\n      255: lesion\n"
    with pytest.raises(ConfigError, match=r"exp\.yaml: key '255' appears twice in one mapping \(lines 6 and 7\)"):
        _load(tmp_path, text)


def test_duplicate_section_key_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"key 'train' appears twice in one mapping \(lines 2 and 4\)"):
        _load(tmp_path, "data: {root: x}\ntrain: {lr: 0.1}\nmodel: {}\ntrain: {max_epochs: 2}\n")


def test_duplicate_key_in_set_value_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"--set data\.labels\.classes: key '1' appears twice"):
        _load(tmp_path, BASE, ("data.labels.classes={0: bg, 1: a, 1: b}",))


def test_yaml_merge_keys_still_work(tmp_path):
    cfg = _load(tmp_path, "data: {root: x}\ntrain:\n  <<: {lr: 0.5, max_epochs: 3}\n  max_epochs: 2\n")
    assert cfg.train.lr == 0.5 and cfg.train.max_epochs == 2


def test_duplicate_class_name_and_value_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"gray value 5 is listed for both 'a' and 'b'"):
        _load(tmp_path, BASE, ("data.labels.classes=[{name: a, values: [5]}, {name: b, values: [5]}]",))
    with pytest.raises(ConfigError, match=r"class names must be unique, got \['bg', 'a', 'a'\]"):
        _load(tmp_path, BASE, ("data.labels.classes={0: bg, 1: a, 2: a}",))


def test_config_check_refuses_bool_epochs_in_one_line(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"data": {"root": "x"}, "train": {"max_epochs": True}}))
    result = CliRunner().invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {path}: 1 invalid setting(s): train.max_epochs (line 4): a boolean is not allowed here; "
        "give a number (found: True)"]
