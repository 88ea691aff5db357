import numpy as np
import pytest

from kitscascade.normalize import clip_and_zscore, zscore_as, zscore_within
from kitscascade.resample import grid_spacing, resample_labels, resample_volume, target_shape


def test_target_shape_and_spacing_stage1_halves_inplane():
    shape, spacing = (138, 512, 512), (3.0, 0.78, 0.78)
    new = target_shape(shape, spacing, (3.0, 1.56, 1.56))
    assert new == (138, 256, 256)
    assert grid_spacing(shape, spacing, new) == pytest.approx((3.0, 1.56, 1.56))
    assert target_shape((40, 512, 796), (3.0, 0.78, 0.78), (3.0, 1.56, 1.56)) == (40, 256, 398)


@pytest.mark.parametrize("order", [0, 1, 3])
def test_resample_roundtrip_keeps_shape_and_dtype(order):
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(5, 32, 30)).astype(np.float32)
    down = resample_volume(vol, (5, 16, 15), order)
    assert down.shape == (5, 16, 15) and down.dtype == np.float32
    up = resample_volume(down, vol.shape, order)
    assert up.shape == vol.shape and up.dtype == np.float32


def test_resample_constant_and_smooth_content():
    z, y, x = np.meshgrid(np.arange(4), np.arange(40), np.arange(40), indexing="ij")
    ramp = (y + 2 * x).astype(np.float32)
    down = resample_volume(ramp, (4, 20, 20), order=1)
    # grid_mode: output voxel j covers input voxels 2j, 2j+1 -> centre at 2j + 0.5
    yy, xx = np.meshgrid(np.arange(20), np.arange(20), indexing="ij")
    np.testing.assert_allclose(down[1, 1:-1, 1:-1], (2 * yy + 0.5 + 2 * (2 * xx + 0.5))[1:-1, 1:-1], atol=1e-4)
    np.testing.assert_allclose(resample_volume(np.full((3, 9, 9), 7.0, np.float32), (6, 5, 4), 3), 7.0, atol=1e-5)


def test_resample_3d_path_changes_slices():
    vol = np.zeros((8, 8, 8), np.float32)
    vol[2:6, 2:6, 2:6] = 1
    out = resample_volume(vol, (4, 8, 8), order=1)
    assert out.shape == (4, 8, 8) and out[1:3, 3:5, 3:5].min() > 0.4


def test_resample_labels_invents_no_label():
    label = np.zeros((4, 20, 20), np.uint8)
    label[:, 2:10, 2:10] = 1
    label[:, 10:16, 4:8] = 2
    out = resample_labels(label, (4, 10, 10), n_classes=3)
    assert set(np.unique(out)) <= {0, 1, 2} and out.dtype == np.uint8
    assert out[:, 2:4, 2:4].min() == 1 and out[:, 6:7, 2:3].max() == 2
    # boundary between 1 and 2 never turns into a value that was not there (e.g. a 1.5 -> 1 or 2)
    back = resample_labels(out, label.shape, n_classes=3)
    assert (back == label).mean() > 0.9


def test_clip_and_zscore_matches_numpy():
    rng = np.random.default_rng(3)
    img = rng.normal(40, 300, size=(4, 8, 8)).astype(np.float32)
    out = clip_and_zscore(img, -79.0, 304.0, 101.0, 76.9)
    expected = (np.clip(img.astype(np.float64), -79.0, 304.0) - 101.0) / 76.9
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert out.dtype == np.float32
    with pytest.raises(ValueError, match="std=0"):
        clip_and_zscore(img, 0, 1, 0, 0)


def test_zscore_within_roi():
    rng = np.random.default_rng(4)
    img = rng.normal(100, 20, size=(4, 8, 8)).astype(np.float32)
    out = zscore_within(img, -1000, 1000)
    assert abs(out.mean()) < 1e-5 and out.std() == pytest.approx(1.0, rel=1e-4)


def test_zscore_as_a_reference_normalises_as_the_reference():
    """A grown ROI keeps the mean and std of the box it grew from: the box's voxels come out as they did."""
    rng = np.random.default_rng(5)
    img = rng.normal(100, 200, size=(10, 16, 16)).astype(np.int16)
    box = (slice(3, 7), slice(4, 12), slice(2, 10))
    inner = zscore_within(img[box], -80, 300)
    grown = zscore_as(img, -80, 300, img[box])
    np.testing.assert_array_equal(grown[box], inner)
    assert grown.dtype == np.float32
    np.testing.assert_array_equal(zscore_as(img, -80, 300, img), zscore_within(img, -80, 300))
