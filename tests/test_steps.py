"""File-level workflow steps on small cases: geometry of outputs, the no-kidney fallback, unlabeled cases."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from kitscascade import io, metrics, phantoms, roi, stage1, stage2
from kitscascade.config import deep_merge, defaults
from kitscascade.fingerprint import collect_statistics

SMALL = {"patch_size": [8, 16, 16], "network": {"base_features": 4, "max_features": 8},
         "training": {"iterations": 2, "lr_decay": "constant", "device": "cpu"}, "inference": {"mirror_axes": []}}
STAGE1 = deep_merge(defaults()["stage1"], {**SMALL, "image_order": 1})
STAGE2 = deep_merge(defaults()["stage2"], {**SMALL, "roi_margin_mm": [4.0, 6.0, 6.0]})
LABELS = defaults()["labels"]
# An odd in-plane size, like KiTS19's 512 x 796 case scaled down, with the KiTS19 affine.
SHAPE, SPACING = (12, 64, 100), (5.0, 5.0, 5.0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Three phantom cases (the last unlabeled), statistics, and 2-iteration models of both stages."""
    root = tmp_path_factory.mktemp("steps")
    data = root / "data"
    ids = ["case_00000", "case_00001", "case_00002"]
    phantoms.write_phantom_dataset(data, ids, SHAPE, SPACING, seed=1, unlabeled={"case_00002"})
    files = io.dataset_files(data)
    summary, _ = collect_statistics(files, ids[:2], (0.05, 99.5), 10000, 0)
    io.save_json(summary, root / "stats.json")
    for c in ids:
        stage1.preprocess(*files[c], c, root / "stats.json", STAGE1, LABELS, root / f"{c}.s1.npz")
    stage1.train_fold([root / f"{c}.s1.npz" for c in ids[:2]], STAGE1, 0, root / "s1.pt", root / "s1.csv", threads=1)
    for c in ids:
        stage1.predict(root / f"{c}.s1.npz", [root / "s1.pt"], *files[c], c, STAGE1, LABELS,
                       root / f"{c}.mask.nii.gz", root / f"{c}.mask.json", threads=1)
        # ground-truth-like priors for the two labeled cases so crops are non-trivial
        mask = np.asarray(nib.load(data / c / io.IMAGING_NAME).dataobj) > 1e9 if c == "case_00002" else \
            np.asarray(nib.load(data / c / io.SEGMENTATION_NAME).dataobj) > 0
        io.save_nifti(mask.astype(np.uint8), io.kits19_affine(io.read_case_folder(data, c).spacing),
                      root / f"{c}.prior.nii.gz")
        roi.crop_rois(*files[c], c, root / f"{c}.prior.nii.gz", root / "stats.json", STAGE2, LABELS,
                      root / f"{c}.rois.npz", root / f"{c}.rois.json")
    stage2.train_fold([root / f"{c}.rois.npz" for c in ids[:2]], STAGE2, 0, root / "s2.pt", root / "s2.csv", threads=1)
    return root, data, ids


def test_stage1_mask_has_the_imaging_geometry(trained):
    root, data, ids = trained
    for c in ids:
        img, mask = nib.load(data / c / io.IMAGING_NAME), nib.load(root / f"{c}.mask.nii.gz")
        assert mask.shape == img.shape == SHAPE
        np.testing.assert_allclose(mask.affine, img.affine)
        info = io.load_json(root / f"{c}.mask.json")
        assert (info["stage1_dice"] is None) == (c == "case_00002")


def test_preprocessed_grid_halves_the_inplane_size(trained):
    root, data, _ = trained
    arrays = io.load_npz(root / "case_00000.s1.npz")
    assert arrays["image"].shape[0] == 1 and arrays["image"].dtype == np.float32
    spacing = io.read_case_folder(data, "case_00000").spacing
    target = [m * f for m, f in zip(io.load_json(root / "stats.json")["median_spacing"], [1, 2, 2])]
    assert arrays["image"].shape[1:] == tuple(round(n * s / t) for n, s, t in zip(SHAPE, spacing, target))
    assert arrays["image"].shape[2] < SHAPE[1] * 0.6  # about half the rows
    np.testing.assert_array_equal(arrays["original_shape"], SHAPE)
    assert set(np.unique(arrays["label"])) <= {0, 1}


def test_rois_cover_each_kidney_and_hold_three_arrays(trained):
    root, data, _ = trained
    info = io.load_json(root / "case_00000.rois.json")
    arrays = io.load_npz(root / "case_00000.rois.npz")
    label = io.read_case_folder(data, "case_00000").label
    covered = np.zeros(label.shape, bool)
    for r, box in enumerate(info["bboxes"]):
        covered[tuple(slice(lo, hi) for lo, hi in box)] = True
        shape = tuple(hi - lo for lo, hi in box)
        assert arrays[f"image_{r}"].shape == arrays[f"prior_{r}"].shape == arrays[f"label_{r}"].shape == shape
        assert abs(float(arrays[f"image_{r}"].mean())) < 1e-3  # z-scored over the ROI
    assert covered[label > 0].all() and not info["fallback_used"]


def test_final_prediction_geometry_for_labeled_and_unlabeled(trained, tmp_path):
    root, data, ids = trained
    for c in ids:
        out = tmp_path / f"{c}.nii.gz"
        stage2.predict(root / f"{c}.rois.npz", root / f"{c}.rois.json", [root / "s2.pt"],
                       data / c / io.IMAGING_NAME, STAGE2, LABELS, out, threads=1)
        img, pred = nib.load(data / c / io.IMAGING_NAME), nib.load(out)
        assert pred.shape == img.shape and pred.get_data_dtype() == np.uint8
        np.testing.assert_allclose(pred.affine, img.affine)
        assert pred.header.get_zooms() == pytest.approx(img.header.get_zooms())
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}


def test_no_kidney_fallback_runs_stage2_on_the_whole_volume(trained, tmp_path, caplog):
    root, data, _ = trained  # case_00002's prior is empty
    info = io.load_json(root / "case_00002.rois.json")
    assert info["fallback_used"] and info["bboxes"] == [[[0, n] for n in SHAPE]]
    out = tmp_path / "pred.nii.gz"
    stage2.predict(root / "case_00002.rois.npz", root / "case_00002.rois.json", [root / "s2.pt"],
                   data / "case_00002" / io.IMAGING_NAME, STAGE2, LABELS, out, threads=1)
    assert nib.load(out).shape == SHAPE
    # evaluated like any case, with the flag set (its labels put on the labeled case's grid for the metric)
    io.save_json({**info, "case_id": "case_00000"}, tmp_path / "rois.json")
    io.save_json({"stage1_dice": 0.0}, tmp_path / "s1.json")
    io.save_for_scan(np.asarray(nib.load(out).dataobj), data / "case_00000" / io.IMAGING_NAME, tmp_path / "p0.nii.gz")
    row = metrics.evaluate_case(*io.case_files(data, "case_00000"), "case_00000", tmp_path / "p0.nii.gz", tmp_path / "s1.json",
                                tmp_path / "rois.json", {"surface_tolerance_mm": 2.0}, LABELS, tmp_path / "row.csv")
    assert bool(row["no_kidney_fallback"].iloc[0]) is True
    assert pd.read_csv(tmp_path / "row.csv")["case_id"].tolist() == ["case_00000"]


def test_empty_stage1_prediction_is_reported(trained, tmp_path, caplog, monkeypatch):
    root, data, _ = trained
    import kitscascade.infer as infer

    def nothing(models, volume, patch_size, num_classes, **kwargs):
        probs = np.zeros((num_classes, *volume.shape[1:]), np.float32)
        probs[0] = 1
        return probs

    monkeypatch.setattr(infer, "sliding_window_predict", nothing)
    with caplog.at_level("WARNING"):
        info = stage1.predict(root / "case_00000.s1.npz", [root / "s1.pt"], *io.case_files(data, "case_00000"),
                              "case_00000", STAGE1, LABELS, tmp_path / "m.nii.gz", tmp_path / "m.json", threads=1)
    assert info["empty"] and info["stage1_dice"] == 0.0
    assert "found no kidney" in caplog.text


def test_foreground_index_size_is_a_config_key(trained):
    root, _, ids = trained
    small = deep_merge(STAGE2, {"training": {"max_foreground_voxels": 5}})
    volumes = stage2.training_volumes([root / f"{c}.rois.npz" for c in ids[:2]], small)
    assert volumes and all(0 < len(coords) <= 5 for v in volumes for coords in v.foreground.values())
    volumes = stage1.training_volumes([root / f"{c}.s1.npz" for c in ids[:2]], small["training"])
    assert all(0 < len(coords) <= 5 for v in volumes for coords in v.foreground.values())
