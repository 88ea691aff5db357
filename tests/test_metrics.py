"""Unit tests for kitscascade.metrics: exact expectations on small hand-made arrays."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import cdist

from kitscascade.metrics import (
    dice,
    evaluate_labels,
    hausdorff95,
    summarize,
    surface_dice,
    surface_distances,
    volume_ml,
)


def _mask(shape, *boxes):
    mask = np.zeros(shape, dtype=bool)
    for box in boxes:
        mask[box] = True
    return mask


def _plates(offset_slices, shape=(8, 4, 4)):
    """Two one-voxel-thick full plates, at slice 1 and at slice 1 + offset_slices."""
    return _mask(shape, np.s_[1]), _mask(shape, np.s_[1 + offset_slices])


# A 4x4x4 cube and the same cube shifted by one column. Each has 56 surface
# voxels: 36 lie on the other's surface (0), 16 on the face the other lacks
# (one column away), and 4 in the middle of the face inside the other (one
# slice or row away from the other's surface).
CUBE = _mask((6, 6, 7), np.s_[1:5, 1:5, 1:5])
CUBE_SHIFTED = _mask((6, 6, 7), np.s_[1:5, 1:5, 2:6])
CUBE_SPACING = (1.0, 1.0, 1.5)


# ---------------------------------------------------------------- dice


def test_dice_identical_disjoint_and_partial():
    a = _mask((1, 1, 8), np.s_[0, 0, 0:6])
    b = _mask((1, 1, 8), np.s_[0, 0, 2:8])
    assert dice(a, a) == 1.0
    assert dice(a, ~a) == 0.0
    assert dice(a, b) == pytest.approx(2 * 4 / (6 + 6))


def test_dice_empty_cases():
    empty = np.zeros((2, 2, 2), dtype=bool)
    full = np.ones((2, 2, 2), dtype=bool)
    assert math.isnan(dice(empty, empty))
    assert dice(empty, full) == 0.0
    assert dice(full, empty) == 0.0


def test_dice_rejects_shape_mismatch():
    with pytest.raises(ValueError, match=r"\(2, 2, 2\).*\(2, 2, 3\)"):
        dice(np.zeros((2, 2, 2), bool), np.zeros((2, 2, 3), bool))


# ---------------------------------------------------------------- surface distances / HD95


def test_identical_masks_have_zero_distances():
    d_pred, d_ref = surface_distances(CUBE, CUBE, (2.0, 1.0, 1.0))
    assert d_pred.shape == d_ref.shape == (56,)
    assert not d_pred.any() and not d_ref.any()
    assert hausdorff95(CUBE, CUBE, (2.0, 1.0, 1.0)) == 0.0


@pytest.mark.parametrize(
    ("offset", "expected_mm"),
    [((2, 0, 0), 6.0), ((0, 0, 2), 2.0), ((0, 2, 0), 2.0), ((2, 2, 0), math.sqrt(40.0))],
)
def test_single_voxels_with_anisotropic_spacing(offset, expected_mm):
    pred = _mask((5, 5, 5), (0, 0, 0))
    ref = _mask((5, 5, 5), offset)
    d_pred, d_ref = surface_distances(pred, ref, (3.0, 1.0, 1.0))
    assert d_pred.tolist() == [pytest.approx(expected_mm)]
    assert d_ref.tolist() == [pytest.approx(expected_mm)]
    assert hausdorff95(pred, ref, (3.0, 1.0, 1.0)) == pytest.approx(expected_mm)


def test_parallel_plates():
    pred, ref = _plates(3)
    d_pred, d_ref = surface_distances(pred, ref, (2.0, 0.5, 0.5))
    np.testing.assert_allclose(d_pred, np.full(16, 6.0))
    np.testing.assert_allclose(d_ref, np.full(16, 6.0))
    assert hausdorff95(pred, ref, (2.0, 0.5, 0.5)) == pytest.approx(6.0)


def test_shifted_cube_distances_and_hd95():
    d_pred, d_ref = surface_distances(CUBE, CUBE_SHIFTED, CUBE_SPACING)
    expected = [0.0] * 36 + [1.0] * 4 + [1.5] * 16
    np.testing.assert_allclose(np.sort(d_pred), expected)
    np.testing.assert_allclose(np.sort(d_ref), expected)
    # The 95th percentile of 56 sorted values sits between ranks 52 and 53: both 1.5.
    assert hausdorff95(CUBE, CUBE_SHIFTED, CUBE_SPACING) == pytest.approx(1.5)


def test_hd95_is_max_of_directed_percentiles():
    # pred is a sub-block of ref: pred -> ref is all 0, ref -> pred is not.
    ref = _mask((3, 3, 12), np.s_[1, 1, 0:12])
    pred = _mask((3, 3, 12), np.s_[1, 1, 0:2])
    d_pred, d_ref = surface_distances(pred, ref, (1.0, 1.0, 1.0))
    assert d_pred.tolist() == [0.0, 0.0]
    np.testing.assert_allclose(np.sort(d_ref), [0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    assert hausdorff95(pred, ref, (1.0, 1.0, 1.0)) == pytest.approx(np.percentile(d_ref, 95))
    assert hausdorff95(pred, ref, (1.0, 1.0, 1.0)) == pytest.approx(9.45)


def test_surface_distances_match_brute_force():
    rng = np.random.default_rng(0)
    spacing = (2.5, 0.8, 0.8)
    # Dense masks, padded by one background voxel on some sides only, so that
    # face and full connectivity give different surfaces and the masks touch
    # the array border on other sides.
    pred = np.pad(rng.random((7, 9, 10)) < 0.8, ((1, 0), (0, 1), (1, 1)))
    ref = np.pad(rng.random((7, 9, 10)) < 0.8, ((0, 1), (1, 0), (1, 1)))
    ref = np.roll(ref, 2, axis=2)

    def surface_points(mask):
        padded = np.pad(mask, 1)
        interior = np.ones_like(mask)
        for axis in range(3):
            for step in (-1, 1):
                interior &= np.roll(padded, step, axis)[1:-1, 1:-1, 1:-1]
        return np.argwhere(mask & ~interior) * np.asarray(spacing)

    pairwise = cdist(surface_points(pred), surface_points(ref))
    d_pred, d_ref = surface_distances(pred, ref, spacing)
    np.testing.assert_allclose(d_pred, pairwise.min(axis=1))
    np.testing.assert_allclose(d_ref, pairwise.min(axis=0))


def test_empty_masks_give_nan_hd95():
    empty = np.zeros((4, 4, 4), dtype=bool)
    blob = _mask((4, 4, 4), np.s_[1:3, 1:3, 1:3])
    assert math.isnan(hausdorff95(empty, empty, (1.0, 1.0, 1.0)))
    assert math.isnan(hausdorff95(empty, blob, (1.0, 1.0, 1.0)))
    assert math.isnan(hausdorff95(blob, empty, (1.0, 1.0, 1.0)))
    d_pred, d_ref = surface_distances(empty, blob, (1.0, 1.0, 1.0))
    assert d_pred.size == 0
    assert d_ref.tolist() == [math.inf] * 8


# ---------------------------------------------------------------- surface Dice


def test_surface_dice_identical_and_within_tolerance():
    assert surface_dice(CUBE, CUBE, CUBE_SPACING, 0.0) == 1.0
    assert surface_dice(CUBE, CUBE_SHIFTED, CUBE_SPACING, 1.5) == 1.0


def test_surface_dice_partial_on_shifted_cube():
    # 36 + 36 of 112 surface voxels at 0 mm, 4 + 4 more at 1 mm, the rest at 1.5 mm.
    assert surface_dice(CUBE, CUBE_SHIFTED, CUBE_SPACING, 0.5) == pytest.approx(72 / 112)
    assert surface_dice(CUBE, CUBE_SHIFTED, CUBE_SPACING, 1.0) == pytest.approx(80 / 112)


def test_surface_dice_plates_beyond_tolerance():
    pred, ref = _plates(3)
    assert surface_dice(pred, ref, (1.0, 1.0, 1.0), 2.0) == 0.0


def test_surface_dice_anisotropic_slice_shift():
    pred, ref = _plates(1)
    assert surface_dice(pred, ref, (3.0, 1.0, 1.0), 3.0) == 1.0
    assert surface_dice(pred, ref, (3.0, 1.0, 1.0), 2.9) == 0.0


def test_surface_dice_empty_cases_and_bad_tolerance():
    empty = np.zeros((4, 4, 4), dtype=bool)
    assert math.isnan(surface_dice(empty, empty, (1.0, 1.0, 1.0), 2.0))
    assert surface_dice(empty, CUBE[:4, :4, :4], (1.0, 1.0, 1.0), 2.0) == 0.0
    with pytest.raises(ValueError, match="tolerance_mm"):
        surface_dice(CUBE, CUBE, (1.0, 1.0, 1.0), -1.0)


# ---------------------------------------------------------------- volume


def test_volume_ml():
    mask = _mask((12, 12, 12), np.s_[1:11, 1:11, 1:11])
    assert volume_ml(mask, (2.0, 1.0, 0.5)) == pytest.approx(1.0)
    assert volume_ml(np.zeros((3, 3, 3), bool), (2.0, 1.0, 0.5)) == 0.0


# ---------------------------------------------------------------- evaluate_labels

SPACING = (2.0, 1.0, 1.0)


def _kidney_with_tumor():
    label = np.zeros((4, 6, 6), dtype=np.uint8)
    label[1:3, 1:5, 1:5] = 1  # 32 voxels, 0.064 ml at SPACING
    label[1:3, 2:4, 2:4] = 2  # 8 of them tumor, 0.016 ml
    return label


def test_evaluate_labels_kidney_region_merges_tumor():
    ref = _kidney_with_tumor()
    swapped = np.where(ref == 1, 2, np.where(ref == 2, 1, 0)).astype(np.uint8)
    result = evaluate_labels(swapped, ref, SPACING)
    assert result["kidney_dice"] == 1.0
    assert result["kidney_hd95_mm"] == 0.0
    assert result["kidney_surface_dice"] == 1.0
    assert result["tumor_dice"] == 0.0
    assert result["composite_dice"] == 0.5
    assert result["kidney_volume_ref_ml"] == pytest.approx(0.064)
    assert result["kidney_volume_pred_ml"] == pytest.approx(0.064)
    assert result["tumor_volume_ref_ml"] == pytest.approx(0.016)
    assert result["tumor_volume_pred_ml"] == pytest.approx(0.048)
    assert not any(result[k] for k in ("tumor_false_positive", "tumor_false_negative", "kidney_false_negative"))


def test_evaluate_labels_without_tumor_anywhere():
    ref = np.zeros((4, 6, 6), dtype=np.uint8)
    pred = ref.copy()
    ref[1, 1, 0:6] = 1
    pred[1, 1, 2:6] = 1
    result = evaluate_labels(pred, ref, SPACING)
    assert result["kidney_dice"] == pytest.approx(2 * 4 / (6 + 4))
    assert math.isnan(result["tumor_dice"])
    assert math.isnan(result["tumor_hd95_mm"])
    assert math.isnan(result["tumor_surface_dice"])
    assert result["composite_dice"] == result["kidney_dice"]
    assert result["tumor_false_positive"] is False
    assert result["tumor_false_negative"] is False


def test_evaluate_labels_false_positive_and_negative_flags():
    with_tumor = _kidney_with_tumor()
    without_tumor = np.where(with_tumor > 0, 1, 0).astype(np.uint8)

    fp = evaluate_labels(with_tumor, without_tumor, SPACING)
    assert (fp["tumor_false_positive"], fp["tumor_false_negative"]) == (True, False)
    assert fp["tumor_dice"] == 0.0 and math.isnan(fp["tumor_hd95_mm"])

    fn = evaluate_labels(without_tumor, with_tumor, SPACING)
    assert (fn["tumor_false_positive"], fn["tumor_false_negative"]) == (False, True)
    assert fn["tumor_surface_dice"] == 0.0

    missed = evaluate_labels(np.zeros_like(with_tumor), with_tumor, SPACING)
    assert missed["kidney_false_negative"] is True
    assert missed["kidney_dice"] == 0.0 and missed["composite_dice"] == 0.0
    assert fp["kidney_false_negative"] is False


def test_evaluate_labels_all_background():
    empty = np.zeros((3, 3, 3), dtype=np.uint8)
    result = evaluate_labels(empty, empty, SPACING)
    assert math.isnan(result["kidney_dice"]) and math.isnan(result["composite_dice"])
    assert result["kidney_volume_ref_ml"] == 0.0
    assert not any(result[k] for k in ("tumor_false_positive", "tumor_false_negative", "kidney_false_negative"))


def test_evaluate_labels_rejects_shape_mismatch():
    with pytest.raises(ValueError, match=r"\(4, 6, 6\).*\(4, 6, 7\)"):
        evaluate_labels(np.zeros((4, 6, 6), np.uint8), np.zeros((4, 6, 7), np.uint8), SPACING)


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (1.0, 0.0, 1.0), (1.0, -1.0, 1.0), ("a", 1.0, 1.0), (1.0, math.nan, 1.0)])
def test_evaluate_labels_rejects_bad_spacing(spacing):
    label = _kidney_with_tumor()
    with pytest.raises(ValueError, match="spacing"):
        evaluate_labels(label, label, spacing)


# ---------------------------------------------------------------- summarize


def test_summarize_is_nan_aware_and_treats_flags_as_rates():
    frame = pd.DataFrame(
        {
            "case_id": ["case_00000", "case_00001", "case_00002"],
            "kidney_dice": [1.0, math.nan, 3.0],
            "tumor_false_positive": [True, False, False],
        }
    )
    summary = summarize(frame)
    assert list(summary.columns) == ["metric", "mean", "std", "median", "min", "max", "n"]
    assert summary["metric"].tolist() == ["kidney_dice", "tumor_false_positive"]
    dice_row = summary.set_index("metric").loc["kidney_dice"]
    assert dice_row[["mean", "median", "min", "max", "n"]].tolist() == [2.0, 2.0, 1.0, 3.0, 2]
    assert dice_row["std"] == pytest.approx(math.sqrt(2.0))
    flag_row = summary.set_index("metric").loc["tumor_false_positive"]
    assert flag_row["mean"] == pytest.approx(1 / 3)
    assert flag_row["n"] == 3


def test_the_preprocessing_step_does_not_import_pandas():
    """stage1 (the 94 preprocessing jobs of the demo) uses metrics.dice only; pandas is imported where a
    table is built, so a job does not pay for it (about 0.3 s each)."""
    import subprocess
    import sys

    code = "import sys; from kitscascade import runlog, stage1; print('pandas' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
