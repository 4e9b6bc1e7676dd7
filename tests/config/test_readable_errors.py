"""Config errors about data.channels are reported once, at the channel's key, in words (no pydantic union branch
names, no errors about the data.intensity/windows they fill); values from --set say so instead of a file line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from medseg.config.loading import load_config, validate_config
from medseg.errors import ConfigError

HEAD = "data:\n  kind: volumes3d\n  root: data\n"  # data.channels on line 4


def _error(tmp_path: Path, data_yaml: str, *overrides: str) -> str:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(HEAD + data_yaml + "model:\n  spatial_dims: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg, list(overrides))
    return str(err.value).split(": ", 1)[1]


@pytest.mark.parametrize(("channels", "expected"), [
    ("[{name: CT, windows: [{center_hu: 40, width_hu: -4}]}]",
     "data.channels.0.windows.0.width_hu (line 4): Input should be greater than 0 (found: -4)"),
    ("[{name: CT, intensity: banana}]",
     "data.channels.0.intensity (line 4): Input should be 'ct_window' or 'zscore' (found: 'banana')"),
    ("[{name: CT, windows: []}]", "data.channels.0.windows (line 4): needs at least one window (found: [])"),
    ("[{name: CT, windows: [nope]}]",
     "data.channels.0.windows (line 4): unknown window preset 'nope'; choose from ['bone', 'brain', 'lung', "
     "'mediastinum', 'soft_tissue', 'spine'] or give {center_hu, width_hu} (found: ['nope'])"),
    ("[{name: CT, windows: [5]}]",
     "data.channels.0.windows.0 (line 4): expected a window preset name or a mapping like "
     "{center_hu: 40, width_hu: 400} (found: 5)"),
    ("[CT, smooth]", "data.channels.0 (line 4): expected a mapping like {name: CT} (found: 'CT'); "
                     "data.channels.1 (line 4): expected a mapping like {name: CT} (found: 'smooth')"),
])
def test_channel_errors_once_at_the_channel_key(tmp_path, channels, expected):
    count = expected.count("(line")
    assert _error(tmp_path, f"  channels: {channels}\n") == f"{count} invalid setting(s): {expected}"


def test_top_level_windows_errors_keep_their_key_without_union_branches(tmp_path):
    assert _error(tmp_path, "  windows: [{center_hu: 40, width_hu: -4}]\n") == (
        "1 invalid setting(s): data.windows.0.width_hu (line 4): Input should be greater than 0 (found: -4)")


def test_given_intensity_beside_channels_is_still_checked():
    with pytest.raises(ConfigError, match=r"^config: 2 invalid setting\(s\): data.intensity: Input should be "
                                          r".*data.channels: "):
        validate_config({"data": {"kind": "volumes3d", "root": "/d", "channels": [{"name": "CT"}],
                                  "intensity": "banana"}, "model": {"spatial_dims": 3}})


def test_set_values_say_from_set_and_paths_resolve_like_data_root(tmp_path, monkeypatch):
    assert _error(tmp_path, "", "data.cache_dir=5") == (
        "1 invalid setting(s): data.cache_dir (from --set): expected a path (text) (found: 5)")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"kind": "volumes3d", "root": "data", "cache_dir": "cache"},
                                   "model": {"spatial_dims": 3}}))
    loaded = load_config(cfg)
    assert (loaded.data.root, loaded.data.cache_dir) == (tmp_path / "data", tmp_path / "cache")
    loaded = load_config(cfg, ["data.root=d2", "data.cache_dir=c2"])
    here = Path(os.getcwd())
    assert (loaded.data.root, loaded.data.cache_dir) == (here / "d2", here / "c2")
