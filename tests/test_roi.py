import numpy as np

import pytest

from kitscascade.roi import bbox_slices, component_bboxes, crop_roi, expand_bbox, grow_to_prediction, paste_roi, reaches_inner_face


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


def test_an_roi_grows_only_on_the_faces_its_prediction_touches():
    box, shape, spacing = [[2, 12], [10, 30], [0, 20]], (20, 40, 40), (3.0, 1.0, 0.8)
    label = np.zeros((10, 20, 20), np.uint8)
    assert grow_to_prediction(box, label, (6.0, 2.0, 5.0), spacing, shape) == box  # nothing predicted
    label[4:6, 5:15, 5:15] = 1
    assert grow_to_prediction(box, label, (6.0, 2.0, 5.0), spacing, shape) == box  # inside: no face touched
    label[9, 8, 8] = 2  # the last slice: z grows at its end by ceil(6 / 3) = 2 slices
    label[5, 0, 8] = 1  # the first row: y grows at its start by 2 rows
    label[5, 8, 0] = 1  # the first column, at the scan's border: x cannot grow there
    label[5, 8, 19] = 1  # the last column: x grows by ceil(5 / 0.8) = 7
    assert grow_to_prediction(box, label, (6.0, 2.0, 5.0), spacing, shape) == [[2, 14], [8, 30], [0, 27]]
    near = [[17, 19], [36, 39], [30, 40]]
    full = np.ones((2, 3, 10), np.uint8)
    assert grow_to_prediction(near, full, (6.0, 2.0, 5.0), spacing, shape) == [[15, 20], [34, 40], [23, 40]]
    assert grow_to_prediction([[0, 20], [0, 40], [0, 40]], np.ones(shape, np.uint8), (1, 1, 1), (1, 1, 1),
                              shape) == [[0, 20], [0, 40], [0, 40]]  # the whole scan: nowhere to grow
    with pytest.raises(ValueError, match="not the box's"):
        grow_to_prediction(box, full, (6.0, 2.0, 5.0), spacing, shape)


def test_an_roi_reaches_an_inner_face_only_where_it_could_grow():
    box, shape = [[0, 10], [10, 30], [0, 20]], (20, 40, 40)
    label = np.zeros((10, 20, 20), np.uint8)
    label[4:6, 5:15, 5:15] = 1
    assert not reaches_inner_face(box, label, shape)
    label[0, 8, 8] = label[5, 8, 0] = 1  # the first slice and column: the scan's border
    assert not reaches_inner_face(box, label, shape)
    assert grow_to_prediction(box, label, (9, 9, 9), (1, 1, 1), shape) == box
    label[5, 19, 8] = 1  # the last row, inside the scan
    assert reaches_inner_face(box, label, shape)
    assert grow_to_prediction(box, label, (9, 9, 9), (1, 1, 1), shape) == [[0, 10], [10, 39], [0, 20]]
