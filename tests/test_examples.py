"""Every script in examples/ runs and prints what it promises.

The scripts run in this process (``runpy``, as ``__main__``, with their own ``sys.argv``), which saves each one
the seconds a fresh interpreter spends importing torch and MONAI; they use nothing a separate process would
change.
"""

from __future__ import annotations

import runpy
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
def test_example_runs(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(EXAMPLES / name), str(tmp_path / "out")])
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")  # an exception fails the test, with its traceback
    stdout = capsys.readouterr().out
    for text in EXPECTED[name]:
        assert text in stdout, stdout
