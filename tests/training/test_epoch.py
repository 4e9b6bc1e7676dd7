"""The training step's forward pass: batch norm's refusal of a one-value batch becomes one line."""

from __future__ import annotations

import pytest
import torch

from medseg.errors import ConfigError
from medseg.training.epoch import _forward


def test_one_value_batch_norm_is_one_line_saying_what_to_change() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=4), torch.nn.BatchNorm2d(4)).train()
    with pytest.raises(ConfigError) as err:
        _forward(model, torch.zeros(1, 3, 4, 4))  # one sample, 1x1 after the stride: one value per channel
    message = str(err.value)
    assert "\n" not in message
    assert "a batch of 1 sample(s) of size [4, 4]" in message and "data.patch_size" in message
    assert tuple(_forward(model, torch.zeros(2, 3, 4, 4)).shape) == (2, 4, 1, 1)  # two samples: fine


def test_other_value_errors_pass_through() -> None:
    def broken(x: torch.Tensor) -> torch.Tensor:
        raise ValueError("something else")

    with pytest.raises(ValueError, match="something else"):
        _forward(broken, torch.zeros(1))  # type: ignore[arg-type]


def test_plots_are_drawn_at_most_every_interval_and_always_at_the_end(monkeypatch, tmp_path) -> None:
    import time
    from types import SimpleNamespace

    import numpy as np

    from medseg.training import epoch_record

    drawn: list[str] = []
    monkeypatch.setattr(epoch_record, "plot_curves", lambda records, path: drawn.append(path.name))
    monkeypatch.setattr(epoch_record, "plot_confusion", lambda matrix, names, path, title: drawn.append(path.name))
    run = SimpleNamespace(records=[{"epoch": 1}], run_dir=tmp_path, labels=SimpleNamespace(names=["a", "b"]),
                          best_confusion=(np.eye(2), "best epoch 1"), plotted_at=time.monotonic())
    epoch_record.draw_plots(run, final=False)  # the run began just now: nothing drawn yet
    assert drawn == []
    epoch_record.draw_plots(run, final=True)
    assert drawn == ["curves.png", "confusion_best.png"] and run.best_confusion is None
    run.plotted_at -= epoch_record.PLOT_INTERVAL_S + 1  # the interval has passed: the curves again, no new best to draw
    epoch_record.draw_plots(run, final=False)
    assert drawn == ["curves.png", "confusion_best.png", "curves.png"]
