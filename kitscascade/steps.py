"""One function per workflow step: files in, files out.

The Snakemake adapters in ``workflow_scripts/`` call exactly one of these;
each reads its inputs, calls the array-level functions of the phase modules
and writes its outputs atomically. ``cfg`` arguments are the matching
sections of the workflow config (see ``config/config.schema.yaml``).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from kitscascade import fingerprint, io, metrics, phantoms, roi, splits
from kitscascade.data import TrainingVolume
from kitscascade.normalize import clip_and_zscore, zscore_within
from kitscascade.resample import grid_spacing, resample_labels, resample_volume, target_shape

# Steps that train or run networks import torch lazily, so that the imaging-only
# rules run in an environment without it (envs/imaging.yaml).

log = logging.getLogger(__name__)

STAGE1_CLASSES = 2  # background, kidney-with-tumor
STAGE2_CLASSES = 3  # background, kidney, tumor


# --------------------------------------------------------------------------
# data, splits, statistics
# --------------------------------------------------------------------------


def make_phantoms(out_dir, case_ids: list[str], unlabeled: list[str], cfg: dict) -> None:
    phantoms.write_phantom_dataset(
        out_dir,
        case_ids,
        shape=tuple(cfg["shape"]),
        spacing=tuple(cfg["spacing"]),
        seed=cfg["seed"],
        unlabeled=set(unlabeled),
        single_kidney_fraction=cfg["single_kidney_fraction"],
    )


def labeled_cases(data_dir, case_ids: list[str]) -> dict[str, bool]:
    return {c: io.has_segmentation(data_dir, c) for c in case_ids}


def write_splits(data_dir, case_ids: list[str], cfg: dict, out_path) -> dict:
    result = splits.make_splits(
        case_ids, labeled_cases(data_dir, case_ids), cfg["n_validation"], cfg["n_folds"], cfg["seed"]
    )
    io.save_json(result, out_path)
    log.info(
        "splits: %d training (%d folds), %d validation, %d unlabeled",
        len(result["training"]), len(result["folds"]), len(result["validation"]), len(result["unlabeled"]),
    )
    return result


def dataset_statistics(data_dir, case_ids, splits_path, cfg: dict, json_path, csv_path) -> dict:
    split = io.load_json(splits_path)
    summary, table = fingerprint.collect_statistics(
        data_dir, case_ids, split["training"], cfg["percentiles"], cfg["samples_per_case"], cfg["seed"]
    )
    io.save_table(table, csv_path)
    io.save_json(summary, json_path)
    fg = summary["foreground"]
    log.info("foreground HU: clip [%.1f, %.1f], mean %.1f, std %.1f", fg["lower"], fg["upper"], fg["mean"], fg["std"])
    return summary


def stage1_spacing(statistics: dict, spacing_factor) -> list[float]:
    """Stage-1 target spacing: the dataset median spacing times the per-axis factor (mm)."""
    return [float(s * f) for s, f in zip(statistics["median_spacing"], spacing_factor)]


# --------------------------------------------------------------------------
# stage 1
# --------------------------------------------------------------------------


def preprocess_stage1(data_dir, case_id: str, statistics_path, cfg: dict, out_path) -> None:
    """Resample a case to the stage-1 grid, clip + z-score, merge kidney and tumor; save an .npz.

    The .npz holds ``image`` (1, Z, Y, X) float32, ``label`` (Z, Y, X) uint8
    (0/1, absent for unlabeled cases), and the original grid
    (``original_shape``, ``original_spacing``) to map predictions back.
    """
    stats = io.load_json(statistics_path)
    case = io.read_case(data_dir, case_id)
    spacing = stage1_spacing(stats, cfg["spacing_factor"])
    new_shape = target_shape(case.image.shape, case.spacing, spacing)
    image = resample_volume(case.image, new_shape, order=cfg["image_order"])
    fg = stats["foreground"]
    arrays = {
        "image": clip_and_zscore(image, fg["lower"], fg["upper"], fg["mean"], fg["std"])[None],
        "original_shape": np.array(case.image.shape),
        "original_spacing": np.array(case.spacing),
        "spacing": np.array(grid_spacing(case.image.shape, case.spacing, new_shape)),
    }
    if case.label is not None:
        arrays["label"] = resample_labels((case.label > 0).astype(np.uint8), new_shape, n_classes=2)
    io.save_npz(out_path, **arrays)
    log.info("%s: %s at %s mm -> %s", case_id, case.image.shape, np.round(case.spacing, 3), new_shape)


def load_npz(path) -> dict:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def stage1_volumes(paths) -> list[TrainingVolume]:
    volumes = []
    for i, path in enumerate(paths):
        arrays = load_npz(path)
        if "label" not in arrays:
            raise io.CaseError(f"{path}: a training case without a label")
        volumes.append(TrainingVolume.from_arrays(arrays["image"], arrays["label"], seed=i))
    return volumes


def stage2_volumes(paths, spatial_prior: bool) -> list[TrainingVolume]:
    volumes = []
    for path in paths:
        arrays = load_npz(path)
        for r in range(int(arrays["n_rois"])):
            if f"label_{r}" not in arrays:
                raise io.CaseError(f"{path}: a training case without a label")
            volumes.append(
                TrainingVolume.from_arrays(roi_channels(arrays, r, spatial_prior), arrays[f"label_{r}"], seed=r)
            )
    return volumes


def network_config(stage_cfg: dict, in_channels: int, num_classes: int) -> dict:
    """Keyword arguments of ``build_network`` for a stage's config section."""
    return {
        **stage_cfg["network"],
        "in_channels": in_channels,
        "num_classes": num_classes,
        "patch_size": list(stage_cfg["patch_size"]),
    }


def stage2_network_config(cfg: dict) -> dict:
    """The stage-2 network; ``spatial_prior`` decides its input channels and is not passed on."""
    network = network_config(cfg, 2 if cfg["network"]["spatial_prior"] else 1, STAGE2_CLASSES)
    network.pop("spatial_prior")
    return network


def train_stage(stage: int, case_paths, cfg: dict, fold: int, checkpoint_path, curve_path, threads: int = 1):
    """Train fold ``fold`` of stage 1 or 2 from its preprocessed cases (.npz paths)."""
    from kitscascade.train import train_model

    if stage == 1:
        volumes, network = stage1_volumes(case_paths), network_config(cfg, 1, STAGE1_CLASSES)
    else:
        network = stage2_network_config(cfg)
        volumes = stage2_volumes(case_paths, cfg["network"]["spatial_prior"])
    training = dict(cfg["training"], seed=cfg["training"]["seed"] + fold)
    log.info("stage %d fold %d: %d training volumes, network %s", stage, fold, len(volumes), network)
    extra = {"stage": stage, "fold": fold, "cases": [Path(p).stem for p in case_paths]}
    return train_model(volumes, network, training, checkpoint_path, curve_path, extra=extra, threads=threads)


def ensemble_predictor(model_paths, cfg: dict, threads: int):
    """Load the fold models once; return ``predict(volume, num_classes)`` giving their averaged softmax.

    Sliding window with the stage's ``inference`` settings, on CUDA (mixed
    precision) when available and asked for, else on ``threads`` CPU threads.
    """
    import torch

    from kitscascade.infer import sliding_window_predict
    from kitscascade.train import load_checkpoint, model_from_checkpoint, select_device

    torch.set_num_threads(max(1, int(threads)))
    device = select_device(cfg["training"].get("device", "auto"))
    checkpoints = [load_checkpoint(p, map_location=device) for p in model_paths]
    models = [model_from_checkpoint(c, device) for c in checkpoints]
    patch, inf = checkpoints[0]["network"]["patch_size"], cfg["inference"]

    def predict(volume: np.ndarray, num_classes: int) -> np.ndarray:
        return sliding_window_predict(
            models, volume, patch, num_classes, overlap=inf["overlap"], batch_size=inf["batch_size"],
            mirror_axes=tuple(inf["mirror_axes"]), device=device, use_amp=device.type == "cuda",
        )

    return predict


def predict_stage1(npz_path, model_paths, data_dir, case_id: str, cfg: dict, out_path, info_path, threads=1) -> dict:
    """Stage-1 kidney mask in the original geometry (same shape and affine as the imaging).

    Averages the softmax of ``model_paths`` over a sliding window on the
    stage-1 grid, maps the kidney probability back to the original grid
    (linear), thresholds at 0.5 and keeps the ``keep_components`` largest
    components. An empty result is logged and flagged in ``info_path``.
    """
    from kitscascade.infer import keep_largest_components

    arrays = load_npz(npz_path)
    probs = ensemble_predictor(model_paths, cfg, threads)(arrays["image"], STAGE1_CLASSES)
    kidney = resample_volume(probs[1], tuple(arrays["original_shape"]), order=1) > 0.5
    kidney = keep_largest_components(kidney, cfg["keep_components"])
    img = nib.load(Path(data_dir) / case_id / io.IMAGING_NAME)
    io.save_nifti(kidney.astype(np.uint8), img.affine, out_path, header=img.header)
    info = {
        "case_id": case_id,
        "models": [str(p) for p in model_paths],
        "kidney_voxels": int(kidney.sum()),
        "n_components": len(roi.component_bboxes(kidney, cfg["keep_components"])),
        "empty": bool(not kidney.any()),
        "stage1_dice": None,
    }
    seg_path = Path(data_dir) / case_id / io.SEGMENTATION_NAME
    if seg_path.exists():  # only the label: the imaging was read and checked in preprocessing
        _, label = io.load_nifti(seg_path, case_id, "segmentation")
        info["stage1_dice"] = metrics.dice(kidney, io.validate_labels(np.asarray(label), case_id) > 0)
    if info["empty"]:
        log.warning("%s: stage 1 found no kidney; stage 2 falls back to the whole volume", case_id)
    log.info("%s: stage-1 kidney mask %d voxels, %d components, Dice %s",
             case_id, info["kidney_voxels"], info["n_components"], info["stage1_dice"])
    io.save_json(info, info_path)
    return info


# --------------------------------------------------------------------------
# stage 2
# --------------------------------------------------------------------------


def roi_channels(arrays: dict, r: int, spatial_prior: bool) -> np.ndarray:
    """Input channels of ROI ``r``: the normalised CT, plus the stage-1 prior when switched on."""
    image = arrays[f"image_{r}"][None]
    if not spatial_prior:
        return image
    return np.concatenate([image, arrays[f"prior_{r}"][None].astype(np.float32)])


def crop_rois(data_dir, case_id: str, stage1_mask_path, statistics_path, cfg: dict, out_path, info_path) -> dict:
    """One ROI per stage-1 kidney component (up to two) in the original resolution.

    Each ROI holds the CT (clipped to the dataset percentiles, z-scored over the
    ROI), the stage-1 mask (the spatial prior) and, for labeled cases, the
    label. When stage 1 found no kidney, the whole volume is the single ROI
    (``fallback_used`` in the info JSON) so stage 2 still searches everywhere.
    """
    case = io.read_case(data_dir, case_id)
    _, mask = io.load_nifti(stage1_mask_path, case_id, "stage-1 mask")
    mask = np.asarray(mask) > 0
    fg = io.load_json(statistics_path)["foreground"]
    boxes = roi.component_bboxes(mask, cfg["max_rois"])
    fallback = not boxes
    if fallback:
        log.warning("%s: no stage-1 kidney; using the whole volume as the ROI", case_id)
        boxes = [[[0, n] for n in case.image.shape]]
    else:
        min_size = [int(p) for p in cfg["patch_size"]][-3:]
        min_size = [1] * (3 - len(min_size)) + min_size
        boxes = [roi.expand_bbox(b, cfg["roi_margin_mm"], case.spacing, case.image.shape, min_size) for b in boxes]
    arrays = {"n_rois": np.array(len(boxes))}
    for r, box in enumerate(boxes):
        arrays[f"image_{r}"] = zscore_within(roi.crop_roi(case.image, box), fg["lower"], fg["upper"])
        arrays[f"prior_{r}"] = roi.crop_roi(mask, box).astype(np.uint8)
        if case.label is not None:
            arrays[f"label_{r}"] = roi.crop_roi(case.label, box)
    io.save_npz(out_path, **arrays)
    info = {"case_id": case_id, "shape": list(case.image.shape), "bboxes": boxes, "fallback_used": fallback}
    io.save_json(info, info_path)
    log.info("%s: %d ROI(s) %s", case_id, len(boxes), boxes)
    return info


def predict_stage2(rois_path, rois_info_path, model_paths, imaging_path, cfg: dict, out_path, threads=1) -> None:
    """Final label map (uint8 {0,1,2}) in the geometry of ``imaging_path``.

    Per ROI: ensemble softmax over the fold models (sliding window, Gaussian
    weighting, optional mirroring), argmax, largest connected component of
    kidney+tumor; then every ROI is pasted back into a full-size volume.
    """
    from kitscascade.infer import postprocess_kidney_tumor

    arrays, info = load_npz(rois_path), io.load_json(rois_info_path)
    predict = ensemble_predictor(model_paths, cfg, threads)
    label = np.zeros(tuple(info["shape"]), dtype=np.uint8)
    for r, box in enumerate(info["bboxes"]):
        probs = predict(roi_channels(arrays, r, cfg["network"]["spatial_prior"]), STAGE2_CLASSES)
        roi.paste_roi(label, postprocess_kidney_tumor(probs.argmax(0).astype(np.uint8)), box)
    img = nib.load(imaging_path)
    io.save_nifti(label, img.affine, out_path, header=img.header)
    log.info("%s: kidney %d voxels, tumor %d voxels", Path(out_path).name, int((label > 0).sum()), int((label == 2).sum()))


def copy_prediction(src, dst) -> None:
    """Copy a final prediction under another name (e.g. the challenge's prediction_XXXXX.nii.gz), atomically."""
    with io.atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


# --------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------


def evaluate_case(data_dir, case_id: str, prediction_path, stage1_info_path, rois_info_path, cfg: dict, out_path):
    """One CSV row of metrics for a labeled case (see :func:`kitscascade.metrics.evaluate_labels`)."""
    case = io.read_case(data_dir, case_id)
    pred = io.read_prediction(prediction_path, case.image.shape)
    row = {"case_id": case_id, **metrics.evaluate_labels(pred, case.label, case.spacing, cfg["surface_tolerance_mm"])}
    row["stage1_dice"] = io.load_json(stage1_info_path)["stage1_dice"]
    row["no_kidney_fallback"] = io.load_json(rois_info_path)["fallback_used"]
    frame = pd.DataFrame([row])
    io.save_table(frame, out_path)
    return frame


def aggregate_evaluation(case_csvs, per_case_path, summary_path) -> pd.DataFrame:
    per_case = pd.concat([pd.read_csv(p) for p in case_csvs], ignore_index=True).sort_values("case_id")
    summary = metrics.summarize(per_case.drop(columns=["case_id"]))
    io.save_table(per_case, per_case_path)
    io.save_table(summary, summary_path)
    return summary


# --------------------------------------------------------------------------
# figures and tables for the report
# --------------------------------------------------------------------------


def plot_evaluation(per_case_path, out_path) -> None:
    from kitscascade import plots

    plots.plot_dice_distribution(pd.read_csv(per_case_path), out_path)


def plot_training_curve(curve_path, title: str, out_path) -> None:
    from kitscascade import plots

    plots.plot_training_curve(pd.read_csv(curve_path), title, out_path)


def plot_case(data_dir, case_id: str, prediction_path, out_path) -> None:
    from kitscascade import plots

    case = io.read_case(data_dir, case_id)
    prediction = io.read_prediction(prediction_path, case.image.shape)
    plots.plot_case_overlay(case.image, case.label, prediction, case.spacing, case_id, out_path)


def collect_benchmarks(tsv_paths, benchmarks_root, out_path) -> pd.DataFrame:
    """One table of Snakemake's per-job benchmarks: job (rule/wildcards), seconds, peak RSS (MB)."""
    rows = []
    for path in tsv_paths:
        frame = pd.read_csv(path, sep="\t")
        job = str(Path(path).relative_to(benchmarks_root).with_suffix(""))
        rows.append({"job": job, "seconds": float(frame["s"].iloc[0]), "max_rss_mb": frame["max_rss"].iloc[0]})
    table = pd.DataFrame(rows).sort_values("seconds", ascending=False)
    io.save_table(table, out_path)
    return table


def write_table1(rows: list[dict], csv_path, md_path) -> pd.DataFrame:
    """The paper's Table 1 from finished experiments: mean (and std) Dice in % over validation cases.

    Stage-1 rows report the localizer's kidney Dice (its mask against kidney +
    tumor); our stage 1 does not segment the tumor, so their tumor column is
    empty. Stage-2 rows report the final kidney and tumor Dice.
    """
    records = []
    for row in rows:
        if row["stage"] == 1:
            kidney = pd.Series([io.load_json(p)["stage1_dice"] for p in row["sources"]], dtype=float)
            tumor = pd.Series([np.nan])
        else:
            per_case = pd.read_csv(row["sources"][0])
            kidney, tumor = per_case["kidney_dice"], per_case["tumor_dice"]
        records.append({
            "stage": row["stage"],
            "method": row["method"],
            "kidney_dice": 100 * kidney.mean(),
            "kidney_dice_std": 100 * kidney.std(),
            "tumor_dice": 100 * tumor.mean(),
            "tumor_dice_std": 100 * tumor.std(),
            "n_cases": int(kidney.notna().sum()),
            "paper_kidney_dice": row["paper"][0],
            "paper_tumor_dice": row["paper"][1],
            "experiment": row["experiment"],
        })
    table = pd.DataFrame(records)
    io.save_table(table.round(2), csv_path)
    lines = [
        "| Stage | Method | Kidney Dice [%] | Tumor Dice [%] | n | Paper kidney | Paper tumor |",
        "|---|---|---|---|---|---|---|",
    ]
    fmt = lambda m, s: "–" if np.isnan(m) else f"{m:.2f} ± {s:.2f}"  # noqa: E731
    for r in records:
        lines.append(
            f"| {r['stage']} | {r['method']} | {fmt(r['kidney_dice'], r['kidney_dice_std'])} | "
            f"{fmt(r['tumor_dice'], r['tumor_dice_std'])} | {r['n_cases']} | {r['paper_kidney_dice']:.2f} | "
            f"{r['paper_tumor_dice']:.2f} |"
        )
    with io.atomic_path(md_path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return table
