import numpy as np

from kitscascade.roi import bbox_slices, component_bboxes, crop_roi, expand_bbox, paste_roi


def two_kidneys():
    mask = np.zeros((20, 40, 40), bool)
    mask[5:15, 10:20, 4:12] = True  # 800 voxels
    mask[6:12, 12:22, 26:34] = True  # 480 voxels
    mask[0, 0, 0] = True  # a speck
    return mask


def test_component_bboxes_largest_first():
    boxes = component_bboxes(two_kidneys(), 2)
    assert boxes == [[[5, 15], [10, 20], [4, 12]], [[6, 12], [12, 22], [26, 34]]]
    assert component_bboxes(np.zeros((3, 3, 3), bool)) == []


def test_expand_bbox_margin_in_mm_and_clipping():
    box = expand_bbox([[5, 15], [10, 20], [4, 12]], margin_mm=(6.0, 2.0, 5.0), spacing=(3.0, 1.0, 0.8), shape=(20, 40, 40))
    assert box == [[3, 17], [8, 22], [0, 19]]  # ceil(5/0.8) = 7 voxels, clipped at 0
    grown = expand_bbox([[5, 6], [10, 12], [4, 5]], (0, 0, 0), (1, 1, 1), (20, 40, 40), min_size=(8, 16, 16))
    assert [hi - lo for lo, hi in grown] == [8, 16, 16]
    edge = expand_bbox([[18, 20], [0, 2], [0, 1]], (0, 0, 0), (1, 1, 1), (20, 40, 40), min_size=(8, 4, 64))
    assert edge == [[12, 20], [0, 4], [0, 40]]  # shifted inside, capped at the scan size


def test_crop_paste_roundtrip_is_exact():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 3, size=(20, 40, 40)).astype(np.uint8)
    box = [[3, 17], [8, 22], [1, 19]]
    crop = crop_roi(label, box)
    out = np.zeros_like(label)
    paste_roi(out, crop, box)
    np.testing.assert_array_equal(out[bbox_slices(box)], label[bbox_slices(box)])
    outside = np.ones(label.shape, bool)
    outside[bbox_slices(box)] = False
    assert not out[outside].any()


def test_crop_multichannel_and_overlapping_paste():
    arr = np.arange(2 * 4 * 5 * 6).reshape(2, 4, 5, 6)
    assert crop_roi(arr, [[1, 3], [0, 2], [2, 6]]).shape == (2, 2, 2, 4)
    out = np.zeros((4, 5, 6), np.uint8)
    paste_roi(out, np.full((2, 2, 2), 2, np.uint8), [[0, 2], [0, 2], [0, 2]])
    paste_roi(out, np.zeros((2, 2, 2), np.uint8), [[1, 3], [1, 3], [1, 3]])  # background never erases
    assert out[1, 1, 1] == 2
