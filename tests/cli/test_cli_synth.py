"""`medseg synth` writes datasets in the layouts the shipped configs expect."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medseg.cli.main import app
from medseg.config import load_config
from medseg.data.pairing import find_pairs_from_config

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_synth_polyp_pairs_with_kvasir_config(tmp_path):
    out = tmp_path / "kvasir-seg"
    result = runner.invoke(app, ["synth", "polyp", "-o", str(out), "--n", "3"])
    assert result.exit_code == 0, result.output
    cfg = load_config(REPO / "configs" / "kvasir.yaml", [f"data.root={out}"])
    pairs = find_pairs_from_config(cfg.data)
    assert [p.case_id for p in pairs] == ["case_000", "case_001", "case_002"]
    assert set(np.unique(np.asarray(Image.open(pairs[0].mask)))) == {0, 255}


def test_synth_spine_layout(tmp_path):
    out = tmp_path / "spine"
    result = runner.invoke(app, ["synth", "spine", "-o", str(out), "--n", "2"])
    assert result.exit_code == 0, result.output
    labels = sorted((out / "labelsTr").glob("*.nii.gz"))
    assert len(labels) == 2 and len(list((out / "imagesTr").glob("*.nii.gz"))) == 2
    assert set(np.unique(np.asarray(nib.load(labels[0]).dataobj))) == {0, 26, 27, 28, 29, 30}


def test_synth_unknown_kind_exit_2(tmp_path):
    result = runner.invoke(app, ["synth", "bones", "-o", str(tmp_path / "x")])
    assert result.exit_code == 2 and "unknown 'bones'; choose from polyp, spine" in result.output


@pytest.mark.parametrize(("args", "message"), [(["--n", "-5"], "n: got -5; allowed a number of cases >= 1"),
                                               (["--n", "0"], "n: got 0; allowed a number of cases >= 1"),
                                               (["--seed", "-1"], "seed: got -1; allowed an integer >= 0")])
def test_synth_bad_counts_are_one_line_exit_2(tmp_path, args, message):
    result = runner.invoke(app, ["synth", "polyp", "-o", str(tmp_path / "x"), *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x").exists()
