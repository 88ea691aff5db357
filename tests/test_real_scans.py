"""Scans as users bring them: any orientation, KiTS21/23 labels, awkward headers, any case name.

Every input is a small synthetic NIfTI written here; each test says what it
stands for. The package reads everything in the KiTS19 orientation
(``io.CANONICAL``) and writes everything back in the scan's own.
"""

from __future__ import annotations

import gzip
import struct

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from nibabel import orientations

from kitscascade import check, io, metrics, phantoms, roi, stage1, stage2
from kitscascade.config import deep_merge, defaults
from kitscascade.fingerprint import case_geometry, collect_statistics
from kitscascade.networks import build_network

KITS23 = {"kidney": 1, "tumor": 2, "cyst": 3}
SPACING = (5.0, 2.5, 2.5)


def phantom(shape=(16, 48, 56), spacing=SPACING, seed=0):
    """A small CT phantom (float32 HU) and its labels, in the KiTS19 orientation (seed 0: kidney and tumor
    both in this field of view)."""
    return phantoms.make_phantom(seed, shape, spacing)


def write(path, data, affine, dtype=None, qform_only=False, sform_only=False, endianness="<", **header):
    """A NIfTI written as a converter would: any affine (a degenerate one as an sform only), dtype,
    byte order, sform or qform only, header fields."""
    img = nib.Nifti1Image(np.asarray(data), None, header=nib.Nifti1Header(endianness=endianness))
    if dtype is not None:
        img.set_data_dtype(dtype)
    if not sform_only:
        img.set_qform(affine, code=1)
    if not qform_only:
        img.set_sform(affine, code=1)
    for key, value in header.items():
        img.header[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return path


def reoriented(array, affine, codes):
    """The same physical image stored with axis codes ``codes`` (e.g. RAS: slice axis last)."""
    transform = orientations.ornt_transform(orientations.io_orientation(affine), orientations.axcodes2ornt(codes))
    new = np.ascontiguousarray(orientations.apply_orientation(array, transform))
    return new, affine @ orientations.inv_ornt_aff(transform, array.shape)


# --------------------------------------------------------------------------
# orientation
# --------------------------------------------------------------------------


@pytest.mark.parametrize("codes", [("R", "A", "S"), ("L", "P", "S"), ("A", "S", "R"), ("S", "L", "P")])
def test_any_orientation_reads_as_kits19(tmp_path, codes):
    image, label = phantom()
    affine = io.kits19_affine(SPACING)
    data, new_affine = reoriented(image, affine, codes)
    seg, _ = reoriented(label, affine, codes)
    case = io.read_case(write(tmp_path / "imaging.nii.gz", data, new_affine),
                        write(tmp_path / "segmentation.nii.gz", seg, new_affine), "twin")
    assert case.orientation.axis_codes == "".join(codes)
    np.testing.assert_array_equal(case.image, image)
    np.testing.assert_array_equal(case.label, label)
    assert case.spacing == pytest.approx(SPACING)
    np.testing.assert_allclose(case.affine, affine, atol=1e-5)
    geometry = case_geometry(tmp_path / "imaging.nii.gz", "twin")  # the statistics see the same grid
    assert geometry["shape"] == list(image.shape) and geometry["spacing"] == pytest.approx(SPACING)


def test_a_ras_slice_last_scan_is_read_slice_first(tmp_path):
    """What dcm2niix writes: int32 CT, slice axis last, RAS affine with positive spacings, 3 mm."""
    image, _ = phantom(shape=(12, 40, 44), spacing=(3.0, 0.9, 0.8))
    data = np.ascontiguousarray(np.round(image).transpose(2, 1, 0)[::-1, ::-1, ::-1]).astype(np.int32)
    affine = np.diag([0.8, 0.9, 3.0, 1.0])
    affine[:3, 3] = [-20.0, -30.0, 100.0]
    case = io.read_case(write(tmp_path / "imaging.nii.gz", data, affine), case_id="ras")
    assert case.orientation.axis_codes == "RAS" and case.image.shape == (12, 40, 44)
    assert case.spacing == pytest.approx((3.0, 0.9, 0.8))
    np.testing.assert_array_equal(case.image, np.round(image))


def tiny_models(tmp_path, cfg1, cfg2):
    """One untrained (seeded) checkpoint per stage, as train_model writes them."""
    paths = []
    for name, network, trained in (("s1", stage1.network_config(cfg1), None),
                                   ("s2", stage2.network_config(cfg2), stage2.regions(cfg2))):
        torch.manual_seed(0)
        paths.append(tmp_path / f"{name}.pt")
        torch.save({"model_state": build_network(**network).state_dict(), "network": network, "regions": trained},
                   paths[-1])
    return paths


def cascade(folder, imaging, segmentation, stats, models, cfg1, cfg2, labels):
    """Both stages of one case through the workflow's steps; stage 2 gets the true kidneys as ROIs."""
    stage1.preprocess(imaging, segmentation, "case", stats, cfg1, labels, folder / "s1.npz")
    stage1.predict(folder / "s1.npz", [models[0]], imaging, segmentation, "case", cfg1, labels,
                   folder / "mask.nii.gz", folder / "labels.nii.gz", folder / "mask.json", threads=1)
    kidneys = io.read_label(segmentation, "case", labels) > 0
    io.save_for_scan(kidneys.astype(np.uint8), imaging, folder / "kidneys.nii.gz")
    roi.crop_rois(imaging, segmentation, "case", folder / "kidneys.nii.gz", stats, cfg2, labels,
                  folder / "rois.npz", folder / "rois.json")
    stage2.predict(folder / "rois.npz", folder / "rois.json", [models[1]], imaging, cfg2, labels,
                   folder / "prediction.nii.gz", threads=1, stage1_mask_path=folder / "kidneys.nii.gz",
                   statistics_path=stats)
    return folder / "mask.nii.gz", folder / "prediction.nii.gz"


@pytest.mark.parametrize("growth", [0, 2])
def test_a_permuted_and_flipped_twin_gets_the_same_prediction_bit_for_bit(tmp_path, growth):
    """Stage 2's ROIs, grown or not (``roi_growth_steps``), are cut in the canonical orientation whatever
    the file's, so the twin's prediction is the KiTS-oriented one's, reoriented."""
    small = {"patch_size": [8, 16, 16], "network": {"base_features": 4, "max_features": 8},
             "training": {"device": "cpu"}, "inference": {"mirror_axes": [2]}}
    cfg1 = deep_merge(defaults()["stage1"], small)
    cfg2 = deep_merge(defaults()["stage2"], {**small, "roi_margin_mm": [5.0, 5.0, 5.0], "roi_growth_steps": growth})
    labels = defaults()["labels"]
    models = tiny_models(tmp_path, cfg1, cfg2)
    image, label = phantom(shape=(6, 48, 56))  # fewer slices than the stage-1 patch: padded
    affine = io.kits19_affine(SPACING)
    files = {}
    for name, codes in (("kits", io.CANONICAL), ("twin", ("S", "R", "A"))):
        data, new_affine = reoriented(image, affine, codes)
        seg, _ = reoriented(label, affine, codes)
        files[name] = (write(tmp_path / name / "imaging.nii.gz", data, new_affine),
                       write(tmp_path / name / "segmentation.nii.gz", seg, new_affine))
    summary, _ = collect_statistics({"case": files["kits"]}, ["case"], (0.05, 99.5), 10000, 0)
    io.save_json(summary, tmp_path / "stats.json")
    outputs = {name: cascade(tmp_path / name, *files[name], tmp_path / "stats.json", models, cfg1, cfg2, labels)
               for name in files}
    for kits_file, twin_file in zip(outputs["kits"], outputs["twin"]):
        kits, twin = nib.load(kits_file), nib.load(twin_file)
        imaging = nib.load(files["twin"][0])
        assert twin.shape == imaging.shape and np.allclose(twin.affine, imaging.affine)
        assert int(twin.header["sform_code"]) == int(imaging.header["sform_code"])
        assert int(twin.header["qform_code"]) == int(imaging.header["qform_code"])
        back = io.Orientation.of(twin.affine, twin.shape).to_canonical(np.asarray(twin.dataobj))
        np.testing.assert_array_equal(back, np.asarray(kits.dataobj))
    assert io.load_json(tmp_path / "twin" / "mask.json")["stage1_dice"] == \
        io.load_json(tmp_path / "kits" / "mask.json")["stage1_dice"]
    inside = np.zeros(image.shape, bool)
    for box in io.load_json(tmp_path / "kits" / "rois.json")["bboxes"]:
        inside[roi.bbox_slices(box)] = True
    grown = (io.read_label(outputs["kits"][1], "case", labels) > 0) & ~inside
    assert grown.any() == bool(growth)  # the untrained network's kidney reached a face and the ROI grew


def test_an_oblique_affine_takes_the_nearest_orientation(tmp_path):
    image, _ = phantom()
    angle = np.deg2rad(10)
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    affine = io.kits19_affine(SPACING)
    affine[:3, :3] = rotation @ affine[:3, :3]
    case = io.read_case(write(tmp_path / "imaging.nii.gz", image, affine), case_id="oblique")
    assert case.orientation.axis_codes == "IPL" and case.spacing == pytest.approx(SPACING)
    row = check.check_case(tmp_path / "imaging.nii.gz", None, "oblique", io.KITS19_LABELS)
    assert row["oblique"] and row["problem"] is None


# --------------------------------------------------------------------------
# headers: checked when the case is read, one line naming the case
# --------------------------------------------------------------------------


def with_pixdim(folder, slice_mm):
    """A qform-only file whose header says ``slice_mm`` for the slice spacing (nibabel itself refuses to write
    such a header, and on reading turns -5 into 5 and 0 into 1 mm), patched into the file's bytes."""
    path = write(folder / "i.nii.gz", np.zeros((4, 5, 6), np.float32), io.kits19_affine(SPACING), qform_only=True)
    raw = bytearray(gzip.decompress(path.read_bytes()))
    struct.pack_into("<f", raw, 80, slice_mm)  # pixdim[1]: the slice axis of the KiTS19 orientation
    path.write_bytes(gzip.compress(bytes(raw)))
    return path


def affine_with(**changes):
    affine = io.kits19_affine(SPACING)
    for (i, j), value in changes.get("at", {}).items():
        affine[i, j] = value
    return affine


@pytest.mark.parametrize("make, message", [
    (lambda d: write(d / "i.nii.gz", np.zeros((4, 5, 6), np.float32), affine_with(at={(2, 0): 0.0}), sform_only=True),
     "spacing [0.0, 2.5, 2.5] mm in its affine, expected 3 positive numbers"),
    (lambda d: with_pixdim(d, -5.0), "spacing (pixdim) [-5.0, 2.5, 2.5] mm"),
    (lambda d: with_pixdim(d, 0.0), "spacing (pixdim) [0.0, 2.5, 2.5] mm"),
    (lambda d: with_pixdim(d, np.nan), "non-finite affine"),
    (lambda d: write(d / "i.nii.gz", np.zeros((4, 5, 6), np.float32),
                     affine_with(at={(0, 1): 0.0, (1, 1): 0.0, (2, 1): -2.5}), sform_only=True),  # 2 parallel axes
     "singular affine"),
    (lambda d: write(d / "i.nii.gz", np.zeros((4, 5, 6), np.float32), affine_with(at={(1, 3): np.inf}),
                     sform_only=True), "non-finite affine"),
    (lambda d: write(d / "i.nii.gz", np.zeros((4, 5, 6, 2), np.float32), io.kits19_affine(SPACING)),
     "shape (4, 5, 6, 2), expected 3-D data"),
])
def test_a_bad_header_is_one_line_naming_the_case(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(io.CaseError) as error:
        io.read_case(path, case_id="case_00123")
    assert str(error.value).startswith("case_00123: imaging") and message in str(error.value)
    assert "\n" not in str(error.value)
    assert message in check.check_case(path, None, "case_00123", io.KITS19_LABELS)["problem"]


def test_a_trailing_axis_of_length_one_is_dropped(tmp_path):
    image, label = phantom()
    affine = io.kits19_affine(SPACING)
    case = io.read_case(write(tmp_path / "i.nii.gz", image[..., None], affine),
                        write(tmp_path / "s.nii.gz", label[..., None], affine), "four")
    assert case.image.shape == image.shape and case.label.shape == label.shape
    io.save_for_scan(case.label, tmp_path / "i.nii.gz", tmp_path / "p.nii.gz")
    assert nib.load(tmp_path / "p.nii.gz").shape == image.shape


def test_segmentation_values_close_to_integers_are_rounded(tmp_path):
    """scl_slope = 1.0000001: the labels read back as 1.00000012 and 2.00000024."""
    image, label = phantom()
    affine = io.kits19_affine(SPACING)
    seg = tmp_path / "s.nii.gz"
    write(seg, label, affine, dtype=np.uint8, scl_slope=1.0000001, scl_inter=0.0)
    assert np.asarray(nib.load(seg).dataobj).max() == pytest.approx(2.00000024)
    case = io.read_case(write(tmp_path / "i.nii.gz", image, affine), seg, "scaled")
    np.testing.assert_array_equal(case.label, label)
    write(seg, label + 0.4 * (label > 0), affine, dtype=np.float32)
    with pytest.raises(io.CaseError, match="scaled: segmentation has non-integer values"):
        io.read_case(tmp_path / "i.nii.gz", seg, "scaled")


# --------------------------------------------------------------------------
# label conventions
# --------------------------------------------------------------------------


def test_kits23_labels_read_as_classes_and_are_written_back(tmp_path):
    image, label = phantom()
    label[(label == 1) & (np.arange(label.shape[2]) % 7 == 0)] = 3  # cysts inside the kidney
    affine = io.kits19_affine(SPACING)
    imaging = write(tmp_path / "i.nii.gz", image, affine)
    seg = write(tmp_path / "s.nii.gz", label.astype(np.uint8), affine)
    with pytest.raises(io.CaseError, match=r"kits23: segmentation has labels \[3\] outside \{0, 1, 2\}"):
        io.read_case(imaging, seg, "kits23")
    case = io.read_case(imaging, seg, "kits23", KITS23)
    assert set(np.unique(case.label)) == {0, io.KIDNEY, io.TUMOR, io.CYST}
    # another convention: kidney 4, tumor 8, cyst 9 -> the same classes, and back
    other = {"kidney": 4, "tumor": 8, "cyst": 9}
    coded = np.choose(label.astype(np.intp), [0, 4, 8, 9]).astype(np.uint8)
    case_other = io.read_case(imaging, write(tmp_path / "o.nii.gz", coded, affine), "coded", other)
    np.testing.assert_array_equal(case_other.label, case.label)
    np.testing.assert_array_equal(io.to_values(case_other.label, other), coded)
    write(tmp_path / "bad.nii.gz", np.where(label == 3, 5, label).astype(np.uint8), affine)
    with pytest.raises(io.CaseError, match=r"bad23: segmentation has labels \[5\] outside \{0, 1, 2, 3\}"):
        io.read_case(imaging, tmp_path / "bad.nii.gz", "bad23", KITS23)


def test_stage2_learns_cysts_as_their_own_class_or_as_kidney():
    label = np.array([[[0, 1, 2, 3]]], np.uint8)
    merged = deep_merge(defaults()["stage2"], {"cyst": "kidney", "target": "classes"})
    own = deep_merge(defaults()["stage2"], {"cyst": "own_class", "target": "classes"})
    assert stage2.num_classes(merged) == 3 and stage2.network_config(merged)["num_classes"] == 3
    assert stage2.num_classes(own) == 4 and stage2.network_config(own)["num_classes"] == 4
    for cfg, regions in ((merged, 2), (own, 3)):  # kidney+tumor, tumor; with cysts also tumor+cyst
        assert stage2.network_config({**cfg, "target": "regions"})["num_classes"] == regions
    np.testing.assert_array_equal(stage2.target_classes(label, merged), [[[0, 1, 2, 1]]])
    np.testing.assert_array_equal(stage2.target_classes(label, own), label)


def test_cysts_as_a_class_need_a_cyst_label():
    from kitscascade import config, experiments

    cfg = config.validate(deep_merge(defaults(), {"stage2": {"cyst": "own_class"}}))
    with pytest.raises(config.ConfigError, match="stage2.cyst: own_class needs labels.cyst"):
        experiments.plan_workflow(cfg)


def test_kits23_regions_are_scored_beside_kits19s():
    """Reference: kidney 8 voxels, tumor 2, cyst 2; prediction misses one cyst voxel, calls one kidney voxel tumor."""
    ref = np.zeros((1, 3, 4), np.uint8)
    ref[0, 0] = [1, 1, 1, 1]
    ref[0, 1] = [1, 1, 2, 2]
    ref[0, 2] = [1, 1, 3, 3]
    pred = ref.copy()
    pred[0, 2, 3] = 0
    pred[0, 0, 0] = 2
    row = metrics.evaluate_labels(pred, ref, (1.0, 1.0, 1.0), 1.0, masses=True)
    assert row["kidney_dice"] == pytest.approx(2 * 11 / (11 + 12))
    assert row["tumor_dice"] == pytest.approx(2 * 2 / (3 + 2))
    assert row["masses_dice"] == pytest.approx(2 * 3 / (4 + 4))  # tumor + cyst
    assert "masses_dice" not in metrics.evaluate_labels(pred, ref, (1.0, 1.0, 1.0))


def test_a_kits23_case_is_evaluated_with_the_masses_region(tmp_path):
    image, label = phantom()
    label[(label == 1) & (np.arange(label.shape[2]) % 7 == 0)] = 3
    affine = io.kits19_affine(SPACING)
    imaging = write(tmp_path / "i.nii.gz", image, affine)
    seg = write(tmp_path / "s.nii.gz", label.astype(np.uint8), affine)
    io.save_json({"stage1_dice": 1.0}, tmp_path / "s1.json")
    io.save_json({"fallback_used": False}, tmp_path / "rois.json")
    row = metrics.evaluate_case(imaging, seg, "k23", seg, tmp_path / "s1.json", tmp_path / "rois.json",
                                {"surface_tolerance_mm": 1.0}, KITS23, tmp_path / "row.csv")
    assert row["masses_dice"].iloc[0] == 1.0 and row["kidney_dice"].iloc[0] == 1.0
    assert "masses_surface_dice" in pd.read_csv(tmp_path / "row.csv")


# --------------------------------------------------------------------------
# what already worked, and still does
# --------------------------------------------------------------------------


def test_headers_and_dtypes_that_already_worked(tmp_path):
    image, label = phantom()
    affine = io.kits19_affine(SPACING)
    cases = {
        # sform-only header with a wrong pixdim: the sform is the truth
        "sform_only": (write(tmp_path / "a" / "i.nii.gz", image, affine, sform_only=True, pixdim=[1, 9, 9, 9, 1, 1, 1, 1]),
                       None),
        # qform and sform disagree: nibabel (and we) take the sform
        "disagree": (write(tmp_path / "b" / "i.nii.gz", image, affine), None),
        # big-endian int16 with an intercept of -1024
        "int16": (write(tmp_path / "c" / "i.nii.gz", np.round(image + 1024).astype(">i2"), affine, dtype=">i2",
                        endianness=">", scl_slope=1.0, scl_inter=-1024.0), None),
        # -3024 outside the scanner's field of view
        "padding": (write(tmp_path / "d" / "i.nii.gz", np.where(image < -900, -3024, image), affine), None),
        # a space in the path, uint16 labels with only a qform (KiTS19's corrected cases)
        "space": (write(tmp_path / "with space" / "i.nii.gz", image, affine),
                  write(tmp_path / "with space" / "s.nii.gz", label.astype(np.uint16), affine, dtype=np.uint16,
                        qform_only=True)),
    }
    assert int(nib.load(tmp_path / "a" / "i.nii.gz").header["qform_code"]) == 0
    img = nib.load(tmp_path / "b" / "i.nii.gz")
    img.set_qform(np.diag([7.0, 7.0, 7.0, 1.0]), code=1)
    nib.save(img, tmp_path / "b" / "i.nii.gz")
    for case_id, (imaging, seg) in cases.items():
        case = io.read_case(imaging, seg, case_id)
        assert case.spacing == pytest.approx(SPACING), case_id
        assert case.image.dtype == np.float32 and np.isfinite(case.image).all()
        assert check.check_case(imaging, seg, case_id, io.KITS19_LABELS)["problem"] is None
    assert nib.load(cases["int16"][0]).header.endianness == ">"
    np.testing.assert_allclose(io.read_case(*cases["int16"], "int16").image, np.round(image + 1024) - 1024)
    np.testing.assert_array_equal(io.read_case(*cases["space"], "space").label, label)


def test_a_sheared_affine_and_an_odd_grid(tmp_path):
    image, _ = phantom(shape=(8, 40, 62))  # like KiTS19's 512 x 796 case, scaled down
    affine = io.kits19_affine(SPACING)
    affine[0, 1] = -0.5  # a sheared column
    case = io.read_case(write(tmp_path / "i.nii.gz", image, affine), case_id="shear")
    assert case.image.shape == (8, 40, 62)
    assert case.spacing == pytest.approx((5.0, float(np.hypot(2.5, 0.5)), 2.5))


def test_files_that_already_failed_clearly(tmp_path):
    image, label = phantom()
    affine = io.kits19_affine(SPACING)
    imaging = write(tmp_path / "i.nii.gz", image, affine)
    (tmp_path / "plain.nii.gz").write_bytes(gzip.decompress(imaging.read_bytes()))  # not gzip, though named .gz
    with pytest.raises(io.CaseError, match="plain: cannot read imaging"):
        io.read_case(tmp_path / "plain.nii.gz", case_id="plain")
    shifted = affine.copy()
    shifted[2, 3] += 5.0  # the labels 5 mm off
    with pytest.raises(io.CaseError, match="shifted: segmentation affine differs from imaging affine"):
        io.read_case(imaging, write(tmp_path / "s.nii.gz", label, shifted), "shifted")


# --------------------------------------------------------------------------
# case names, and the whole data set checked before any work
# --------------------------------------------------------------------------


def dataset(root, names, broken=()):
    image, label = phantom()
    affine = io.kits19_affine(SPACING)
    for name in names:
        write(root / name / io.IMAGING_NAME, image, affine)
        seg = label if name not in broken else label[:, :-1]
        write(root / name / io.SEGMENTATION_NAME, seg, affine)
    return root


def test_any_case_name_of_letters_digits_and_separators(tmp_path):
    names = ["P-0042", "case_00001", "patient_017", "scan.2"]
    assert io.list_cases(dataset(tmp_path / "ok", names)) == sorted(names)
    assert [io.kits_number(n) for n in sorted(names)] == [None, "00001", None, None]
    dataset(tmp_path / "bad", ["good", "bad name"])
    with pytest.raises(io.CaseError, match="malformed case name 'bad name'"):
        io.list_cases(tmp_path / "bad")
    dataset(tmp_path / "dup", ["Patient_1", "patient_1"])
    with pytest.raises(io.CaseError, match="duplicate case name"):
        io.list_cases(tmp_path / "dup")


def test_the_dataset_check_lists_every_bad_case_at_once(tmp_path):
    root = dataset(tmp_path / "data", ["a", "b", "c", "d"], broken=("b", "d"))
    write(root / "c" / io.SEGMENTATION_NAME, np.full((16, 48, 56), 7, np.uint8), io.kits19_affine(SPACING))
    with pytest.raises(io.CaseError) as error:
        check.check_dataset(io.dataset_files(root), io.KITS19_LABELS, tmp_path / "check.csv")
    lines = str(error.value).splitlines()
    assert lines[0] == "3 of 4 cases cannot be used:"
    assert [line.split(":")[0] for line in lines[1:]] == ["b", "c", "d"]
    assert "segmentation shape (16, 47, 56) differs" in lines[1] and "labels [7]" in lines[2]
    assert not (tmp_path / "check.csv").exists()


def test_the_dataset_check_table(tmp_path):
    root = dataset(tmp_path / "data", ["a", "b"])
    image, _ = phantom()
    data, affine = reoriented(image, io.kits19_affine(SPACING), ("R", "A", "S"))
    write(root / "c" / io.IMAGING_NAME, data, affine)  # unlabeled, slice axis last
    table = check.check_dataset(io.dataset_files(root), io.KITS19_LABELS, tmp_path / "check.csv")
    saved = pd.read_csv(tmp_path / "check.csv").set_index("case_id")
    assert list(saved.index) == ["a", "b", "c"] and list(table["case_id"]) == ["a", "b", "c"]
    assert saved.loc["a", "orientation"] == "IPL" and saved.loc["c", "orientation"] == "RAS"
    assert saved.loc["c", "shape"] == "16x48x56" and saved.loc["a", "spacing_mm"] == "5x2.5x2.5"
    assert saved.loc["a", "label_values"] == "0 1 2" and not saved.loc["c", "labeled"]
    assert saved["slice_axis_first"].all()


def test_label_values_must_be_distinct():
    from kitscascade import config, experiments

    cfg = config.validate(deep_merge(defaults(), {"labels": {"kidney": 1, "tumor": 1}}))
    with pytest.raises(config.ConfigError, match="gives two classes the same value"):
        experiments.plan_workflow(cfg)


def test_a_truncated_imaging_file_is_found_by_the_check(tmp_path):
    root = dataset(tmp_path / "data", ["a", "b"])
    whole = (root / "b" / io.IMAGING_NAME).read_bytes()
    (root / "b" / io.IMAGING_NAME).write_bytes(whole[: len(whole) * 2 // 3])
    with pytest.raises(io.CaseError, match=r"b: imaging .* is shorter than its header says"):
        check.check_dataset(io.dataset_files(root), io.KITS19_LABELS, tmp_path / "check.csv")


def test_a_label_file_does_not_inherit_the_ct_display_window(tmp_path):
    image, label = phantom()
    imaging = write(tmp_path / "i.nii.gz", image, io.kits19_affine(SPACING), cal_min=-1000.0, cal_max=3000.0,
                    descrip=b"CT scanner")
    io.save_for_scan(label, imaging, tmp_path / "p.nii.gz")
    header = nib.load(tmp_path / "p.nii.gz").header
    assert header["cal_min"] == header["cal_max"] == 0 and header["descrip"].item() == b"kitscascade"
