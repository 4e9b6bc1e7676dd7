"""Inference settings given at prediction time: checked like config, one clear line per mistake.

Unit tests of :func:`apply_infer_overrides` / :func:`parse_roi_size`, then the same rules through
``Predictor.from_checkpoint`` and ``medseg predict`` on tiny synthetic 2D and 3D checkpoints.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medseg.cli.main import app
from medseg.config.kinds import DataKind
from medseg.config.schema import InferConfig
from medseg.errors import ConfigError
from medseg.prediction.predictor import Predictor
from medseg.prediction.settings import MAX_ROI, apply_infer_overrides, parse_roi_size

V3, S2, I2 = DataKind.VOLUMES3D, DataKind.SLICES2D, DataKind.IMAGES2D
runner = CliRunner()


def _cli_name(setting: str) -> str:
    return "--" + setting.replace("_", "-")


#: The tail of every refused window size: what is allowed, as a regex.
ROI_ALLOWED = re.escape("; allowed integers 1..4096: one size for every axis or one per axis "
                        "(e.g. 96 or 96,96,64)") + "$"
#: The tail of every unknown-setting refusal (the allowed names, sorted).
UNKNOWN = (r"; unknown inference setting; allowed: backend, blend, largest_component, overlap, precision, roi_size, "
           r"sw_batch_size, threshold, tta$")
#: The settings an image model uses, as the tail of its refusals (Python names, then CLI options).
USES, CLI_USES = r"largest_component, threshold, tta$", r"--largest-component, --threshold, --tta$"
#: The middle of every image-model refusal.
NOT_FOR_IMAGES = re.escape("; does not apply to this images2d model (it runs once over the resized image, "
                           "no sliding window); settings it uses: ")


#: A stored config whose every field differs from the defaults, so "untouched fields kept" means something.
BASE = InferConfig(roi_size=(48, 40, 32), overlap=0.1, sw_batch_size=3, blend="constant", precision="fp32",
                   tta=True, largest_component=True)


# ------------------------------------------------------------------------------------------- bad values
@pytest.mark.parametrize(
    ("name", "value", "kind", "pattern"),
    [
        # the value as given (2, not the converted 2.0), then what pydantic says, then what is allowed
        ("overlap", 2, V3, r"^overlap: got 2; .*\(allowed: a number with 0 <= overlap < 1\)$"),
        ("overlap", -0.5, V3, r"^overlap: got -0\.5; .*\(allowed: a number with 0 <= overlap < 1\)$"),
        ("overlap", float("nan"), V3, r"^overlap: got nan \(float\); allowed a number with 0 <= overlap < 1$"),
        ("overlap", float("inf"), V3, r"^overlap: got inf \(float\); allowed a number with 0 <= overlap < 1$"),
        ("overlap", True, V3, r"^overlap: got True \(bool\); allowed a number with 0 <= overlap < 1$"),
        ("overlap", "0.5", V3, r"^overlap: got '0\.5' \(str\); allowed a number with 0 <= overlap < 1$"),
        ("overlap", 1.0, V3, r"^overlap: got 1\.0; .*\(allowed: a number with 0 <= overlap < 1\)$"),
        ("sw_batch_size", 0, V3, r"^sw_batch_size: got 0; .*\(allowed: an integer >= 1\)$"),
        ("sw_batch_size", -1, V3, r"^sw_batch_size: got -1; .*\(allowed: an integer >= 1\)$"),
        ("sw_batch_size", 2.5, V3, r"^sw_batch_size: got 2\.5 \(float\); allowed an integer >= 1$"),
        ("sw_batch_size", True, V3, r"^sw_batch_size: got True \(bool\); allowed an integer >= 1$"),
        ("precision", "fp8", S2, r"^precision: got 'fp8'; .*\(allowed: auto, fp32, bf16 or fp16\)$"),
        ("blend", "linear", V3, r"^blend: got 'linear'; .*\(allowed: gaussian or constant\)$"),
        ("tta", "yes", V3, r"^tta: got 'yes' \(str\); allowed true or false$"),
        ("tta", np.int64(1), V3, r"^tta: got (np\.int64\()?1\)? \(int64\); allowed true or false$"),
        ("largest_component", 1, S2, r"^largest_component: got 1 \(int\); allowed true or false$"),
        ("roi_size", "96,0", V3, r"^roi_size: got '96,0'" + ROI_ALLOWED),
        ("roi_size", "abc", V3, r"^roi_size: got 'abc'" + ROI_ALLOWED),
        ("roi_size", "", V3, r"^roi_size: got ''" + ROI_ALLOWED),
        ("roi_size", 4097, V3, r"^roi_size: got 4097" + ROI_ALLOWED),
        ("roi_size", "96,4097,64", V3, r"^roi_size: got '96,4097,64'" + ROI_ALLOWED),
        ("roi_size", [96, 96], V3, r"^roi_size: got 2 sizes \[96, 96\]; a volumes3d model needs 1 or 3$"),
        ("roi_size", (32, 32, 32), S2, r"^roi_size: got 3 sizes \[32, 32, 32\]; a slices2d model needs 1 or 2$"),
        ("ovrlap", 0.5, V3, r"^ovrlap: got 0\.5" + UNKNOWN),
        ("ovrlap", None, V3, r"^ovrlap: got None" + UNKNOWN),
    ],
)
def test_bad_override_is_one_line_naming_setting_value_and_allowed(name, value, kind, pattern):
    overrides = {name: value}
    with pytest.raises(ConfigError, match=pattern) as info:
        apply_infer_overrides(BASE, overrides, kind)
    assert "\n" not in str(info.value)
    assert overrides == {name: value}  # the caller's dict is not changed (nan: same object, so equal)


@pytest.mark.parametrize(
    ("value", "shown"),
    [("96,0", "'96,0'"), ("abc", "'abc'"), (0, "0"), (-3, "-3"), (2.5, "2.5"), (True, "True"), ([], "[]"),
     ("96,", "'96,'"), ("1e2", "'1e2'"), (4097, "4097"), ("4097", "'4097'"), ([4096, 4097], "[4096, 4097]"),
     (float("nan"), "nan"), (None, "None")],
)
def test_parse_roi_size_refuses(value, shown):
    with pytest.raises(ConfigError, match=r"^roi_size: got " + re.escape(shown) + ROI_ALLOWED):
        parse_roi_size(value)


def test_parse_roi_size_names_the_option_it_is_given():
    with pytest.raises(ConfigError, match=r"^--roi-size: got '0'" + ROI_ALLOWED):
        parse_roi_size("0", name="--roi-size")


def test_roi_size_limit_is_4096():
    assert MAX_ROI == 4096
    assert parse_roi_size(4096) == (4096,)
    assert parse_roi_size("4096,1,4096") == (4096, 1, 4096)
    for value, shown in ((4097, "4097"), ("4097", "'4097'"), ((4096, 4097, 1), "(4096, 4097, 1)")):
        with pytest.raises(ConfigError, match=r"^roi_size: got " + re.escape(shown) + ROI_ALLOWED):
            parse_roi_size(value)
    # the same limit where an override enters, under the CLI's option name
    assert apply_infer_overrides(BASE, {"roi_size": "4096"}, V3).roi_size == (4096,)
    assert apply_infer_overrides(BASE, {"roi_size": [4096, 4096]}, S2).roi_size == (4096, 4096)
    with pytest.raises(ConfigError, match=r"^roi_size: got 4097" + ROI_ALLOWED):
        apply_infer_overrides(BASE, {"roi_size": 4097}, V3)
    with pytest.raises(ConfigError, match=r"^--roi-size: got '4097'" + ROI_ALLOWED):
        apply_infer_overrides(BASE, {"roi_size": "4097"}, V3, spell=_cli_name)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("96", (96,)), (96, (96,)), ("96,96,64", (96, 96, 64)), ("96x96x64", (96, 96, 64)),
     (" 96 , 80 ", (96, 80)), ([96, 96, 64], (96, 96, 64)), ((64,), (64,)), (np.int64(32), (32,)),
     ("1", (1,)), ("4096", (4096,)), (4096, (4096,))],
)
def test_parse_roi_size_accepts(value, expected):
    result = parse_roi_size(value)
    assert result == expected
    assert all(type(n) is int for n in result)


# ------------------------------------------------------------------------------------------- good values
@pytest.mark.parametrize(
    ("kind", "overrides", "expected"),
    [
        (V3, {"overlap": 0.5}, {"overlap": 0.5}),
        (V3, {"overlap": 0}, {"overlap": 0.0}),
        (V3, {"overlap": np.float32(0.5)}, {"overlap": 0.5}),
        (V3, {"sw_batch_size": 8, "blend": "gaussian"}, {"sw_batch_size": 8, "blend": "gaussian"}),
        (V3, {"precision": "bf16", "tta": False, "largest_component": False},
         {"precision": "bf16", "tta": False, "largest_component": False}),
        (V3, {"roi_size": "96x96x64"}, {"roi_size": (96, 96, 64)}),
        (V3, {"roi_size": "32"}, {"roi_size": (32,)}),
        (S2, {"roi_size": (64,)}, {"roi_size": (64,)}),
        (S2, {"roi_size": "64,48", "overlap": 0.75, "sw_batch_size": 1, "precision": "fp16"},
         {"roi_size": (64, 48), "overlap": 0.75, "sw_batch_size": 1, "precision": "fp16"}),
        (I2, {"tta": False, "largest_component": False}, {"tta": False, "largest_component": False}),
        (V3, {}, {}),
    ],
)
def test_valid_overrides_change_exactly_those_fields(kind, overrides, expected):
    before = BASE.model_dump()
    result = apply_infer_overrides(BASE, overrides, kind)
    assert isinstance(result, InferConfig)
    assert result.model_dump() == {**before, **expected}
    assert BASE.model_dump() == before  # the stored config is not changed in place


def test_none_values_mean_not_given():
    nothing = dict.fromkeys(("roi_size", "overlap", "sw_batch_size", "blend", "precision", "tta",
                             "largest_component"))
    assert apply_infer_overrides(BASE, nothing, V3) == BASE
    # the CLI passes every option, None when not given: an image model must not trip over the volume ones
    assert apply_infer_overrides(BASE, {**nothing, "tta": False}, I2).model_dump() == {**BASE.model_dump(),
                                                                                       "tta": False}


def test_misspelled_setting_is_refused_even_when_none():
    # None means "not given" only for a known setting: a misspelled one is a mistake whatever its value
    nothing = dict.fromkeys(("roi_size", "overlap", "sw_batch_size", "blend", "precision", "tta",
                             "largest_component"))
    for kind in (V3, S2, I2):
        with pytest.raises(ConfigError, match=r"^ovrlap: got None" + UNKNOWN):
            apply_infer_overrides(BASE, {"ovrlap": None}, kind)
        with pytest.raises(ConfigError, match=r"^ovrlap: got None" + UNKNOWN):
            apply_infer_overrides(BASE, {**nothing, "ovrlap": None}, kind)
    with pytest.raises(ConfigError, match=r"^--ovrlap: got None" + UNKNOWN):
        apply_infer_overrides(BASE, {"ovrlap": None}, V3, spell=_cli_name)


@pytest.mark.parametrize("kind", [V3, S2, I2])
def test_numpy_bools_are_stored_as_python_bools(kind):
    result = apply_infer_overrides(BASE, {"tta": np.bool_(True), "largest_component": np.bool_(False)}, kind)
    assert result.tta is True and type(result.tta) is bool
    assert result.largest_component is False and type(result.largest_component) is bool
    result = apply_infer_overrides(BASE.model_copy(update={"tta": False}), {"tta": np.bool_(True)}, kind)
    assert result.tta is True and type(result.tta) is bool


def test_numpy_int_batch_size_is_stored_as_python_int():
    result = apply_infer_overrides(BASE, {"sw_batch_size": np.int64(4)}, V3)
    assert result.sw_batch_size == 4 and type(result.sw_batch_size) is int
    overlap = apply_infer_overrides(BASE, {"overlap": np.float64(0.3)}, V3).overlap
    assert overlap == pytest.approx(0.3) and type(overlap) is float


# ------------------------------------------------------------------------------------------- image models
@pytest.mark.parametrize(
    ("name", "value"),
    [("overlap", 0.5), ("precision", "fp32"), ("sw_batch_size", 2), ("roi_size", "32"), ("blend", "constant")],
)
def test_image_model_refuses_sliding_window_settings(name, value):
    pattern = rf"^{name}: got {re.escape(repr(value))}{NOT_FOR_IMAGES}{USES}"
    with pytest.raises(ConfigError, match=pattern):
        apply_infer_overrides(BASE, {name: value}, I2)
    # the same settings are fine for the slice-wise 2D model (it slides over each slice)
    apply_infer_overrides(BASE, {name: value}, S2)


@pytest.mark.parametrize(("name", "value"), [("tta", True), ("tta", False), ("largest_component", False)])
def test_image_model_takes_tta_and_largest_component(name, value):
    assert getattr(apply_infer_overrides(BASE, {name: value}, I2), name) is value


def test_image_model_refusal_also_names_the_value():
    with pytest.raises(ConfigError, match=r"^overlap: got 0\.37" + NOT_FOR_IMAGES + USES):
        apply_infer_overrides(BASE, {"overlap": 0.37}, I2)
    # the value as given, not converted (2, not 2.0), and checked for kind before range
    with pytest.raises(ConfigError, match=r"^overlap: got 2" + NOT_FOR_IMAGES + USES):
        apply_infer_overrides(BASE, {"overlap": 2}, I2)


# ------------------------------------------------------------------------------------------- spell
def test_spell_names_settings_as_cli_options():
    with pytest.raises(ConfigError, match=r"^--sw-batch-size: got 0; .*\(allowed: an integer >= 1\)$") as info:
        apply_infer_overrides(BASE, {"sw_batch_size": 0}, V3, spell=_cli_name)
    assert str(info.value).startswith("--sw-batch-size:")
    with pytest.raises(ConfigError, match=r"^--roi-size: got 2 sizes \[32, 32\]; a volumes3d model needs 1 or 3$"):
        apply_infer_overrides(BASE, {"roi_size": "32,32"}, V3, spell=_cli_name)
    with pytest.raises(ConfigError, match=r"^--roi-size: got '0'" + ROI_ALLOWED):
        apply_infer_overrides(BASE, {"roi_size": "0"}, V3, spell=_cli_name)
    pattern = r"^--blend: got 'constant'" + NOT_FOR_IMAGES + CLI_USES
    with pytest.raises(ConfigError, match=pattern):
        apply_infer_overrides(BASE, {"blend": "constant"}, I2, spell=_cli_name)


# ------------------------------------------------------------------------------------------- found bugs
@pytest.mark.parametrize("value", ["²", "9" * 5000, "١٢", "96,²"], ids=["superscript", "5000-digits",
                                                                        "arabic-indic", "96-superscript"])
def test_odd_digit_strings_are_config_errors(value):
    # str.isdigit() is true for '²' (int() refuses it) and int() refuses over 4300 digits: ConfigErrors, no crash;
    # long values are cut in the message so that it stays one readable line
    shown = re.escape(repr(value)) if len(repr(value)) <= 60 else re.escape(repr(value)[:57]) + r"\.\.\."
    with pytest.raises(ConfigError, match=r"^roi_size: got " + shown + ROI_ALLOWED) as info:
        parse_roi_size(value)
    assert len(str(info.value)) < 200
    with pytest.raises(ConfigError, match=r"^--roi-size: got " + shown + ROI_ALLOWED):
        apply_infer_overrides(BASE, {"roi_size": value}, V3, spell=_cli_name)


@pytest.mark.parametrize("value", [10**400, -(10**400)], ids=["10**400", "-10**400"])
def test_huge_int_overlap_is_a_config_error(value):
    with pytest.raises(ConfigError, match=r"^overlap: got -?10+\.\.\. \(int\); allowed .*0 <= overlap < 1$"):
        apply_infer_overrides(BASE, {"overlap": value}, V3)


# ------------------------------------------------------------------------------------------- end to end


def _refused(args: list[str]) -> str:
    """Run ``medseg ARGS``; it must exit 2 with one non-empty output line and no traceback. Returns that line."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def _names_number(line: str, number: str) -> bool:
    """``number`` stands alone in ``line`` (so the 2 of 'images2d' does not count as the value 2)."""
    return re.search(rf"(?<![\w.]){re.escape(number)}(\.0)?(?![\w.])", line) is not None


def test_cli_overlap_2_on_image_model_is_one_line_exit_2(ckpt2d, tmp_path):
    ckpt, images = ckpt2d
    line = _refused(["predict", str(ckpt), str(images), "-o", str(tmp_path / "out"), "--device", "cpu",
                     "--overlap", "2"])
    assert re.match(r"^error: --overlap: got 2(\.0)?" + NOT_FOR_IMAGES + CLI_USES, line), line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cli_overlap_2_on_image_model_names_the_value(ckpt2d, tmp_path):
    ckpt, images = ckpt2d
    line = _refused(["predict", str(ckpt), str(images), "-o", str(tmp_path / "out"), "--device", "cpu",
                     "--overlap", "2"])
    assert _names_number(line, "2"), line


def test_cli_sliding_window_option_on_image_model_names_images2d(ckpt2d, tmp_path):
    ckpt, images = ckpt2d
    line = _refused(["predict", str(ckpt), str(images), "-o", str(tmp_path / "out"), "--device", "cpu",
                     "--overlap", "0.5"])
    assert line == ("error: --overlap: got 0.5; does not apply to this images2d model (it runs once over the resized "
                    "image, no sliding window); settings it uses: --largest-component, --threshold, --tta")


def test_cli_roi_size_0_exits_2(ckpt2d, tmp_path):
    ckpt, images = ckpt2d
    line = _refused(["predict", str(ckpt), str(images), "-o", str(tmp_path / "out"), "--device", "cpu",
                     "--roi-size", "0"])
    # an images2d model takes no window size, whatever its value
    assert re.match(r"^error: --roi-size: got '0'" + NOT_FOR_IMAGES + CLI_USES, line), line


def test_cli_roi_size_4097_exits_2(ckpt3d, tmp_path):
    ckpt, volumes = ckpt3d
    line = _refused(["predict", str(ckpt), str(volumes), "-o", str(tmp_path / "out"), "--device", "cpu",
                     "--roi-size", "16,16,4097"])
    assert re.match(r"^error: --roi-size: got '16,16,4097'" + ROI_ALLOWED, line), line


def test_cli_tta_predicts(ckpt2d, tmp_path):
    ckpt, images = ckpt2d
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(ckpt), str(images), "-o", str(out), "--device", "cpu", "--tta"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("6 files written to "), result.output
    written = sorted(p.name for p in out.glob("*.png"))
    assert written == sorted(p.name for p in images.iterdir())
    for name in written:
        mask = np.asarray(Image.open(out / name))
        assert mask.shape == (32, 32) and set(np.unique(mask).tolist()) <= {0, 255}


def test_python_api_misspelled_setting(ckpt2d):
    ckpt, _ = ckpt2d
    with pytest.raises(ConfigError, match=r"^overlapp: got 0\.5" + UNKNOWN):
        Predictor.from_checkpoint(ckpt, device="cpu", overlapp=0.5)
    with pytest.raises(ConfigError, match=r"^overlapp: got None" + UNKNOWN):
        Predictor.from_checkpoint(ckpt, device="cpu", overlapp=None)


def test_python_api_image_model_settings(ckpt2d):
    ckpt, _ = ckpt2d
    stored = Predictor.from_checkpoint(ckpt, device="cpu").infer
    predictor = Predictor.from_checkpoint(ckpt, device="cpu", tta=True, largest_component=True, overlap=None)
    assert predictor.infer.model_dump() == {**stored.model_dump(), "tta": True, "largest_component": True}
    with pytest.raises(ConfigError, match=r"^sw_batch_size: got 2" + NOT_FOR_IMAGES + USES):
        Predictor.from_checkpoint(ckpt, device="cpu", sw_batch_size=2)


def test_cli_roi_size_count_on_volume_model(ckpt3d, tmp_path):
    ckpt, volumes = ckpt3d
    line = _refused(["predict", str(ckpt), str(volumes), "-o", str(tmp_path / "out"), "--device", "cpu",
                     "--roi-size", "32,32"])
    assert line == "error: --roi-size: got 2 sizes [32, 32]; a volumes3d model needs 1 or 3"


def test_cli_overlap_2_on_volume_model_names_the_value(ckpt3d, tmp_path):
    ckpt, volumes = ckpt3d
    line = _refused(["predict", str(ckpt), str(volumes), "-o", str(tmp_path / "out"), "--device", "cpu",
                     "--overlap", "2"])
    assert re.match(r"^error: --overlap: got 2(\.0)?; .*\(allowed: a number with 0 <= overlap < 1\)$", line), line
    assert _names_number(line, "2"), line


def test_python_api_roi_size_on_volume_model(ckpt3d):
    ckpt, _ = ckpt3d
    assert Predictor.from_checkpoint(ckpt, device="cpu", roi_size="32").infer.roi_size == (32,)
    assert Predictor.from_checkpoint(ckpt, device="cpu", roi_size="16,16,24").infer.roi_size == (16, 16, 24)
    assert Predictor.from_checkpoint(ckpt, device="cpu", tta=np.bool_(True)).infer.tta is True
    with pytest.raises(ConfigError, match=r"^roi_size: got 2 sizes \[32, 32\]; a volumes3d model needs 1 or 3$"):
        Predictor.from_checkpoint(ckpt, device="cpu", roi_size=[32, 32])
