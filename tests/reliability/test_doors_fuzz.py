"""Fuzzing at the doors: every CLI command's options and every config key, with values of the wrong type, out of
range, NaN, huge or empty. Each ends in exit 0, or exit 1/2 with one error line and no traceback.

Two parts:

* a hostile-input corpus (counted in the session's ``hostile inputs`` summary): every leaf key of the config
  schema set through ``medseg config check --set`` to NaN, a nested list and a boolean (refused naming the key,
  except a boolean for a boolean key), and bad option values of each command;
* Hypothesis properties (derandomized, a few dozen examples each) over the options of each command and over
  ``--set`` of a shipped config.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from typer.testing import CliRunner

from medseg.cli.main import app
from medseg.config import load_config
from medseg.config.schema import ExperimentConfig
from medseg.config.strict import takes_bool
from medseg.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "configs" / "kvasir.yaml"
_fuzz = settings(max_examples=25, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def _build_the_cli_once() -> Iterator[None]:
    """Typer rebuilds the click command on every ``CliRunner.invoke`` (about 0.1 s, most of a ``config check``);
    hundreds of tries reuse one build here."""
    import typer.testing

    build = getattr(typer.testing, "_get_command", None)
    if build is None:
        yield
        return
    built = build(app)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(typer.testing, "_get_command", lambda a: built if a is app else build(a))
        yield


def leaf_keys(model: type[BaseModel] = ExperimentConfig, prefix: str = "") -> Iterator[tuple[str, object]]:
    """Dotted keys of every value of the schema (sections are walked, not set), with their annotations."""
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from leaf_keys(ann, f"{prefix}{name}.")
        elif name == "model" and model is ExperimentConfig:  # a union of network configs: the UNet's keys
            yield from leaf_keys(type(ExperimentConfig.model_fields["model"].get_default(call_default_factory=True)),
                                 f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", ann


LEAVES = dict(leaf_keys())


def test_the_walk_finds_every_section():
    sections = {k.split(".")[0] for k in LEAVES}
    assert sections == {"version", "data", "model", "loss", "train", "infer"}
    assert {"data.labels.tolerance", "data.augment.noise_std", "train.scheduler.factor", "data.spacing_mm"} <= set(
        LEAVES)
    assert len(LEAVES) > 70


def _one_error_line(result) -> list[str]:
    return [ln for ln in result.stderr.splitlines() if ln.startswith(("error:", "failed:"))]


def _assert_clear(result, expect=(0, 1, 2)) -> None:
    __tracebackhide__ = True
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output and "╭" not in result.stderr, result.stderr[-800:]
    assert result.exit_code in expect, (result.exit_code, result.stderr[-500:])
    if result.exit_code != 0:
        lines = _one_error_line(result)
        assert len(lines) == 1 or all(ln.startswith("failed:") for ln in lines), result.stderr[-800:]
        assert all(len(ln) < 2000 for ln in lines)


# ----------------------------------------------------------------------------------- hostile corpus: config keys
@pytest.fixture(scope="module")
def good_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "exp.yaml"
    path.write_text("data:\n  root: data\n  image_size: [32, 32]\nmodel:\n  channels: [4, 8]\n  strides: [2]\n")
    return path


@pytest.mark.parametrize("value", [".nan", "[[[]]]", "true"])
def test_every_config_key_refuses_a_hostile_value(value, good_config, run_cli):
    """About 90 keys x 3 values: NaN and a nested list are refused by every key, a boolean by every non-boolean
    key (``max_epochs: true`` was 1); the error line names the key."""
    unclear = []
    for key, ann in LEAVES.items():
        valid = value == "true" and takes_bool(ann)
        out = run_cli(f"config_set_{key}={value}", ["config", "check", good_config, "--set", f"{key}={value}"],
                      expect=(0,) if valid else (2,), names=[] if valid else [key])
        if out.kind != "clear" or (out.exit_code == 0) != valid:
            unclear.append(f"{key}: exit {out.exit_code} {out.stderr.strip()[:200]}")
    assert unclear == []


# ----------------------------------------------------------------------------------- hostile corpus: options
@pytest.fixture(scope="module")
def eval_folders(tmp_path_factory, ckpt2d) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("evalfolders")
    masks = ckpt2d[1].parent / "masks"
    for name in ("pred", "truth"):
        (tmp / name).mkdir()
        for p in sorted(masks.iterdir())[:2]:
            shutil.copy(p, tmp / name / p.name)
    return tmp / "pred", tmp / "truth"


OPTION_CASES = {
    # (args after the command's fixed arguments, expected exit, a string the error line must hold)
    "predict_overlap_nan": (["--overlap", "nan"], 2, "--overlap"),
    "predict_overlap_inf": (["--overlap", "inf"], 2, "--overlap"),
    "predict_overlap_text": (["--overlap", "abc"], 2, "--overlap"),
    "predict_overlap_huge": (["--overlap", "1e308"], 2, "--overlap"),
    "predict_sw_batch_negative": (["--sw-batch-size", "-3"], 2, "--sw-batch-size"),
    "predict_sw_batch_huge": (["--sw-batch-size", "9" * 30], 2, "--sw-batch-size"),
    "predict_roi_empty": (["--roi-size", ""], 2, "--roi-size"),
    "predict_roi_text": (["--roi-size", "a,b"], 2, "--roi-size"),
    "predict_precision_unknown": (["--precision", "fp8"], 2, "--precision"),
    "predict_device_unknown": (["--device", "tpu"], 2, "tpu"),
    "predict_device_empty": (["--device", ""], 2, "device"),
    "predict_unknown_option": (["--overlapp", "0.5"], 2, "--overlapp"),
    "predict_dicom_seg_2d_model": (["--dicom-seg"], 2, "--dicom-seg"),
}
EVAL_CASES = {
    "evaluate_tolerance_negative": (["--tolerance", "-5"], 2, "--tolerance"),
    "evaluate_tolerance_huge": (["--tolerance", "9" * 25], 2, "--tolerance"),
    "evaluate_tolerance_text": (["--tolerance", "x"], 2, "--tolerance"),
    "evaluate_labels_duplicate_value": (["--labels", "0=a,255=b,255=c"], 2, "255"),
    "evaluate_labels_duplicate_name": (["--labels", "0=a,1=b,2=b"], 2, "'b'"),
    "evaluate_labels_empty": (["--labels", ""], 2, "--labels"),
    "evaluate_labels_garbage": (["--labels", "=,=,="], 2, "--labels"),
    "evaluate_labels_and_checkpoint": (["--labels", "0=a,255=b", "--checkpoint", "x.pt"], 2, "--labels"),
}


@pytest.mark.parametrize("case", sorted(OPTION_CASES))
def test_bad_predict_option(case, ckpt2d, tmp_path, run_cli):
    args, code, name = OPTION_CASES[case]
    image = sorted(ckpt2d[1].iterdir())[0]
    out = run_cli(case, ["predict", ckpt2d[0], image, "-o", tmp_path / "out", *args], expect=(code,), names=[name])
    assert out.kind == "clear", out.detail
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("case", sorted(EVAL_CASES))
def test_bad_evaluate_option(case, eval_folders, tmp_path, run_cli):
    args, code, name = EVAL_CASES[case]
    pred, truth = eval_folders
    out = run_cli(case, ["evaluate", "--pred", pred, "--truth", truth, "-o", tmp_path / "m.csv", *args],
                  expect=(code,), names=[name])
    assert out.kind == "clear", out.detail
    assert not (tmp_path / "m.csv").exists()


@pytest.mark.parametrize(("case", "args", "name"), [
    ("demo_epochs_zero", ["demo", "--epochs", "0"], "--epochs"),
    ("demo_epochs_negative", ["demo", "--epochs", "-4"], "--epochs"),
    ("demo_kind_unknown", ["demo", "--kind", "brain"], "--kind"),
    ("synth_n_zero", ["synth", "polyp", "--n", "0"], "n: got 0"),
    ("synth_kind_unknown", ["synth", "heart"], "heart"),
    ("train_device_unknown", ["train", "CFG", "--device", "tpu"], "train.device"),
    ("train_set_bool_epochs", ["train", "CFG", "--set", "train.max_epochs=true"], "train.max_epochs"),
    ("train_set_spacing_zero", ["train", "CFG", "--set", "data.spacing_mm=[0,1,1]"], "data.spacing_mm"),
    ("train_set_window_unknown", ["train", "CFG", "--set", "data.windows=[bonez]"], "bonez"),
    ("train_set_nan_lr", ["train", "CFG", "--set", "train.lr=.nan"], "train.lr"),
    ("train_set_duplicate_key", ["train", "CFG", "--set", "data.labels.classes={0: a, 0: b}"], "twice"),
    ("train_resume_and_run_dir", ["train", "CFG", "--resume", "a", "--run-dir", "b"], "--resume"),
])
def test_bad_option_other_commands(case, args, name, good_config, tmp_path, run_cli):
    args = [good_config if a == "CFG" else a for a in args]
    out = run_cli(case, [*args, "-o", tmp_path / "out"] if args[0] in ("demo", "synth") else args, expect=(2,),
                  names=[name])
    assert out.kind == "clear", out.detail
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------- Hypothesis properties
_hostile_text = st.one_of(
    st.sampled_from(["", " ", "nan", "-nan", "inf", "-inf", "1e309", "-1", "0", "1", "0.5", "1.5", "9" * 40, "0x10",
                     "true", "none", "[]", "{}", "a,b", "16,16", "32", "1,2,3,4", "\x00", "é", "--help", "-"]),
    st.text(max_size=12),
    st.integers(-10**20, 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
_PREDICT_OPTIONS = ["--overlap", "--sw-batch-size", "--roi-size", "--precision", "--device"]
_PREDICT_FLAGS = ["--tta", "--no-tta", "--largest-component", "--all-components", "--overlay", "--statistics",
                  "--overwrite", "--dicom-seg"]


@settings(_fuzz, max_examples=15)
@given(options=st.lists(st.tuples(st.sampled_from(_PREDICT_OPTIONS), _hostile_text), max_size=3),
       flags=st.lists(st.sampled_from(_PREDICT_FLAGS), max_size=3, unique=True))
def test_predict_options_fuzz(ckpt2d, tmp_path_factory, options, flags):
    image = sorted(ckpt2d[1].iterdir())[0]
    out_dir = tmp_path_factory.mktemp("fuzzpredict") / "out"
    args = ["predict", str(ckpt2d[0]), str(image), "-o", str(out_dir), "-q", *flags]
    for name, value in options:
        args += [name, value]
    _assert_clear(runner.invoke(app, args))


@_fuzz
@given(tolerance=_hostile_text, labels=st.one_of(st.none(), _hostile_text,
                                                 st.lists(st.tuples(st.integers(-3, 300), st.sampled_from(
                                                     ["a", "b", "", "="])), max_size=4).map(
                                                     lambda items: ",".join(f"{v}={n}" for v, n in items))))
def test_evaluate_options_fuzz(eval_folders, tmp_path_factory, tolerance, labels):
    pred, truth = eval_folders
    csv = tmp_path_factory.mktemp("fuzzeval") / "m.csv"
    args = ["evaluate", "--pred", str(pred), "--truth", str(truth), "-o", str(csv), "--tolerance", tolerance]
    result = runner.invoke(app, args + (["--labels", labels] if labels is not None else []))
    _assert_clear(result)
    assert (result.exit_code == 0) == csv.is_file()


@_fuzz
@given(command=st.sampled_from(["synth", "demo", "train", "export", "inspect", "config"]),
       options=st.lists(st.tuples(st.sampled_from(["--n", "--seed", "--epochs", "--kind", "--device", "--format",
                                                   "--set", "--resume", "-o", "--bogus"]), _hostile_text), max_size=3))
def test_other_commands_fuzz(tmp_path_factory, command, options):
    """Arguments that stop before any long work: ``-o`` is a file, the config or checkpoint is missing."""
    tmp = tmp_path_factory.mktemp("fuzzcmd")
    (tmp / "out").write_text("x")
    fixed = {"synth": ["synth", "polyp"], "demo": ["demo"], "train": ["train", str(tmp / "missing.yaml")],
             "export": ["export", str(tmp / "missing.pt")], "inspect": ["inspect", str(tmp / "missing.nii.gz")],
             "config": ["config", "check", str(tmp / "missing.yaml")]}[command]
    args = list(fixed)
    for name, value in options:
        args += [name, str(tmp / "out") if name == "-o" else value]
    if command in ("synth", "demo", "export") and "-o" not in args:
        args += ["-o", str(tmp / "out")]
    result = runner.invoke(app, args)
    _assert_clear(result)
    assert result.exit_code != 0 or "--help" in args
    assert (tmp / "out").read_text() == "x"


_values = st.one_of(
    st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10), st.lists(st.one_of(st.integers(-5, 300), st.floats(), st.booleans(), st.text(max_size=4)),
                                   max_size=4),
    st.dictionaries(st.one_of(st.integers(-2, 300), st.text(max_size=4)), st.text(max_size=5), max_size=3),
)


def _yaml_scalar(value: object) -> str:
    import yaml

    if isinstance(value, float) and math.isnan(value):
        return ".nan"
    if isinstance(value, float) and math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


@settings(_fuzz, max_examples=40)
@given(key=st.sampled_from(sorted(LEAVES)), value=_values)
def test_config_set_fuzz_valid_or_one_line_config_error(key, value):
    """The same path as ``--set``; a config that validates holds only finite floats and no boolean in a number."""
    try:
        cfg = load_config(SHIPPED, [f"{key}={_yaml_scalar(value)}"])
    except ConfigError as err:
        assert "\n" not in str(err) and str(err).startswith(f"{SHIPPED}: ") or str(err).startswith("--set "), str(err)
        return
    for section in cfg.model_dump(mode="python").values():
        for leaf in _flatten(section):
            assert not (isinstance(leaf, float) and not math.isfinite(leaf)), (key, value)
    got = cfg.model_dump(mode="python")
    for part in key.split("."):
        got = got[part]
    if isinstance(value, bool) and not takes_bool(LEAVES[key]):
        raise AssertionError(f"{key}: boolean {value!r} accepted as {got!r}")


def _flatten(node: object) -> Iterator[object]:
    if isinstance(node, dict):
        for v in node.values():
            yield from _flatten(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            yield from _flatten(v)
    else:
        yield node
