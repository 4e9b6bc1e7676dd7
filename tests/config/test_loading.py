"""Config loading: key paths in errors, overrides, relative paths, safety limits."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medseg.config import ExperimentConfig, dump_config, load_config, save_config, validate_config
from medseg.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, data: dict | str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_defaults_filled_and_relative_root_resolved_against_yaml_folder(tmp_path):
    sub = tmp_path / "configs"
    sub.mkdir()
    cfg = load_config(_write(sub, {"data": {"root": "../data/kvasir-seg"}}))
    assert cfg.data.root == (tmp_path / "data" / "kvasir-seg").resolve()
    assert cfg.train.max_epochs == 50 and cfg.train.lr == pytest.approx(1e-3)
    assert cfg.model.name == "unet" and cfg.loss.name == "dice_ce"
    assert cfg.data.image_size == (256, 256) and cfg.data.val_fraction == pytest.approx(0.2)


def test_unknown_key_reported_with_dotted_path_and_line(tmp_path):
    text = "data:\n  root: x\n  image_sizee: [64, 64]\n"
    with pytest.raises(ConfigError, match=r"data\.image_sizee \(line 3\): unknown key \(found: \[64, 64\]\)"):
        load_config(_write(tmp_path, text))


def test_negative_lr_names_key_value_and_rule(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.lr \(line 4\): Input should be greater than 0 \(found: -0\.1\)"):
        load_config(_write(tmp_path, "data:\n  root: x\ntrain:\n  lr: -0.1\n"))


def test_all_errors_reported_together(tmp_path):
    raw = {"data": {"root": "x", "val_fraction": 2}, "train": {"batch_size": 0}, "loss": {"name": "dcie"}}
    with pytest.raises(ConfigError, match=r"3 invalid setting\(s\)") as err:
        load_config(_write(tmp_path, raw))
    message = str(err.value)
    for key in ("data.val_fraction", "train.batch_size", "loss.name"):
        assert key in message
    assert "'dice_ce'" in message  # the allowed loss names are listed


def test_overrides_apply_and_parse_yaml_values(tmp_path):
    path = _write(tmp_path, {"data": {"root": "x"}})
    cfg = load_config(path, ["train.max_epochs=3", "train.lr=1e-4", "data.image_size=[64, 48]", "infer.tta=true"])
    assert cfg.train.max_epochs == 3
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.data.image_size == (64, 48)
    assert cfg.infer.tta is True


def test_override_of_unknown_key_and_bad_syntax(tmp_path):
    path = _write(tmp_path, {"data": {"root": "x"}})
    with pytest.raises(ConfigError, match=r"train\.max_epoch \(from --set\): unknown key"):
        load_config(path, ["train.max_epoch=3"])
    with pytest.raises(ConfigError, match=r"expected key\.path=value"):
        load_config(path, ["train.max_epochs"])


def test_override_path_resolves_against_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path / "..", {"data": {"root": "x"}}, name=f"{tmp_path.name}-cfg.yaml")
    cfg = load_config(path, ["data.root=mine"])
    assert cfg.data.root == (tmp_path / "mine").resolve()


def test_label_mapping_shorthand_and_duplicate_values(tmp_path):
    cfg = load_config(_write(tmp_path, {"data": {"root": "x", "labels": {"classes": {0: "bg", 255: "polyp"}}}}))
    assert [(c.name, c.values) for c in cfg.data.labels.classes] == [("bg", [0]), ("polyp", [255])]
    raw = {"data": {"root": "x", "labels": {"classes": [{"name": "bg", "values": [0]}, {"name": "L1", "values": [0]}]}}}
    with pytest.raises(ConfigError, match=r"data\.labels \(line 2\): gray value 0 is listed for both 'bg' and 'L1'"):
        load_config(_write(tmp_path, raw))


def test_spatial_dims_must_match_data_kind(tmp_path):
    with pytest.raises(ConfigError, match="model.spatial_dims must be 3 when data.kind is 'volumes3d'"):
        load_config(_write(tmp_path, {"data": {"root": "x", "kind": "volumes3d"}}))


def test_strides_must_match_channels(tmp_path):
    raw = {"data": {"root": "x"}, "model": {"channels": [8, 16, 32], "strides": [2]}}
    with pytest.raises(ConfigError, match=r"model .*strides needs len\(channels\) - 1 = 2 entries, got 1"):
        load_config(_write(tmp_path, raw))


def test_missing_file_invalid_yaml_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML"):
        load_config(_write(tmp_path, "data: [unclosed", name="bad.yaml"))
    with pytest.raises(ConfigError, match="the top level must be a mapping"):
        load_config(_write(tmp_path, "- a\n- b\n", name="list.yaml"))


def test_alias_bomb_refused_before_expansion(tmp_path):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 12):
        prev = chr(ord("a") + i - 1)
        cur = chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 10) + "]")
    with pytest.raises(ConfigError, match=r"110 YAML aliases; at most 100 are allowed"):
        load_config(_write(tmp_path, "\n".join(lines)))


def test_python_tags_are_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    text = f"data:\n  root: !!python/object/apply:os.system ['touch {marker}']\n"
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(_write(tmp_path, text))
    assert not marker.exists()


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config(_write(tmp_path, {"data": {"root": "x"}, "train": {"max_epochs": 7}}))
    saved = save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(saved)
    assert again == cfg
    assert "max_epochs: 7" in dump_config(cfg)


def test_validate_config_from_dict():
    cfg = validate_config({"data": {"root": "/x"}})
    assert isinstance(cfg, ExperimentConfig)
    with pytest.raises(ConfigError, match=r"checkpoint: 1 invalid setting\(s\): data: Field required"):
        validate_config({}, source="checkpoint")


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.data.root.is_absolute()


@pytest.mark.parametrize("value", ["1", "0", "'true'", "'off'", "1.0"])
def test_data_strict_takes_booleans_only(tmp_path, value):
    with pytest.raises(ConfigError, match=r"data\.strict \(line 3\): Input should be a valid boolean"):
        load_config(_write(tmp_path, f"data:\n  root: x\n  strict: {value}\n"))
    assert load_config(_write(tmp_path, "data:\n  root: x\n  strict: false\n")).data.strict is False
