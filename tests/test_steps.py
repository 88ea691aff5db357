"""File-level workflow steps on small cases: geometry of outputs, the no-kidney fallback, unlabeled cases."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from kitscascade import io, metrics, phantoms, report, roi, stage1, stage2
from kitscascade.config import deep_merge, defaults
from kitscascade.fingerprint import collect_statistics
from kitscascade.resample import resample_volume

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
                       root / f"{c}.mask.nii.gz", root / f"{c}.labels.nii.gz", root / f"{c}.mask.json", threads=1)
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


def test_a_folds_held_out_cases_are_predicted_as_one_case_at_a_time(trained, tmp_path, monkeypatch):
    """stage1.predict_held_out (one job per fold) writes what stage1.predict writes per case, the
    model loaded once."""
    import kitscascade.infer as infer

    root, data, ids = trained
    loads = []
    load = infer.load_checkpoint
    monkeypatch.setattr(infer, "load_checkpoint", lambda *a, **kw: loads.append(a[0]) or load(*a, **kw))
    cases = [{"npz": root / f"{c}.s1.npz", "imaging": io.case_files(data, c)[0], "segmentation": io.case_files(data, c)[1],
              "case_id": c, "mask": tmp_path / f"{c}.mask.nii.gz", "labels": tmp_path / f"{c}.labels.nii.gz",
              "info": tmp_path / f"{c}.json"} for c in ids]
    infos = stage1.predict_held_out(cases, root / "s1.pt", STAGE1, LABELS, threads=1)
    assert loads == [root / "s1.pt"]
    for c, info in zip(ids, infos):
        assert info == io.load_json(root / f"{c}.mask.json") == io.load_json(tmp_path / f"{c}.json")
        for kind in ("mask", "labels"):
            np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / f"{c}.{kind}.nii.gz").dataobj),
                                          np.asarray(nib.load(root / f"{c}.{kind}.nii.gz").dataobj))
    assert len({io.load_json(root / f"{c}.mask.json")["kidney_voxels"] for c in ids}) > 1  # three different masks


def test_preprocessed_grid_halves_the_inplane_size(trained):
    root, data, _ = trained
    arrays = io.load_npz(root / "case_00000.s1.npz")
    assert arrays["image"].shape[0] == 1 and arrays["image"].dtype == np.float32
    spacing = io.read_case_folder(data, "case_00000").spacing
    target = [m * f for m, f in zip(io.load_json(root / "stats.json")["median_spacing"], [1, 2, 2])]
    assert arrays["image"].shape[1:] == tuple(round(n * s / t) for n, s, t in zip(SHAPE, spacing, target))
    assert arrays["image"].shape[2] < SHAPE[1] * 0.6  # about half the rows
    np.testing.assert_array_equal(arrays["original_shape"], SHAPE)
    assert set(np.unique(arrays["label"])) == {0, 1, 2}  # kidney and tumor, stage 1's default classes


def test_merged_stage1_keeps_one_foreground_class(trained, tmp_path):
    root, data, ids = trained
    merged = deep_merge(STAGE1, {"classes": "merged"})
    stage1.preprocess(*io.case_files(data, ids[0]), ids[0], root / "stats.json", merged, LABELS, tmp_path / "m.npz")
    assert set(np.unique(io.load_npz(tmp_path / "m.npz")["label"])) == {0, 1}
    assert stage1.network_config(merged)["num_classes"] == 2 and stage1.network_config(STAGE1)["num_classes"] == 3


def three_blobs(shape, tumor_class: int):
    """Stage-1 softmax on its grid: a big kidney with a tumor, a second kidney, and a small spurious blob."""
    probs = np.zeros((3 if tumor_class == 2 else 2, *shape), np.float32)
    probs[0] = 1
    for box, cls in (((slice(2, 8), slice(4, 14), slice(4, 14)), 1), ((slice(3, 6), slice(6, 10), slice(6, 10)), tumor_class),
                     ((slice(2, 8), slice(4, 12), slice(30, 38)), 1), ((slice(9, 10), slice(28, 30), slice(20, 22)), 1)):
        probs[(slice(None), *box)] = 0
        probs[(cls, *box)] = 1
    return probs


def stage1_outputs(trained, cfg, probs, tmp_path, monkeypatch):
    """stage1.predict of the first case with the ensemble's softmax replaced by ``probs``: the case, its
    localizer mask and stage 1's label map, both read back in the canonical orientation."""
    import kitscascade.infer as infer

    root, data, ids = trained
    monkeypatch.setattr(infer, "sliding_window_predict", lambda models, volume, patch, num_classes, **kw: probs)
    stage1.predict(root / f"{ids[0]}.s1.npz", [root / "s1.pt"], *io.case_files(data, ids[0]), ids[0], cfg, LABELS,
                   tmp_path / "mask.nii.gz", tmp_path / "labels.nii.gz", tmp_path / "mask.json", threads=1)
    case = io.read_case_folder(data, ids[0])
    return (case, io.read_aligned(tmp_path / "mask.nii.gz", case, "mask"),
            io.read_aligned(tmp_path / "labels.nii.gz", case, "labels"))


@pytest.mark.parametrize("classes", ["kidney_tumor", "merged"])
def test_stage1_labels_and_the_prior_of_stage2(trained, tmp_path, monkeypatch, classes):
    """The localizer mask is the foreground (kidney and tumor more likely than background), its two largest
    components; the label map keeps kidney and tumor inside them (merged: kidney only); the ROI crop's
    prior is the mask."""
    root, data, ids = trained
    cfg = deep_merge(STAGE1, {"classes": classes})
    grid = io.load_npz(root / f"{ids[0]}.s1.npz")["image"].shape[1:]
    probs = three_blobs(grid, tumor_class=2 if classes == "kidney_tumor" else 1)
    case, mask, labels = stage1_outputs(trained, cfg, probs, tmp_path, monkeypatch)
    foreground = resample_volume(probs[1:].sum(axis=0), case.image.shape, order=1) > 0.5
    components = ndimage.label(foreground)[0]
    assert components.max() == 3  # the spurious blob is the third and smallest
    sizes = np.bincount(components.ravel())[1:]
    kept = np.isin(components, 1 + np.argsort(-sizes)[:2])
    np.testing.assert_array_equal(mask, kept)
    tumor = resample_volume(probs[-1] - probs[1], case.image.shape, order=1) > 0 if classes == "kidney_tumor" else False
    np.testing.assert_array_equal(labels, np.where(kept, np.where(tumor, 2, 1), 0))
    assert set(np.unique(labels)) == ({0, 1, 2} if classes == "kidney_tumor" else {0, 1})
    roi.crop_rois(*io.case_files(data, ids[0]), ids[0], tmp_path / "mask.nii.gz", root / "stats.json", STAGE2, LABELS,
                  tmp_path / "rois.npz", tmp_path / "rois.json")
    crops, info = io.load_npz(tmp_path / "rois.npz"), io.load_json(tmp_path / "rois.json")
    for r, box in enumerate(info["bboxes"]):
        np.testing.assert_array_equal(crops[f"prior_{r}"], roi.crop_roi(mask, box).astype(np.uint8))


@pytest.mark.parametrize("min_peak", [None, 0.99])
def test_stage1_drops_a_second_kidney_it_is_unsure_of(trained, tmp_path, monkeypatch, min_peak):
    """``component_min_peak``: the second kidney of :func:`three_blobs` peaks at 0.9 (foreground), under
    0.99, and goes; the largest peaks at 0.9 too and stays. null keeps both, as before."""
    root, data, ids = trained
    cfg = deep_merge(STAGE1, {"component_min_peak": min_peak})
    probs = three_blobs(io.load_npz(root / f"{ids[0]}.s1.npz")["image"].shape[1:], tumor_class=2)
    unsure = np.array([0.1, 0.9, 0.0], np.float32)[:, None, None, None]
    probs[:, 2:8, 4:14, 4:14] = unsure
    probs[:, 2:8, 4:12, 30:38] = unsure
    case, mask, _ = stage1_outputs(trained, cfg, probs, tmp_path, monkeypatch)
    components = ndimage.label(mask, np.ones((3, 3, 3)))[0]
    info = io.load_json(tmp_path / "mask.json")
    assert (components.max(), info["n_components"], info["components_below_peak"]) == (
        (2, 2, 0) if min_peak is None else (1, 1, 1))
    assert mask[:, :, : case.image.shape[2] // 2].any()  # the largest, in the first columns, stays


def test_the_training_cases_keep_every_component():
    """The out-of-fold masks of the training cases ignore component_min_peak (stage 2 trains on the ROIs
    of stage 1's false kidneys) and use one model; everything else is the stage's section as it is."""
    cfg = deep_merge(STAGE1, {"component_min_peak": 0.99, "inference": {"folds": 1}})
    held_out = stage1.held_out_settings(cfg)
    assert held_out["component_min_peak"] is None and held_out["inference"]["folds"] is None
    assert {k: v for k, v in held_out.items() if k not in ("component_min_peak", "inference")} == {
        k: v for k, v in cfg.items() if k not in ("component_min_peak", "inference")}
    assert cfg["component_min_peak"] == 0.99 and cfg["inference"]["folds"] == 1  # not changed in place


def test_stage1_evaluation_against_hand_computed_values(tmp_path):
    """A 1x4x4 case: reference kidney 6 voxels and tumor 2; stage 1 finds 5 kidney voxels (one of them
    tumor in the reference) and 1 tumor voxel."""
    ref = np.array([[[0, 1, 1, 0], [1, 1, 2, 2], [0, 1, 0, 0], [0, 0, 0, 0]]], np.uint8)
    pred = np.array([[[0, 1, 1, 0], [1, 1, 1, 2], [0, 0, 0, 0], [0, 0, 0, 0]]], np.uint8)
    affine = io.kits19_affine((2.0, 1.0, 1.0))
    for name, array in (("imaging", ref.astype(np.float32)), ("segmentation", ref), ("stage1", pred)):
        io.save_nifti(array, affine, tmp_path / f"{name}.nii.gz")
    row = metrics.evaluate_stage1_case(tmp_path / "imaging.nii.gz", tmp_path / "segmentation.nii.gz", "hand",
                                       tmp_path / "stage1.nii.gz", {"surface_tolerance_mm": 1.0}, LABELS,
                                       "kidney_tumor", tmp_path / "row.csv").iloc[0]
    assert row["kidney_dice"] == pytest.approx(2 * 6 / (6 + 7))  # foreground: 6 in both of 7 and 6
    assert row["tumor_dice"] == pytest.approx(2 * 1 / (1 + 2))
    assert row["kidney_volume_ref_ml"] == pytest.approx(7 * 2.0 / 1000)
    assert pd.read_csv(tmp_path / "row.csv")["tumor_dice"].iloc[0] == pytest.approx(2 / 3)
    merged = metrics.evaluate_stage1_case(tmp_path / "imaging.nii.gz", tmp_path / "segmentation.nii.gz", "hand",
                                          tmp_path / "stage1.nii.gz", {"surface_tolerance_mm": 1.0}, LABELS,
                                          "merged", tmp_path / "row.csv")
    assert "tumor_dice" not in merged and merged["composite_dice"].iloc[0] == pytest.approx(12 / 13)


def test_stage1_beside_the_cascade_and_table1(tmp_path):
    stage1_rows = pd.DataFrame({"case_id": ["a", "b"], "kidney_dice": [0.90, 0.80], "tumor_dice": [0.50, 0.70]})
    cascade_rows = pd.DataFrame({"case_id": ["b", "a"], "kidney_dice": [0.90, 0.95], "tumor_dice": [0.80, 0.70]})
    comparison = metrics.compare_stages(stage1_rows, cascade_rows).set_index("metric")
    assert comparison.loc["tumor_dice", "gain_mean"] == pytest.approx(0.15)  # (0.20 + 0.10) / 2, paired by case
    assert comparison.loc["tumor_dice", "gain_std"] == pytest.approx(np.std([0.2, 0.1], ddof=1))
    assert comparison.loc["kidney_dice", "stage1_mean"] == pytest.approx(0.85)
    stage1_rows.to_csv(tmp_path / "s1.csv", index=False)
    cascade_rows.to_csv(tmp_path / "s2.csv", index=False)
    merged_rows = stage1_rows.drop(columns=["tumor_dice"])
    merged_rows.to_csv(tmp_path / "merged.csv", index=False)
    rows = [{"stage": 1, "method": "2D UNet", "paper": [95.56, 62.35], "experiment": "x.2d", "sources": [tmp_path / "merged.csv"]},
            {"stage": 1, "method": "3D UNet", "paper": [97.70, 73.31], "experiment": "x", "sources": [tmp_path / "s1.csv"]},
            {"stage": 2, "method": "3D+DS+Res+SP", "paper": [98.05, 83.70], "experiment": "x", "sources": [tmp_path / "s2.csv"]}]
    table = report.write_table1(rows, "x", tmp_path / "t.csv", tmp_path / "t.md")
    assert table["tumor_dice"].round(2).tolist()[1:] == [60.0, 75.0] and np.isnan(table["tumor_dice"][0])
    md = (tmp_path / "t.md").read_text()
    assert "| 1 | 3D UNet | 85.00 ± 7.07 | 60.00 ± 14.14 |" in md and "| 1 | 2D UNet | 85.00 ± 7.07 | – |" in md
    assert "tumor 60.00 -> 75.00, gain +15.00 ± 7.07 (paper: 73.31 -> 83.70)" in md
    assert "kidney 85.00 -> 92.50, gain +7.50 ± 3.54" in md


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


@pytest.mark.parametrize("cyst", ["kidney", "own_class"])
def test_region_based_stage2_trains_and_predicts(trained, tmp_path, cyst):
    """``target: regions``: one sigmoid output per nested region, decoded without an argmax."""
    root, data, ids = trained
    cfg = deep_merge(STAGE2, {"target": "regions", "cyst": cyst})
    state = stage2.train_fold([root / f"{c}.rois.npz" for c in ids[:2]], cfg, 0, tmp_path / "r.pt", tmp_path / "r.csv",
                              threads=1)
    assert state["regions"] == stage2.regions(cfg)
    assert state["network"]["num_classes"] == (3 if cyst == "own_class" else 2)
    out = tmp_path / "pred.nii.gz"
    stage2.predict(root / f"{ids[0]}.rois.npz", root / f"{ids[0]}.rois.json", [tmp_path / "r.pt"],
                   data / ids[0] / io.IMAGING_NAME, cfg, LABELS, out, threads=1)
    assert nib.load(out).shape == nib.load(data / ids[0] / io.IMAGING_NAME).shape
    other = deep_merge(cfg, {"cyst": "kidney" if cyst == "own_class" else "own_class", "target": "classes"})
    if stage2.num_outputs(other) == stage2.num_outputs(cfg):  # same channel count: only the stored regions tell
        with pytest.raises(ValueError, match="trained for regions"):
            stage2.predict(root / f"{ids[0]}.rois.npz", root / f"{ids[0]}.rois.json", [tmp_path / "r.pt"],
                           data / ids[0] / io.IMAGING_NAME, other, LABELS, tmp_path / "x.nii.gz", threads=1)


def test_an_roi_predicted_up_to_its_faces_grows_and_is_predicted_again(trained, tmp_path, monkeypatch):
    """``roi_growth_steps``: an ROI whose kidney touches its box's faces grows there by ``roi_margin_mm``
    (never past the scan) and is predicted again, at most that many times; the grown crop is the scan
    normalised with the first box's mean and std, with the stage-1 mask as its prior."""
    import kitscascade.infer as infer

    root, data, ids = trained
    seen = []

    def everywhere_kidney(model_paths, cfg, threads):
        def predict(volume, n, body=None, activation="softmax"):
            seen.append(volume)
            probs = np.zeros((n, *volume.shape[1:]), np.float32)
            probs[0 if activation == "sigmoid" else io.KIDNEY] = 1.0
            return probs
        predict.regions = [stage2.regions(cfg)]
        return predict

    monkeypatch.setattr(infer, "ensemble_predictor", everywhere_kidney)
    c, case = ids[0], io.read_case_folder(data, ids[0])
    info, arrays = io.load_json(root / f"{c}.rois.json"), io.load_npz(root / f"{c}.rois.npz")
    paths = {"stage1_mask_path": root / f"{c}.prior.nii.gz", "statistics_path": root / "stats.json"}

    def predicted(steps):
        seen.clear()
        out = tmp_path / f"{steps}.nii.gz"
        stage2.predict(root / f"{c}.rois.npz", root / f"{c}.rois.json", [root / "s2.pt"], data / c / io.IMAGING_NAME,
                       deep_merge(STAGE2, {"roi_growth_steps": steps}), LABELS, out, threads=1, **paths)
        return io.read_prediction(out, case, LABELS) > 0

    def union(boxes):
        covered = np.zeros(SHAPE, bool)
        for box in boxes:
            covered[roi.bbox_slices(box)] = True
        return covered

    boxes = info["bboxes"]
    np.testing.assert_array_equal(predicted(0), union(boxes))
    assert len(seen) == len(boxes)
    grown = [roi.expand_bbox(box, STAGE2["roi_margin_mm"], SPACING, SHAPE) for box in boxes]
    assert grown != boxes
    np.testing.assert_array_equal(predicted(1), union(grown))
    assert len(seen) == 2 * len(boxes)
    first = tuple(slice(lo - glo, hi - glo) for (lo, hi), (glo, _) in zip(boxes[0], grown[0]))
    np.testing.assert_array_equal(seen[1][0][first], arrays["image_0"])  # normalised as the first box
    mask = io.read_aligned(paths["stage1_mask_path"], case, "stage-1 mask") > 0
    np.testing.assert_array_equal(seen[1][1], mask[roi.bbox_slices(grown[0])])
    np.testing.assert_array_equal(seen[1][1][first], arrays["prior_0"])
    assert predicted(50).all()  # grown to the whole scan, then no face can grow
    assert len(seen) < 50 * len(boxes)

    def elsewhere_on_growth(model_paths, cfg, threads):  # the grown ROI's kidney is not the one it grew for
        def predict(volume, n, body=None, activation="softmax"):
            seen.append(volume)
            probs = np.zeros((n, *volume.shape[1:]), np.float32)
            channel = 0 if activation == "sigmoid" else io.KIDNEY
            if len(seen) % 2:  # the first box: all kidney, up to its faces
                probs[channel] = 1.0
            else:  # grown: one voxel at its corner, apart from the first box
                probs[channel, 0, 0, 0] = 1.0
            return probs
        predict.regions = [stage2.regions(cfg)]
        return predict

    monkeypatch.setattr(infer, "ensemble_predictor", elsewhere_on_growth)
    np.testing.assert_array_equal(predicted(3), union(boxes))  # each ROI kept its first box and prediction
    assert len(seen) == 2 * len(boxes)

    def inside_only(model_paths, cfg, threads):  # nothing reaches a face: the scan and mask are never read
        def predict(volume, n, body=None, activation="softmax"):
            probs = np.zeros((n, *volume.shape[1:]), np.float32)
            probs[0 if activation == "sigmoid" else io.KIDNEY, 2:-2, 2:-2, 2:-2] = 1.0
            return probs
        predict.regions = [stage2.regions(cfg)]
        return predict

    monkeypatch.setattr(infer, "ensemble_predictor", inside_only)
    stage2.predict(root / f"{c}.rois.npz", root / f"{c}.rois.json", [root / "s2.pt"], data / c / io.IMAGING_NAME,
                   deep_merge(STAGE2, {"roi_growth_steps": 3}), LABELS, tmp_path / "inside.nii.gz", threads=1,
                   stage1_mask_path=tmp_path / "absent.nii.gz", statistics_path=tmp_path / "absent.json")
    assert (tmp_path / "inside.nii.gz").exists()
    with pytest.raises(ValueError, match="roi_growth_steps 1 needs the stage-1 mask"):
        stage2.predict(root / f"{c}.rois.npz", root / f"{c}.rois.json", [root / "s2.pt"], data / c / io.IMAGING_NAME,
                       deep_merge(STAGE2, {"roi_growth_steps": 1}), LABELS, tmp_path / "x.nii.gz", threads=1)
    assert not (tmp_path / "x.nii.gz").exists()


def test_region_decoding_puts_tumor_inside_kidney_only():
    nested = stage2.regions({"cyst": "kidney", "target": "regions"})
    probs = np.zeros((2, 1, 1, 4), np.float32)
    probs[:, 0, 0] = [[0.9, 0.9, 0.2, 0.4], [0.2, 0.8, 0.9, 0.6]]  # kidney+tumor, tumor
    np.testing.assert_array_equal(stage2.decode_regions(probs, nested)[0, 0], [1, 2, 0, 0])
    with_cyst = stage2.regions({"cyst": "own_class", "target": "regions"})
    probs = np.zeros((3, 1, 1, 3), np.float32)
    probs[:, 0, 0] = [[0.9, 0.9, 0.9], [0.1, 0.9, 0.9], [0.1, 0.1, 0.9]]
    np.testing.assert_array_equal(stage2.decode_regions(probs, with_cyst)[0, 0], [io.KIDNEY, io.CYST, io.TUMOR])
    with pytest.raises(ValueError, match="nested"):
        stage2.decode_regions(probs, [(1, 2), (3,), (2,)])
    assert stage2.regions({"cyst": "kidney", "target": "classes"}) is None


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
                              "case_00000", STAGE1, LABELS, tmp_path / "m.nii.gz", tmp_path / "l.nii.gz",
                              tmp_path / "m.json", threads=1)
    assert info["empty"] and info["stage1_dice"] == 0.0
    assert "found no kidney" in caplog.text


def test_foreground_index_size_is_a_config_key(trained):
    root, _, ids = trained
    small = deep_merge(STAGE2, {"training": {"max_foreground_voxels": 5}})
    volumes = stage2.training_volumes([root / f"{c}.rois.npz" for c in ids[:2]], small)
    assert volumes and all(0 < len(coords) <= 5 for v in volumes for coords in v.foreground.values())
    volumes = stage1.training_volumes([root / f"{c}.s1.npz" for c in ids[:2]], small["training"])
    assert all(0 < len(coords) <= 5 for v in volumes for coords in v.foreground.values())


def test_a_foreground_split_between_kidney_and_tumor_stays_foreground(trained, tmp_path, monkeypatch):
    """Where background is the single most likely class but kidney and tumor together are more likely,
    the voxel belongs to the localizer's mask (an argmax would lose it)."""
    root, _, ids = trained
    grid = io.load_npz(root / f"{ids[0]}.s1.npz")["image"].shape[1:]
    probs = np.zeros((3, *grid), np.float32)
    probs[0] = 1
    probs[:, 2:8, 4:14, 4:14] = np.array([0.4, 0.35, 0.25])[:, None, None, None]  # background the argmax
    _, mask, labels = stage1_outputs(trained, STAGE1, probs, tmp_path, monkeypatch)
    assert mask.any() and set(np.unique(labels[mask > 0])) == {1}  # kidney: more likely than tumor


def test_stage1_runs_the_windows_that_touch_the_body(trained, tmp_path, monkeypatch, caplog):
    """Preprocessing keeps the body mask (``body_threshold_hu``) and stage 1 hands it to the sliding window;
    null keeps no mask, and a threshold above every voxel is warned about and sweeps every window."""
    import kitscascade.infer as infer

    root, data, ids = trained
    arrays = io.load_npz(root / f"{ids[0]}.s1.npz")
    body = arrays["body"]
    assert body.shape == arrays["image"].shape[1:] and body.dtype == bool and 0.1 < body.mean() < 0.9
    seen = []

    def sweep(models, volume, patch, num_classes, body=None, **kwargs):
        seen.append(body)
        return np.stack([np.ones(volume.shape[1:], np.float32)] + [np.zeros(volume.shape[1:], np.float32)] * 2)

    monkeypatch.setattr(infer, "sliding_window_predict", sweep)
    files = io.case_files(data, ids[0])
    for threshold in (STAGE1["body_threshold_hu"], None, 1e6):
        cfg = deep_merge(STAGE1, {"body_threshold_hu": threshold})
        stage1.preprocess(*files, ids[0], root / "stats.json", cfg, LABELS, tmp_path / "s1.npz")
        assert ("body" in io.load_npz(tmp_path / "s1.npz")) == (threshold is not None)
        stage1.predict(tmp_path / "s1.npz", [root / "s1.pt"], *files, ids[0], cfg, LABELS, tmp_path / "mask.nii.gz",
                       tmp_path / "labels.nii.gz", tmp_path / "mask.json", threads=1)
    np.testing.assert_array_equal(seen[0], body)
    assert seen[1:] == [None, None] and "no voxel above body_threshold_hu 1000000.0: every window runs" in caplog.text
