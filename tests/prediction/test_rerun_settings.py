"""A rerun into a folder made with other label-shaping settings is refused before anything is predicted (exit 2,
one line); the same settings skip; --overwrite redoes; sidecars of an older medseg (no settings) still skip; the
sidecar records the precision that ran, not "auto"."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medseg.cli.main import app
from medseg.errors import ConfigError
from medseg.prediction.batch import predict_paths
from medseg.prediction.predictor import Predictor
from medseg.prediction.run_settings import settings_differences
from medseg.sliding_window.plan import cpu_has_native_bf16

runner = CliRunner()


def _predict(*args: object) -> tuple[int, str, str]:
    result = runner.invoke(app, ["predict", *map(str, args), "--device", "cpu", "-q"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture()
def images(ckpt2d, tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for p in sorted(ckpt2d[1].iterdir())[:2]:
        shutil.copy(p, folder / p.name)
    return folder


@pytest.fixture()
def volume(ckpt3d, tmp_path) -> Path:
    folder = tmp_path / "volumes"
    folder.mkdir()
    first = sorted(ckpt3d[1].iterdir())[0]
    shutil.copy(first, folder / first.name)
    return folder


def test_same_settings_skip_other_threshold_refused_overwrite_redoes(ckpt2d, images, tmp_path):
    out = tmp_path / "out"
    assert _predict(ckpt2d[0], images, "-o", out, "--statistics")[0] == 0
    first = sorted(images.iterdir())[0].stem
    recorded = json.loads((out / f"{first}.json").read_text())["settings"]
    assert recorded["threshold"] is None and recorded["models"][0]["tta"] is False
    assert recorded["models"][0]["checkpoint"] == str(Path(ckpt2d[0]).resolve())
    assert recorded["models"][0]["checkpoint_bytes"] == Path(ckpt2d[0]).stat().st_size
    before = _snapshot(out)

    code, stdout, _ = _predict(ckpt2d[0], images, "-o", out, "--statistics")  # same settings: skipped
    assert code == 0 and ", 2 existing skipped" in stdout
    after = _snapshot(out)
    assert {n: v for n, v in after.items() if n != "statistics.csv"} == {
        n: v for n, v in before.items() if n != "statistics.csv"}  # same bytes, same mtimes
    assert after["statistics.csv"][1] == before["statistics.csv"][1]  # the table is rebuilt, to the same bytes
    before = after

    code, stdout, stderr = _predict(ckpt2d[0], images, "-o", out, "--statistics", "--threshold", "0.3")
    assert code == 2 and stdout == ""
    assert stderr.splitlines() == [
        f"error: {out / (first + '.json')}: made with threshold none, this run has threshold 0.3; the finished "
        f"cases in {out} would be kept as they are: rerun with --overwrite to redo them with this run's settings, "
        "or choose another -o"]
    assert _snapshot(out) == before  # nothing written, nothing touched

    code, stdout, _ = _predict(ckpt2d[0], images, "-o", out, "--statistics", "--threshold", "0.3", "--overwrite")
    assert code == 0 and stdout.startswith("5 files written")  # 2 masks, 2 sidecars, the table
    assert json.loads((out / f"{first}.json").read_text())["settings"]["threshold"] == 0.3
    assert _predict(ckpt2d[0], images, "-o", out, "--statistics", "--threshold", "0.3")[0] == 0


def test_old_sidecars_without_settings_still_skip(ckpt2d, images, tmp_path):
    out = tmp_path / "out"
    assert _predict(ckpt2d[0], images, "-o", out, "--statistics")[0] == 0
    for sidecar in out.glob("*.json"):  # as an older medseg wrote them
        data = json.loads(sidecar.read_text())
        del data["settings"]
        sidecar.write_text(json.dumps(data))
    before = _snapshot(out)
    code, stdout, _ = _predict(ckpt2d[0], images, "-o", out, "--statistics", "--threshold", "0.3")
    assert code == 0 and ", 2 existing skipped" in stdout
    after = _snapshot(out)
    assert {n: v for n, v in after.items() if n != "statistics.csv"} == {
        n: v for n, v in before.items() if n != "statistics.csv"}


def test_volume_sidecar_records_precision_that_ran_and_tta_change_is_refused(ckpt3d, volume, tmp_path):
    out = tmp_path / "out"
    assert _predict(ckpt3d[0], volume, "-o", out)[0] == 0
    sidecar = next(out.glob("*.json"))
    data = json.loads(sidecar.read_text())
    ran = "bf16" if cpu_has_native_bf16() else "fp32"  # what "auto" means on this CPU
    assert data["infer"]["precision"] == ran
    model = data["settings"]["models"][0]
    assert (model["precision"], model["precision_used"], model["tta"]) == ("auto", ran, False)
    assert (model["roi_size"], model["overlap"], model["blend"]) == ([16, 16, 16], 0.25, "gaussian")
    before = _snapshot(out)

    code, stdout, stderr = _predict(ckpt3d[0], volume, "-o", out, "--tta")
    assert code == 2 and stdout == ""
    assert stderr.startswith(f"error: {sidecar}: made with tta false, this run has tta true; ")
    assert len(stderr.splitlines()) == 1 and _snapshot(out) == before

    code, _, stderr = _predict(ckpt3d[0], volume, "-o", out, "--precision", "fp32")  # the setting asked counts
    assert code == 2 and f"made with precision auto (ran as {ran}), this run has precision fp32; " in stderr
    assert _snapshot(out) == before

    code, stdout, _ = _predict(ckpt3d[0], volume, "-o", out, "--probabilities")  # an extra output: no refusal
    assert code == 0 and stdout.startswith("1 files written")


def test_another_checkpoint_file_refused_a_moved_one_is_the_same(ckpt2d, images, tmp_path):
    out = tmp_path / "out"
    assert _predict(ckpt2d[0], images, "-o", out, "--statistics")[0] == 0
    moved = tmp_path / "moved.pt"
    shutil.copy2(ckpt2d[0], moved)  # same bytes and modification time: the same checkpoint
    assert _predict(moved, images, "-o", out, "--statistics")[0] == 0
    retrained = tmp_path / "retrained.pt"
    shutil.copy(ckpt2d[0], retrained)  # a new modification time: taken for another checkpoint
    loaded = Predictor.from_checkpoint(retrained, device="cpu")
    with pytest.raises(ConfigError, match=r"made with checkpoint .*\.pt \(\d+ bytes, modified .*\), this run has "
                                          r"checkpoint .*retrained\.pt"):
        predict_paths(loaded, [images], out, statistics=True, progress=False)


def test_differences_name_each_setting():
    one = {"models": [{"checkpoint": "a.pt", "checkpoint_bytes": 10, "checkpoint_modified": "t", "tta": False,
                       "precision": "auto", "precision_used": "fp32"}], "threshold": None,
           "largest_component": False, "postprocessing": None}
    same_file_elsewhere = {**one, "models": [{**one["models"][0], "checkpoint": "b.pt", "precision_used": "bf16"}]}
    assert list(settings_differences(one, same_file_elsewhere)) == []  # path and precision that ran: shown only
    two = {**one, "models": one["models"] * 2, "largest_component": True}
    assert list(settings_differences(one, two)) == [("models", "1 model", "an ensemble of 2 models"),
                                                    ("largest_component", "false", "true")]
    other = {**two, "models": [two["models"][0], {**two["models"][1], "tta": True}]}
    assert list(settings_differences(two, other)) == [("model 2 tta", "false", "true")]


def test_ensemble_records_each_member_and_one_model_after_it_is_refused(ckpt2d, images, tmp_path):
    out, twin = tmp_path / "out", tmp_path / "twin.pt"
    shutil.copy2(ckpt2d[0], twin)
    code, stdout, _ = _predict(ckpt2d[0], twin, images, "-o", out, "--statistics")
    assert code == 0, stdout
    first = sorted(images.iterdir())[0].stem
    models = json.loads((out / f"{first}.json").read_text())["settings"]["models"]
    assert [m["checkpoint"] for m in models] == [str(Path(ckpt2d[0]).resolve()), str(twin.resolve())]
    code, _, stderr = _predict(ckpt2d[0], images, "-o", out, "--statistics")
    assert code == 2 and stderr.startswith(
        f"error: {out / (first + '.json')}: made with an ensemble of 2 models, this run has 1 model; ")


def test_sidecar_added_to_a_kept_mask_describes_that_mask_and_claims_no_settings(ckpt2d, images, tmp_path):
    out = tmp_path / "out"
    assert _predict(ckpt2d[0], images, "-o", out)[0] == 0  # masks only: no sidecar recorded their settings
    masks = _snapshot(out)
    code, stdout, _ = _predict(ckpt2d[0], images, "-o", out, "--statistics", "--threshold", "0.01")
    assert code == 0 and stdout.startswith("3 files written")  # 2 sidecars and the table; the masks are kept
    assert {n: v for n, v in _snapshot(out).items() if n in masks} == masks
    fresh = tmp_path / "fresh"  # the statistics of the kept masks, as a run without a threshold writes them
    assert _predict(ckpt2d[0], images, "-o", fresh, "--statistics")[0] == 0
    for sidecar in out.glob("*.json"):
        data, reference = json.loads(sidecar.read_text()), json.loads((fresh / sidecar.name).read_text())
        assert data["settings"] is None and data["statistics"] == reference["statistics"]
