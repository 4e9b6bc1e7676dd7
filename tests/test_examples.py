"""Every script in examples/ runs and prints what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXPECTED = {
    "train_polyps.py": ["best checkpoint:", "values: [0, 255]"],
    "ct_transforms.py": ["image: (2, 48, 48, 64)", "classes: [0, 1, 2, 3, 4, 5]", "back to label values: [0, 26, 27"],
}


def test_every_example_has_expectations():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name, tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), str(tmp_path / "out")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for text in EXPECTED[name]:
        assert text in proc.stdout, proc.stdout
