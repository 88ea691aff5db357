"""Tests for kitscascade.phantoms: determinism, the KiTS19 layout on disk, phantom content."""

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from kitscascade.io import kits19_affine, read_case_folder
from kitscascade.phantoms import PIXEL_JITTER, SLICE_FACTORS, make_phantom, write_phantom_dataset

SMALL_SHAPE = (24, 48, 48)  # same field of view as the default grid, few voxels
SMALL_SPACING = (10.0, 8.0, 8.0)


@pytest.fixture(scope="module")
def phantoms():
    """Default-grid phantoms: seeds 0-2 with two kidneys, seed 3 with one."""
    n_kidneys = {0: 2, 1: 2, 2: 2, 3: 1}
    return {seed: (make_phantom(seed, n_kidneys=n), n) for seed, n in n_kidneys.items()}


def test_same_seed_same_phantom_other_seed_different():
    image_a, label_a = make_phantom(7, SMALL_SHAPE, SMALL_SPACING)
    image_b, label_b = make_phantom(7, SMALL_SHAPE, SMALL_SPACING)
    image_c, label_c = make_phantom(8, SMALL_SHAPE, SMALL_SPACING)
    assert np.array_equal(image_a, image_b) and np.array_equal(label_a, label_b)
    assert not np.array_equal(image_a, image_c)
    assert not np.array_equal(label_a, label_c)


def test_same_seed_same_anatomy_on_another_grid():
    """Sizes are in mm: a coarser grid samples the same kidneys and tumors."""
    _, fine = make_phantom(5)
    _, coarse = make_phantom(5, (48, 96, 96), (16 / 3, 4.0, 4.0))
    for value in (1, 2):
        fine_ml = (fine == value).sum() * 36 / 1000
        coarse_ml = (coarse == value).sum() * 16 / 3 * 16 / 1000
        assert coarse_ml == pytest.approx(fine_ml, rel=0.1)


@pytest.mark.parametrize(
    "kwargs", [{"shape": (64, 128)}, {"spacing": (4.0, 0.0, 3.0)}, {"n_kidneys": 3}]
)
def test_make_phantom_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        make_phantom(0, **kwargs)


def test_dtypes_shapes_and_label_values(phantoms):
    for (image, label), _ in phantoms.values():
        assert image.dtype == np.float32 and label.dtype == np.uint8
        assert image.shape == label.shape == (64, 128, 128)
        assert set(np.unique(label).tolist()) == {0, 1, 2}
        assert image.min() >= -1024 and image.max() <= 3071
        assert (image < -900).mean() > 0.2  # air around the body
        assert (image > 300).any()  # bone and the contrast-filled aorta


def test_one_component_per_kidney(phantoms):
    for (_, label), n_kidneys in phantoms.values():
        assert ndimage.label(label > 0)[1] == n_kidneys
        kidney_ml = (label > 0).sum() * 36 / 1000 / n_kidneys
        assert 80 < kidney_ml < 300  # an ~11 x 6 x 4 cm kidney (plus tumor) is ~140 ml


def test_tumor_darker_than_kidney(phantoms):
    for (image, label), _ in phantoms.values():
        assert image[label == 2].mean() < image[label == 1].mean() - 30


def test_tumors_are_partly_exophytic(phantoms):
    """A tumor inside the kidney would be surrounded by kidney; these touch background a lot."""
    for (_, label), _ in phantoms.values():
        tumor = label == 2
        shell = ndimage.binary_dilation(tumor) & ~tumor
        assert (label[shell] == 0).mean() > 0.3
        assert tumor.sum() > 150  # at least a 14 mm radius: hundreds of voxels at 4 x 3 x 3 mm


def test_kidney_not_separable_by_intensity(phantoms):
    """The HU window holding the central 80 % of kidney voxels holds about as many others
    (spleen, pancreas, vessels, liver): thresholding alone cannot segment the kidney."""
    for (image, label), _ in phantoms.values():
        kidney = image[label == 1]
        lo, hi = np.percentile(kidney, [10, 90])
        others = ((image >= lo) & (image <= hi) & (label == 0)).sum()
        assert others > 0.5 * kidney.size


def test_write_phantom_dataset_layout(tmp_path):
    ids = ["case_00000", "case_00001", "case_00002"]
    write_phantom_dataset(tmp_path, ids, SMALL_SHAPE, SMALL_SPACING, seed=3, unlabeled={"case_00002"})
    assert sorted(p.name for p in tmp_path.iterdir()) == [*ids, "kits.json"]
    records = json.loads((tmp_path / "kits.json").read_text())
    assert [r["case_id"] for r in records] == ids
    spacings = []
    for record in records:
        case_id, spacing = record["case_id"], tuple(record["voxel_spacing"])
        spacings.append(spacing)
        assert spacing[0] / SMALL_SPACING[0] in SLICE_FACTORS
        assert spacing[1] == spacing[2] and abs(spacing[1] / SMALL_SPACING[1] - 1) <= PIXEL_JITTER
        labeled = case_id != "case_00002"
        expected = ["imaging.nii.gz", "segmentation.nii.gz"] if labeled else ["imaging.nii.gz"]
        assert sorted(p.name for p in (tmp_path / case_id).iterdir()) == expected
        for name in expected:
            img = nib.load(tmp_path / case_id / name)
            assert img.shape == SMALL_SHAPE
            assert img.get_data_dtype() == (np.float32 if name == "imaging.nii.gz" else np.uint8)
            np.testing.assert_allclose(img.affine, kits19_affine(spacing), atol=1e-5)
            np.testing.assert_allclose(img.header.get_zooms(), spacing, atol=1e-5)
        case = read_case_folder(tmp_path, case_id)
        assert case.labeled == labeled
        assert case.spacing == pytest.approx(spacing, abs=1e-5)
    assert len(set(spacings)) == 3  # spacing varies per case


def test_cases_depend_on_seed_and_case_number_only(tmp_path):
    write_phantom_dataset(tmp_path / "all", ["case_00000", "case_00001"], SMALL_SHAPE, SMALL_SPACING, seed=3)
    write_phantom_dataset(tmp_path / "one", ["case_00001"], SMALL_SHAPE, SMALL_SPACING, seed=3)
    write_phantom_dataset(tmp_path / "other", ["case_00001"], SMALL_SHAPE, SMALL_SPACING, seed=4)
    a, b, c = (read_case_folder(tmp_path / d, "case_00001") for d in ("all", "one", "other"))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    np.testing.assert_array_equal(a.affine, b.affine)
    assert not np.array_equal(a.image, c.image)


def test_single_kidney_fraction_is_honoured(tmp_path):
    ids = [f"case_{i:05d}" for i in range(3)]
    write_phantom_dataset(tmp_path, ids, SMALL_SHAPE, SMALL_SPACING, seed=0, single_kidney_fraction=1.0)
    for case_id in ids:
        assert ndimage.label(read_case_folder(tmp_path, case_id).label > 0)[1] == 1


@pytest.mark.parametrize(
    "kwargs",
    [{"case_ids": ["case_1"]}, {"unlabeled": {"case_00009"}}, {"single_kidney_fraction": 1.5}],
)
def test_write_phantom_dataset_rejects_bad_arguments(tmp_path, kwargs):
    args = {"case_ids": ["case_00000"], "shape": SMALL_SHAPE, "spacing": SMALL_SPACING, "seed": 0} | kwargs
    with pytest.raises(ValueError):
        write_phantom_dataset(tmp_path, **args)
    assert not (tmp_path / "kits.json").exists()
