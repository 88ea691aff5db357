"""Tests for kitscascade.phantoms: determinism, the KiTS19 layout on disk, phantom content."""

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from kitscascade.io import kits19_affine, read_case_folder
from kitscascade.phantoms import (
    FAMILIES,
    PIXEL_JITTER,
    SLICE_FACTORS,
    TUMOR_ML,
    _draw_tumor,
    make_phantom,
    write_phantom_dataset,
)

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


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_shorter_scan_of_the_same_seed_shows_the_same_labels(family):
    """Every random draw of the anatomy comes before the grid is looked at: a tumor or cyst outside a short
    scan changes nothing else. The 12 slices of the short scan are slices 22-33 of the long one (same mm);
    only the cleanup inside a shape's bounding box may flip a few voxels. (Seeds 13, 18 and 19 differed by
    hundreds of voxels when some draws came after the grid was looked at.)"""
    for seed in range(12, 20):
        _, long = make_phantom(seed, (56, 64, 64), (4.0, 4.0, 4.0), family=family)
        _, short = make_phantom(seed, (12, 64, 64), (4.0, 4.0, 4.0), family=family)
        assert (long[22:34] != short).sum() <= 0.005 * max(1, (short > 0).sum()), seed


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
        assert set(np.unique(label).tolist()) == {0, 1, 2}  # every labeled phantom has a tumor
        assert image.min() >= -1024 and image.max() <= 3071
        assert (image < -900).mean() > 0.2  # air around the body
        assert (image > 300).any()  # bone and the contrast-filled aorta


def test_kidney_volume_is_plausible(phantoms):
    for (_, label), n_kidneys in phantoms.values():
        kidney_ml = (label > 0).sum() * 36 / 1000 / n_kidneys
        assert 80 < kidney_ml < 800  # an ~11 x 6 x 4 cm kidney is ~140 ml, plus up to 1.5 l of tumor
        assert (label == 1).sum() * 36 / 1000 > 5  # a big tumor can replace most of its kidney


def test_tumor_draws_cover_the_documented_ranges():
    """Per-tumor draws: volume log-uniform over 0.5..500 ml, hypo- to hyperdense, endo- and exophytic."""
    rng = np.random.default_rng(0)
    for family in FAMILIES.values():
        draws = [_draw_tumor(rng, family) for _ in range(2000)]
        volumes = np.array([t.volume_ml for t in draws])
        assert TUMOR_ML[0] <= volumes.min() < 1 and 300 < volumes.max() <= TUMOR_ML[1]
        bins = np.histogram(np.log(volumes), bins=3, range=np.log(TUMOR_ML))[0] / len(draws)
        np.testing.assert_allclose(bins, 1 / 3, atol=0.05)  # log-uniform
        contrast = np.array([t.contrast for t in draws])
        assert (contrast < -0.5).any() and (abs(contrast) < 0.05).any() and (contrast > 0.1).any()
        depth = np.array([t.depth for t in draws])
        assert (depth < 0.7).mean() > 0.1 and (depth > 1).mean() > 0.2
        necrotic = [t.necrosis for t in draws if t.volume_ml >= 5]
        assert 0.4 < np.mean(necrotic) < 0.6 and not any(t.necrosis for t in draws if t.volume_ml < 5)
        assert 0.1 < np.mean([t.calcifications > 0 for t in draws]) < 0.2


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_tumors_of_every_size_and_density_are_rendered(family):
    """Across cases: tumors from under 10 ml to over 100 ml, darker and brighter than the kidney."""
    volumes, contrast = [], []
    for seed in range(12):
        image, label = make_phantom(seed, SMALL_SHAPE, (10.0, 6.0, 6.0), family=family)
        tumor = label == 2
        assert tumor.any() and (label == 1).any()
        volumes.append(tumor.sum() * 0.36)
        contrast.append(image[tumor].mean() - image[label == 1].mean())
    assert min(volumes) < 10 and max(volumes) > 100
    assert min(contrast) < -30 and max(contrast) > 0


def test_horseshoe_kidneys_are_one_component_and_pelvic_kidneys_lower():
    _, horseshoe = make_phantom(1, n_kidneys=2, arrangement="horseshoe")
    _, normal = make_phantom(1, n_kidneys=2, arrangement="normal")
    assert ndimage.label(normal == 1)[1] >= 2
    parts, n = ndimage.label(horseshoe == 1)
    largest = parts == np.argmax(np.bincount(parts.ravel())[1:]) + 1
    cols = np.flatnonzero(largest.any(axis=(0, 1)))
    assert cols[0] < 64 < cols[-1]  # one piece across the midline: the isthmus joins both kidneys
    _, pelvic = make_phantom(1, n_kidneys=1, arrangement="pelvic")
    _, single = make_phantom(1, n_kidneys=1, arrangement="normal")
    centre = [np.argwhere(label == 1)[:, 0].mean() for label in (pelvic, single)]
    assert centre[0] > centre[1] + 8  # at least 45 mm lower: 11 slices of 4 mm


def test_families_differ():
    a_image, a_label = make_phantom(3, SMALL_SHAPE, SMALL_SPACING, family="A")
    b_image, b_label = make_phantom(3, SMALL_SHAPE, SMALL_SPACING, family="B")
    assert not np.array_equal(a_label, b_label) and not np.allclose(a_image, b_image)
    with pytest.raises(ValueError, match="family"):
        make_phantom(3, SMALL_SHAPE, SMALL_SPACING, family="C")


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
