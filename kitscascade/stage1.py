"""Stage 1, the kidney localizer (paper section 2.1): resampling, training volumes, kidney masks.

Files in, files out; ``cfg`` is the ``stage1`` section of a validated config
(``config/config.schema.yaml``). Volumes are ``(slices, rows, cols)``; the
stage-1 grid is the dataset's median spacing times ``spacing_factor``
(in-plane doubled in the paper). Steps that run a network import torch
lazily, so that preprocessing runs in an environment without it
(``envs/imaging.yaml``).

``classes: kidney_tumor`` (the paper's reading: its Table 1 gives stage 1 a
tumor Dice) trains background, kidney and tumor as three classes, cysts
counted as kidney; ``merged`` trains kidney-with-tumor as one. Either way the
localizer mask handed to stage 2 is the foreground, where kidney and tumor
together are more likely than background (with two classes: the argmax),
its largest components kept; three classes are then told apart by the
larger of the two. (The argmax of three classes loses the voxels where the
foreground's probability is split between kidney and tumor: on the demo
that cost stage 1 0.08 kidney Dice, README.)
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from kitscascade import io, metrics, roi
from kitscascade.data import TrainingVolume
from kitscascade.normalize import clip_and_zscore
from kitscascade.resample import grid_spacing, resample_labels, resample_volume, target_shape

log = logging.getLogger(__name__)

def num_classes(cfg: dict) -> int:
    """3 (background, kidney, tumor) for ``classes: kidney_tumor``, 2 (background, kidney-with-tumor) for ``merged``."""
    return 3 if cfg["classes"] == "kidney_tumor" else 2


def target_classes(label: np.ndarray, cfg: dict) -> np.ndarray:
    """A case's classes (``io``) as stage 1's: kidney and tumor (cysts as kidney), or all foreground as 1."""
    if cfg["classes"] == "merged":
        return (label > 0).astype(np.uint8)
    return np.where(label == io.CYST, io.KIDNEY, label).astype(np.uint8)


def target_spacing(statistics: dict, spacing_factor) -> list[float]:
    """Stage-1 target spacing: the dataset median spacing times the per-axis factor (mm)."""
    return [float(s * f) for s, f in zip(statistics["median_spacing"], spacing_factor)]


def preprocess(imaging_path, segmentation_path, case_id: str, statistics_path, cfg: dict, labels: dict,
               out_path) -> None:
    """Resample a case to the stage-1 grid, clip + z-score; save an .npz.

    The case is read in the canonical orientation (``io``), its segmentation
    values mapped with ``labels``. The .npz holds ``image`` (1, Z, Y, X)
    float32, ``label`` (Z, Y, X) uint8 (stage 1's classes, see
    :func:`target_classes`; absent when ``segmentation_path`` is None),
    ``body`` (Z, Y, X) bool (:func:`roi.body_mask` of the resampled HU with
    ``body_threshold_hu``; absent when that is null), and the scan's
    canonical grid (``original_shape``, ``original_spacing``) to map
    predictions back.
    """
    stats = io.load_json(statistics_path)
    case = io.read_case(imaging_path, segmentation_path, case_id, labels)
    spacing = target_spacing(stats, cfg["spacing_factor"])
    new_shape = target_shape(case.image.shape, case.spacing, spacing)
    image = resample_volume(case.image, new_shape, order=cfg["image_order"])
    fg = stats["foreground"]
    body = {} if cfg["body_threshold_hu"] is None else {"body": roi.body_mask(image, cfg["body_threshold_hu"])}
    arrays = {
        **body,
        "image": clip_and_zscore(image, fg["lower"], fg["upper"], fg["mean"], fg["std"])[None],
        "original_shape": np.array(case.image.shape),
        "original_spacing": np.array(case.spacing),
        "spacing": np.array(grid_spacing(case.image.shape, case.spacing, new_shape)),
    }
    if case.label is not None:
        arrays["label"] = resample_labels(target_classes(case.label, cfg), new_shape, n_classes=num_classes(cfg))
    io.save_npz(out_path, **arrays)
    log.info("%s: %s at %s mm -> %s", case_id, case.image.shape, np.round(case.spacing, 3), new_shape)


def training_volumes(paths, training: dict) -> list[TrainingVolume]:
    """The preprocessed training cases (.npz of :func:`preprocess`) as training volumes."""
    volumes = []
    for i, path in enumerate(paths):
        arrays = io.load_npz(path)
        if "label" not in arrays:
            raise io.CaseError(f"{path}: a training case without a label")
        volumes.append(TrainingVolume.from_arrays(arrays["image"], arrays["label"],
                                                  max_foreground=training["max_foreground_voxels"], seed=i))
    return volumes


def network_config(cfg: dict) -> dict:
    """Keyword arguments of ``networks.build_network`` for the localizer (CT in, 2 or 3 classes out)."""
    return {**cfg["network"], "in_channels": 1, "num_classes": num_classes(cfg), "patch_size": list(cfg["patch_size"])}


def train_fold(case_paths, cfg: dict, fold: int, checkpoint_path, curve_path, threads: int) -> dict:
    """Train fold ``fold`` of the localizer from its preprocessed cases (.npz paths)."""
    from kitscascade.train import train_model

    volumes, network = training_volumes(case_paths, cfg["training"]), network_config(cfg)
    log.info("stage 1 fold %d: %d training volumes, network %s", fold, len(volumes), network)
    extra = {"stage": 1, "fold": fold, "cases": [Path(p).stem for p in case_paths]}
    return train_model(volumes, network, cfg["training"], checkpoint_path, curve_path, fold=fold, extra=extra,
                       threads=threads)


def predict(npz_path, model_paths, imaging_path, segmentation_path, case_id: str, cfg: dict, labels: dict,
            out_path, labels_path, info_path, threads: int, predictor=None) -> dict:
    """Stage 1's prediction written for the scan (its shape, orientation, affine and header):
    the localizer mask (``out_path``, uint8 0/1: stage 2's ROIs and spatial prior) and the label map
    (``labels_path``, kidney and tumor in the data's values, ``labels``).

    Averages the softmax of ``model_paths`` over a sliding window on the
    stage-1 grid (only the windows that touch the body when the .npz has
    one; all of them when it is empty) and maps probabilities back to the
    scan's grid (linear).
    The mask is the foreground, P(kidney) + P(tumor) > 0.5, with the
    ``keep_components`` largest components, of which those after the largest
    need a voxel of P >= ``component_min_peak`` when that is set (the number
    dropped is ``components_below_peak`` in ``info_path``; README, "Dropping
    what stage 1 is unsure of"; :func:`held_out_settings` turns it off for the
    training cases); inside it the label map is
    tumor where P(tumor) > P(kidney), else kidney. With
    ``segmentation_path`` (labeled cases), the mask's Dice against all
    foreground is recorded. An empty result is logged and flagged in
    ``info_path``. ``predictor``: an :func:`kitscascade.infer.ensemble_predictor` of
    ``model_paths`` already loaded (:func:`predict_held_out`), called as
    ``predictor(image (C, Z, Y, X), num_classes, body) -> (num_classes, Z, Y, X) float32``,
    instead of loading them here; ``model_paths`` is then only recorded in ``info_path``.
    """
    from kitscascade.infer import drop_components_below_peak, ensemble_predictor, keep_largest_components

    arrays = io.load_npz(npz_path)
    body = arrays.get("body")
    if body is not None and not body.any():
        log.warning("%s: no voxel above body_threshold_hu %s: every window runs", case_id, cfg["body_threshold_hu"])
        body = None
    if predictor is None:
        predictor = ensemble_predictor(model_paths, cfg, threads)
    probs = predictor(arrays["image"], num_classes(cfg), body)
    shape = tuple(arrays["original_shape"])
    foreground = resample_volume(probs[1:].sum(axis=0), shape, order=1)  # two classes: p[1]
    mask, min_peak, dropped = foreground > 0.5, cfg["component_min_peak"], 0
    if min_peak is None:
        del foreground  # a float32 copy of the scan, not kept through the components when not needed
    kidney = keep_largest_components(mask, cfg["keep_components"])
    del mask
    if min_peak is not None:
        kidney, dropped = drop_components_below_peak(kidney, foreground, min_peak)
        del foreground
    classes = kidney.astype(np.uint8)  # io.KIDNEY
    if num_classes(cfg) == 3:  # linear resampling: resampled p[2] - p[1] is the difference of the resampled
        classes[kidney & (resample_volume(probs[2] - probs[1], shape, order=1) > 0)] = io.TUMOR
    del probs
    io.save_for_scan(kidney.astype(np.uint8), imaging_path, out_path)
    io.save_for_scan(io.to_values(classes, labels), imaging_path, labels_path)
    info = {
        "case_id": case_id,
        "models": [str(p) for p in model_paths],
        "kidney_voxels": int(kidney.sum()),
        "n_components": len(roi.component_bboxes(kidney, cfg["keep_components"])),
        "components_below_peak": dropped,
        "empty": bool(not kidney.any()),
        "stage1_dice": None,
    }
    if segmentation_path is not None:
        info["stage1_dice"] = metrics.dice(kidney, io.read_label(segmentation_path, case_id, labels) > 0)
    if info["empty"]:
        log.warning("%s: stage 1 found no kidney; stage 2 falls back to the whole volume", case_id)
    log.info("%s: stage-1 kidney mask %d voxels, %d components, Dice %s",
             case_id, info["kidney_voxels"], info["n_components"], info["stage1_dice"])
    io.save_json(info, info_path)
    return info


def held_out_settings(cfg: dict) -> dict:
    """The stage-1 section a fold's out-of-fold predictions (its held-out training cases) run with: one
    model, whatever ``inference.folds`` says, and every one of the ``keep_components`` largest components
    (``component_min_peak`` off), so that stage 2 trains on the ROIs of stage 1's false kidneys as well
    and learns to reject them. Retraining stage 2 on masks without them cost family A 0.06-0.08 tumor
    Dice in two seeds and let case 900's false kidney grow (README, "Dropping what stage 1 is unsure
    of"). Validation, unlabeled and new scans are predicted with ``cfg`` as it is."""
    return {**cfg, "inference": {**cfg["inference"], "folds": None}, "component_min_peak": None}


def predict_held_out(cases: list[dict], model_path, cfg: dict, labels: dict, threads: int) -> list[dict]:
    """:func:`predict` of every case in ``cases`` with one fold's model, loaded once: the fold's
    out-of-fold predictions (the training cases it did not train on), one job per fold instead of
    one per case, whose start (importing torch and the package, loading the model) was about half
    of a per-case job on the demo (README, Quick start). The outputs equal :func:`predict`'s case
    by case (a test checks it).

    Each case is a dict of :func:`predict`'s per-case arguments: ``npz``, ``imaging``,
    ``segmentation`` (None for an unlabeled case), ``case_id``, ``mask``, ``labels``, ``info``
    (the paths of ``out_path``, ``labels_path`` and ``info_path``). ``model_path`` is the fold's
    checkpoint (``.pt``, :func:`kitscascade.train.load_checkpoint`); ``threads`` the torch CPU
    threads. Returns the info dicts, in order. The cases run in order and the first error stops
    the rest (the earlier cases' files stay written): :class:`kitscascade.io.CaseError` for a
    case's unreadable or mismatched label map or scan, ``ValueError`` for a mask that does not
    fit its scan, ``OSError`` for a missing or damaged file.
    """
    from kitscascade.infer import ensemble_predictor

    predictor = ensemble_predictor([model_path], cfg, threads)
    return [predict(c["npz"], [model_path], c["imaging"], c["segmentation"], c["case_id"], cfg, labels,
                    c["mask"], c["labels"], c["info"], threads, predictor=predictor) for c in cases]
