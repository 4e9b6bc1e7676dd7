"""Which ``postprocessing.json`` an ensemble applies (once, to the average), how it says so, and where it is
recorded; and how a bad ``postprocessing.json`` is reported."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medseg.cli.main import app
from medseg.data.labels import LabelMap
from medseg.errors import ConfigError, DataError
from medseg.prediction.ensemble import Ensemble
from medseg.prediction.postprocess import ComponentRule, read_postprocessing

LARGEST, SMALL5 = ComponentRule("largest_component"), ComponentRule("remove_small", 5)


def _rules(path: Path, **classes: tuple[int, str, int | None]) -> Path:
    entries = {name: {"index": i, "option": opt, "min_size": size} for name, (i, opt, size) in classes.items()}
    path.write_text(json.dumps({"format": "medseg-postprocessing", "version": 1, "classes": entries}))
    return path


@pytest.fixture()
def run(ckpt3d, tmp_path) -> Path:
    """RUN/fold_0, RUN/fold_1 (ckpt3d twice); RUN/postprocessing.json (v26: largest component) and a fold-level
    RUN/fold_0/postprocessing.json (v26: remove_small < 5) that disagrees with it."""
    run = tmp_path / "run"
    for k in (0, 1):
        (run / f"fold_{k}" / "checkpoints").mkdir(parents=True)
        shutil.copy(ckpt3d[0], run / f"fold_{k}" / "checkpoints" / "best.pt")
    _rules(run / "postprocessing.json", v26=(1, "largest_component", None), v27=(2, "none", None))
    _rules(run / "fold_0" / "postprocessing.json", v26=(1, "remove_small", 5))
    return run


def test_folds_parent_applies_its_own_file_once_whatever_the_folds_files_say(run, caplog):
    with caplog.at_level(logging.INFO, logger="medseg"):
        ens = Ensemble.from_checkpoints([run], device="cpu")
    assert ens.postprocessing == {1: LARGEST, 2: ComponentRule("none")}
    assert ens.postprocessing_file == str(run / "postprocessing.json")
    assert [m.postprocessing for m in ens.members] == [None, None]  # applied to the average only
    said = [r.getMessage() for r in caplog.records if "postprocessing from" in r.getMessage()]
    assert said == [f"postprocessing from {run / 'postprocessing.json'}: v26: largest_component, v27: none"]
    assert ens.postprocessing_record() == {"file": str(run / "postprocessing.json"),
                                           "classes": {"v26": "largest_component", "v27": "none"}}


def test_folds_parent_without_a_file_applies_none(run):
    (run / "postprocessing.json").unlink()
    ens = Ensemble.from_checkpoints([run], device="cpu")
    assert ens.postprocessing is None and ens.postprocessing_file is None


def test_explicit_choice_wins_over_every_file(run):
    for explicit in (True, False):
        ens = Ensemble.from_checkpoints([run], device="cpu", largest_component=explicit)
        assert ens.postprocessing is None and ens.infer.largest_component is explicit


def test_members_given_one_by_one_use_their_own_files_when_they_agree_else_refuse(run):
    folds = [run / "fold_0", run / "fold_1"]
    spell = lambda name: "--" + name.replace("_", "-")  # noqa: E731 (as the CLI names its options)
    with pytest.raises(ConfigError) as err:
        Ensemble.from_checkpoints(folds, device="cpu", spell=spell)
    assert str(err.value) == (
        f"ensemble: {folds[0] / 'checkpoints' / 'best.pt'} and {folds[1] / 'checkpoints' / 'best.pt'} have "
        f"different postprocessing.json rules ({folds[0] / 'postprocessing.json'}: v26: remove_small < 5 vs "
        f"{run / 'postprocessing.json'}: v26: largest_component, v27: none), which would apply to their average; "
        "give --largest-component or --all-components to choose")
    _rules(run / "fold_1" / "postprocessing.json", v26=(1, "remove_small", 5))
    ens = Ensemble.from_checkpoints(folds, device="cpu")
    assert ens.postprocessing == {1: SMALL5}
    assert ens.postprocessing_file == f"{folds[0] / 'postprocessing.json'}, {folds[1] / 'postprocessing.json'}"


def test_cli_ensemble_of_a_folds_parent_records_the_rules_in_the_sidecar(run, ckpt3d, tmp_path):
    volume = sorted(ckpt3d[1].iterdir())[0]
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["predict", str(run), str(volume), "-o", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    sidecar = json.loads(next(out.glob("*.json")).read_text())
    assert sidecar["postprocessing"] == {"file": str(run / "postprocessing.json"),
                                         "classes": {"v26": "largest_component", "v27": "none"}}


def test_bad_entries_are_named_as_users_read_them(tmp_path):
    labels = LabelMap.from_mapping({0: "background", 1: "body", 2: "disc"})
    path = tmp_path / "postprocessing.json"
    path.write_text(json.dumps({"format": "medseg-postprocessing", "classes": {"body": {"option": "none"}}}))
    with pytest.raises(DataError, match=r"postprocessing.json: class 'body': missing key 'index' \(an entry has"):
        read_postprocessing(path, labels)
    _rules(path, bogus=(1, "none", None))
    with pytest.raises(DataError, match=r"postprocessing.json: 'bogus' is not a class of the checkpoint "
                                        r"\(classes: body, disc\); select again"):
        read_postprocessing(path, labels)
    _rules(path, disc=(1, "none", None))
    with pytest.raises(DataError, match=r"class 'disc' is at index 1 in the file but at index 2 in the checkpoint"):
        read_postprocessing(path, labels)
    _rules(path, disc=(2, "remove_small", 3), body=(1, "largest_component", None))
    assert read_postprocessing(path, labels) == {1: LARGEST, 2: ComponentRule("remove_small", 3)}
