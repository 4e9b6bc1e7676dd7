"""A rerun into a folder made with other label-shaping settings is refused before anything is predicted (exit 2,
one line); the same settings skip; --overwrite redoes; sidecars of an older medseg (no settings) still skip; the
sidecar records the precision that ran, not "auto". Image cases are compared through their own records
``OUT/.medseg-predict/<name>.json``, so one folder can hold cases made by several models."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from medseg.checkpoint import load_checkpoint, save_checkpoint
from medseg.prediction.case_records import RECORDS_FOLDER, case_record
from medseg.prediction.run_settings import settings_differences
from medseg.sliding_window.plan import cpu_has_native_bf16


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _perturbed(checkpoint: Path, target: Path) -> Path:
    """``checkpoint`` with one weight changed: another trained state, the file otherwise alike."""
    payload = load_checkpoint(checkpoint)
    state = payload["state_dict"]
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name] + 1e-3
    return save_checkpoint({k: v for k, v in payload.items() if k not in ("format", "format_version", "path")}, target)


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


def test_same_settings_skip_other_threshold_refused_overwrite_redoes(ckpt2d, images, tmp_path, predict_cli,
        snapshot_all):
    out = tmp_path / "out"
    assert predict_cli(ckpt2d[0], images, "-o", out, "--statistics")[0] == 0
    first = sorted(images.iterdir())[0].stem
    recorded = json.loads((out / f"{first}.json").read_text())["settings"]
    assert recorded["threshold"] is None and recorded["models"][0]["tta"] is False
    assert recorded["models"][0]["checkpoint"] == str(Path(ckpt2d[0]).resolve())
    assert recorded["models"][0]["checkpoint_sha256"] == hashlib.sha256(Path(ckpt2d[0]).read_bytes()).hexdigest()
    before = snapshot_all(out)

    code, stdout, _ = predict_cli(ckpt2d[0], images, "-o", out, "--statistics")  # same settings: skipped
    assert code == 0 and ", 2 existing skipped" in stdout
    after = snapshot_all(out)
    assert {n: v for n, v in after.items() if n != "statistics.csv"} == {
        n: v for n, v in before.items() if n != "statistics.csv"}  # same bytes, same mtimes
    assert after["statistics.csv"][1] == before["statistics.csv"][1]  # the table is rebuilt, to the same bytes
    before = after

    code, stdout, stderr = predict_cli(ckpt2d[0], images, "-o", out, "--statistics", "--threshold", "0.3")
    assert code == 2 and stdout == ""
    assert stderr.splitlines() == [  # the cases' records are compared first, then each sidecar
        f"error: {case_record(out, first)}: made with threshold none, this run has threshold 0.3; the finished "
        f"cases in {out} would be kept as they are: rerun with --overwrite to redo them with this run's settings, "
        "or choose another -o"]
    assert snapshot_all(out) == before  # nothing written, nothing touched

    code, stdout, _ = predict_cli(ckpt2d[0], images, "-o", out, "--statistics", "--threshold", "0.3", "--overwrite")
    assert code == 0 and stdout.startswith("5 files written")  # 2 masks, 2 sidecars, the table
    assert json.loads((out / f"{first}.json").read_text())["settings"]["threshold"] == 0.3
    assert predict_cli(ckpt2d[0], images, "-o", out, "--statistics", "--threshold", "0.3")[0] == 0


def test_image_folder_without_statistics_other_threshold_refused_overwrite_redoes(ckpt2d, images, tmp_path, predict_cli,
        snapshot_all):
    out = tmp_path / "out"
    stems = sorted(p.stem for p in images.iterdir())
    code, stdout, _ = predict_cli(ckpt2d[0], images, "-o", out)
    assert code == 0 and stdout.startswith("2 files written")  # the masks; the records are no case's outputs
    assert sorted(p.name for p in out.iterdir()) == sorted([RECORDS_FOLDER, *(f"{s}.png" for s in stems)])
    assert sorted(p.name for p in (out / RECORDS_FOLDER).iterdir()) == [f"{s}.json" for s in stems]
    assert list(out.glob("*.json")) == []  # the records stay out of the folder's JSON files
    for stem in stems:
        record = json.loads(case_record(out, stem).read_text())["settings"]
        assert record["threshold"] is None and record["largest_component"] is False
        assert record["models"][0]["checkpoint_sha256"] == _sha256(ckpt2d[0])
    before = snapshot_all(out)

    code, stdout, _ = predict_cli(ckpt2d[0], images, "-o", out)  # same settings: skipped, nothing touched
    assert code == 0 and ", 2 existing skipped" in stdout and snapshot_all(out) == before

    code, stdout, stderr = predict_cli(ckpt2d[0], images, "-o", out, "--threshold", "0.3")
    assert (code, stdout) == (2, "")
    assert stderr.splitlines() == [
        f"error: {case_record(out, stems[0])}: made with threshold none, this run has threshold 0.3; the finished "
        f"cases in {out} would be kept as they are: rerun with --overwrite to redo them with this run's settings, "
        "or choose another -o"]
    assert snapshot_all(out) == before  # masks byte- and mtime-identical, the records too
    code, stdout, stderr = predict_cli(ckpt2d[0], images, "-o", out, "--tta")
    assert code == 2
    assert stderr.startswith(f"error: {case_record(out, stems[0])}: made with tta false, this run has tta ")

    code, stdout, _ = predict_cli(ckpt2d[0], images, "-o", out, "--threshold", "0.3", "--overwrite")
    assert code == 0 and stdout.startswith("2 files written")
    assert [json.loads(case_record(out, s).read_text())["settings"]["threshold"] for s in stems] == [0.3, 0.3]
    assert all(snapshot_all(out)[n][0] != before[n][0] for n in before)  # both masks and both records redone
    code, stdout, _ = predict_cli(ckpt2d[0], images, "-o", out, "--threshold", "0.3")
    assert code == 0 and ", 2 existing skipped" in stdout
    assert predict_cli(ckpt2d[0], images, "-o", out)[0] == 2  # and now the old threshold is the other one


def test_two_image_sets_by_two_checkpoints_share_one_folder(ckpt2d, images, tmp_path, predict_cli, snapshot_all):
    others = tmp_path / "others"  # another image set, as another fold's validation images
    others.mkdir()
    for p in sorted(ckpt2d[1].iterdir())[2:4]:
        shutil.copy(p, others / p.name)
    other_ckpt = _perturbed(ckpt2d[0], tmp_path / "other.pt")
    out = tmp_path / "out"
    code, stdout, _ = predict_cli(ckpt2d[0], images, "-o", out)
    assert code == 0 and stdout.startswith("2 files written")
    code, stdout, stderr = predict_cli(other_ckpt, others, "-o", out)  # the first set's cases are not compared
    assert code == 0 and stdout.startswith("2 files written"), stderr
    for folder, ckpt in ((images, ckpt2d[0]), (others, other_ckpt)):
        for p in folder.iterdir():
            model = json.loads(case_record(out, p.stem).read_text())["settings"]["models"][0]
            assert model["checkpoint_sha256"] == _sha256(ckpt) and model["checkpoint"] == str(ckpt.resolve())
    before = snapshot_all(out)
    assert len([n for n in before if n.endswith(".png")]) == 4

    for folder, ckpt in ((images, ckpt2d[0]), (others, other_ckpt)):  # each set rerun with its own checkpoint
        code, stdout, _ = predict_cli(ckpt, folder, "-o", out)
        assert code == 0 and ", 2 existing skipped" in stdout and snapshot_all(out) == before
    code, stdout, stderr = predict_cli(other_ckpt, images, "-o", out)  # the first set with the other checkpoint
    first = sorted(p.stem for p in images.iterdir())[0]
    assert (code, stdout) == (2, "") and len(stderr.splitlines()) == 1
    assert stderr.startswith(f"error: {case_record(out, first)}: made with checkpoint {Path(ckpt2d[0]).resolve()} "
                             f"(sha256 {_sha256(ckpt2d[0])[:12]}), this run has checkpoint {other_ckpt.resolve()} ")
    assert snapshot_all(out) == before


def test_a_run_that_writes_nothing_leaves_no_folder(ckpt2d, tmp_path, predict_cli):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"not a png")
    out = tmp_path / "new" / "out"
    code, stdout, _ = predict_cli(ckpt2d[0], broken, "-o", out)
    assert code == 1 and not (tmp_path / "new").exists(), stdout


def test_old_sidecars_without_settings_still_skip(ckpt2d, images, tmp_path, predict_cli, snapshot_all):
    out = tmp_path / "out"
    assert predict_cli(ckpt2d[0], images, "-o", out, "--statistics")[0] == 0
    shutil.rmtree(out / RECORDS_FOLDER)  # as an older medseg wrote the folder: no records, no settings in sidecars
    for sidecar in out.glob("*.json"):
        data = json.loads(sidecar.read_text())
        del data["settings"]
        sidecar.write_text(json.dumps(data))
    before = snapshot_all(out)
    code, stdout, _ = predict_cli(ckpt2d[0], images, "-o", out, "--statistics", "--threshold", "0.3")
    assert code == 0 and ", 2 existing skipped" in stdout
    assert not (out / RECORDS_FOLDER).exists()  # the kept masks' settings are unknown: no record claims them
    after = snapshot_all(out)
    assert {n: v for n, v in after.items() if n != "statistics.csv"} == {
        n: v for n, v in before.items() if n != "statistics.csv"}


def test_volume_sidecar_records_precision_that_ran_and_tta_change_is_refused(ckpt3d, volume, tmp_path, predict_cli,
        snapshot_all):
    out = tmp_path / "out"
    assert predict_cli(ckpt3d[0], volume, "-o", out)[0] == 0
    sidecar = next(out.glob("*.json"))
    data = json.loads(sidecar.read_text())
    ran = "bf16" if cpu_has_native_bf16() else "fp32"  # what "auto" means on this CPU
    assert data["infer"]["precision"] == ran
    model = data["settings"]["models"][0]
    assert (model["precision"], model["precision_used"], model["tta"]) == ("auto", ran, False)
    assert (model["roi_size"], model["overlap"], model["blend"]) == ([16, 16, 16], 0.25, "gaussian")
    before = snapshot_all(out)

    code, stdout, stderr = predict_cli(ckpt3d[0], volume, "-o", out, "--tta")
    assert code == 2 and stdout == ""
    assert stderr.startswith(f"error: {sidecar}: made with tta false, this run has tta true; ")
    assert len(stderr.splitlines()) == 1 and snapshot_all(out) == before

    code, _, stderr = predict_cli(ckpt3d[0], volume, "-o", out, "--precision", "fp32")  # the setting asked counts
    assert code == 2 and f"made with precision auto (ran as {ran}), this run has precision fp32; " in stderr
    assert snapshot_all(out) == before

    code, stdout, _ = predict_cli(ckpt3d[0], volume, "-o", out, "--probabilities")  # an extra output: no refusal
    assert code == 0 and stdout.startswith("1 files written")


def test_copied_checkpoint_is_the_same_a_perturbed_one_is_refused(ckpt2d, images, tmp_path, predict_cli, snapshot_all):
    out = tmp_path / "out"
    assert predict_cli(ckpt2d[0], images, "-o", out)[0] == 0  # no --statistics: only the cases' records compare
    masks = snapshot_all(out)
    copied = tmp_path / "copied.pt"
    shutil.copy(ckpt2d[0], copied)  # the same bytes with a new modification time: the same checkpoint
    os.utime(copied, ns=(1_000_000_000, 1_000_000_000))
    code, stdout, _ = predict_cli(copied, images, "-o", out)
    assert code == 0 and ", 2 existing skipped" in stdout and snapshot_all(out) == masks

    perturbed = _perturbed(ckpt2d[0], tmp_path / "perturbed.pt")
    code, stdout, stderr = predict_cli(perturbed, images, "-o", out)
    old, new = (hashlib.sha256(p.read_bytes()).hexdigest()[:12] for p in (Path(ckpt2d[0]), perturbed))
    assert code == 2 and stdout == "" and old != new
    first = sorted(p.stem for p in images.iterdir())[0]
    assert stderr.startswith(f"error: {case_record(out, first)}: made with checkpoint {Path(ckpt2d[0]).resolve()} "
                             f"(sha256 {old}), this run has checkpoint {perturbed.resolve()} (sha256 {new}); ")
    assert len(stderr.splitlines()) == 1 and snapshot_all(out) == masks


def test_differences_name_each_setting():
    one = {"models": [{"checkpoint": "a.pt", "checkpoint_sha256": "ab" * 32, "tta": False,
                       "precision": "auto", "precision_used": "fp32"}], "threshold": None,
           "largest_component": False, "postprocessing": None}
    same_file_elsewhere = {**one, "models": [{**one["models"][0], "checkpoint": "b.pt", "precision_used": "bf16"}]}
    assert list(settings_differences(one, same_file_elsewhere)) == []  # path and precision that ran: shown only
    two = {**one, "models": one["models"] * 2, "largest_component": True}
    assert list(settings_differences(one, two)) == [("models", "1 model", "an ensemble of 2 models"),
                                                    ("largest_component", "false", "true")]
    other = {**two, "models": [two["models"][0], {**two["models"][1], "tta": True}]}
    assert list(settings_differences(two, other)) == [("model 2 tta", "false", "true")]
    retrained = {**one, "models": [{**one["models"][0], "checkpoint_sha256": "cd" * 32}]}
    assert list(settings_differences(one, retrained)) == [
        ("checkpoint", "a.pt (sha256 abababababab)", "a.pt (sha256 cdcdcdcdcdcd)")]


def test_ensemble_records_each_member_and_one_model_after_it_is_refused(ckpt2d, images, tmp_path, predict_cli):
    out, twin = tmp_path / "out", tmp_path / "twin.pt"
    shutil.copy2(ckpt2d[0], twin)
    code, stdout, _ = predict_cli(ckpt2d[0], twin, images, "-o", out, "--statistics")
    assert code == 0, stdout
    first = sorted(images.iterdir())[0].stem
    models = json.loads((out / f"{first}.json").read_text())["settings"]["models"]
    assert [m["checkpoint"] for m in models] == [str(Path(ckpt2d[0]).resolve()), str(twin.resolve())]
    code, _, stderr = predict_cli(ckpt2d[0], images, "-o", out, "--statistics")
    assert code == 2 and stderr.startswith(
        f"error: {case_record(out, first)}: made with an ensemble of 2 models, this run has 1 model; ")
    shutil.rmtree(out / RECORDS_FOLDER)  # the sidecars refuse it as well
    code, _, stderr = predict_cli(ckpt2d[0], images, "-o", out, "--statistics")
    assert code == 2 and stderr.startswith(
        f"error: {out / (first + '.json')}: made with an ensemble of 2 models, this run has 1 model; ")


def test_sidecar_added_to_a_kept_mask_describes_that_mask_and_claims_no_settings(ckpt2d, images, tmp_path, predict_cli,
        snapshot_all):
    out = tmp_path / "out"
    assert predict_cli(ckpt2d[0], images, "-o", out)[0] == 0  # masks only: no sidecar recorded their settings
    shutil.rmtree(out / RECORDS_FOLDER)  # as an older medseg wrote the folder
    masks = snapshot_all(out)
    code, stdout, _ = predict_cli(ckpt2d[0], images, "-o", out, "--statistics", "--threshold", "0.01")
    assert code == 0 and stdout.startswith("3 files written")  # 2 sidecars and the table; the masks are kept
    assert {n: v for n, v in snapshot_all(out).items() if n in masks} == masks
    fresh = tmp_path / "fresh"  # the statistics of the kept masks, as a run without a threshold writes them
    assert predict_cli(ckpt2d[0], images, "-o", fresh, "--statistics")[0] == 0
    for sidecar in out.glob("*.json"):
        data, reference = json.loads(sidecar.read_text()), json.loads((fresh / sidecar.name).read_text())
        assert data["settings"] is None and data["statistics"] == reference["statistics"]


def test_unreadable_records_are_returned_as_one_line_messages(tmp_path):
    from medseg.prediction.run_settings import check_recorded_settings

    record, folder, absent = tmp_path / "case.json", tmp_path / "folder.json", tmp_path / "absent.json"
    folder.mkdir()
    for content, message in ((bytes(range(128, 256)), "not readable JSON"), (b"[1, 2]", "holds a JSON list")):
        record.write_bytes(content)  # bytes that are no UTF-8, then JSON that is no object
        found = check_recorded_settings([record, folder, absent], {"threshold": None}, tmp_path)
        assert list(found) == [record, folder]
        assert found[record].startswith(f"{record}: {message}") and "\n" not in found[record]
        assert found[folder].startswith(f"{folder}: is a folder, ")
