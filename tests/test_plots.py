import numpy as np
import pandas as pd

from kitscascade import plots


def test_overlay_slices_go_through_the_tumor_else_the_kidney():
    ref = np.zeros((20, 8, 8), np.uint8)
    ref[2:15, 2:6, 2:6] = 1
    ref[10:13, 3:5, 3:5] = 2
    assert all(10 <= z <= 12 for z in plots.overlay_slices(ref))
    ref[ref == 2] = 1
    assert all(2 <= z <= 14 for z in plots.overlay_slices(ref))
    assert plots.overlay_slices(np.zeros((9, 4, 4), np.uint8)) == [4]


def test_figures_are_written(tmp_path):
    per_case = pd.DataFrame({"case_id": ["a", "b"], "kidney_dice": [0.9, 0.95], "tumor_dice": [np.nan, 0.7]})
    plots.plot_dice_distribution(per_case, tmp_path / "dice.png")
    curve = pd.DataFrame({"iteration": range(1, 31), "loss": np.linspace(2, 0.1, 30)})
    plots.plot_training_curve(curve, "stage 1, fold 0", tmp_path / "curve.png")
    ref = np.zeros((6, 16, 16), np.uint8)
    ref[2:4, 4:10, 4:10] = 1
    ref[3, 5:7, 5:7] = 2
    plots.plot_case_overlay(np.zeros(ref.shape, np.float32), ref, ref, (3.0, 1.0, 1.0), "case", tmp_path / "o.png")
    for name in ["dice.png", "curve.png", "o.png"]:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
