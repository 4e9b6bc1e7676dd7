"""`evaluate` options: --labels with a value or name given twice, --tolerance out of 0..127 (one line, exit 2)."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from medseg.cli.main import app
from medseg.errors import ConfigError
from medseg.evaluation.evaluate import evaluate, label_map_from_options


@pytest.mark.parametrize(("text", "message"), [
    ("0=background,255=polyp,255=lesion", "--labels: gray value 255 is given twice ('polyp' and 'lesion'); each value "
                                          "names one class"),
    ("0=background,1=bone,2=bone", "--labels: class name 'bone' is given twice; each class needs its own name"),
    ("0,0", "--labels: gray value 0 is given twice ('class_0' and 'class_0'); each value names one class"),
])
def test_duplicate_labels_refused(text, message):
    with pytest.raises(ConfigError) as err:
        label_map_from_options(None, text)
    assert str(err.value) == message


def test_distinct_labels_map_in_order():
    labels = label_map_from_options(None, "0=background,255=polyp,128=stalk")
    assert labels.names == ["background", "polyp", "stalk"] and labels.output_values == [0, 255, 128]


@pytest.mark.parametrize("tolerance", [-5, 128, True, 2.5])
def test_tolerance_out_of_range_refused(tmp_path, tolerance):
    with pytest.raises(ConfigError, match=r"--tolerance: got .*; allowed an integer 0\.\.127 \(gray levels\)"):
        evaluate(tmp_path, tmp_path, tolerance=tolerance)


def test_tolerance_numpy_integer_accepted(tmp_path):
    with pytest.raises(Exception) as err:  # gets past the tolerance check to the (empty) folders
        evaluate(tmp_path, tmp_path, tolerance=np.int64(10))
    assert "--tolerance" not in str(err.value)


def test_cli_duplicate_label_value_is_one_line_exit_2(tmp_path):
    result = CliRunner().invoke(app, ["evaluate", "--pred", str(tmp_path), "--truth", str(tmp_path), "--labels",
                                      "0=bg,255=polyp,255=lesion"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == ["error: --labels: gray value 255 is given twice ('polyp' and 'lesion'); "
                                          "each value names one class"]
