"""Training to the drop: minutes, so marked slow (run with `python3 -m pytest -m slow`)."""

import pytest

from abrupt.config import apply_overrides, preset
from abrupt.train import train


@pytest.mark.slow
def test_small_preset_shows_plateau_and_drop(tmp_path):
    cfg = apply_overrides(preset("small"), ["train.stop_after_drop=500"])
    summary = train(cfg, tmp_path / "run", progress=False)
    assert summary["plateau_loss_mask"] == pytest.approx(0.111, rel=0.1)  # copying: E[X^2] for rank 1
    assert summary["drop_step"] is not None
    assert summary["dropped"]  # final L_mask at least 10x below the plateau
