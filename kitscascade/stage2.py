"""Stage 2, kidney and tumor segmentation on ROI crops (paper section 2.2): training and prediction.

Files in, files out; ``cfg`` is the ``stage2`` section of a validated config.
The ROI crops (``roi.crop_rois``) hold per ROI ``r`` the normalised CT
``image_r``, the stage-1 mask ``prior_r`` and, for labeled cases, ``label_r``
(the package's classes, ``io``), all ``(slices, rows, cols)`` in the scan's
original resolution. Cysts (KiTS21/23) are learned as their own class with
``cyst: own_class``, else as kidney (``cyst: kidney``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from kitscascade import io, roi
from kitscascade.normalize import zscore_as
from kitscascade.data import TrainingVolume

log = logging.getLogger(__name__)

def num_classes(cfg: dict) -> int:
    """Output classes: background, kidney, tumor, and cyst when ``cfg["cyst"]`` is ``own_class``."""
    return 4 if cfg["cyst"] == "own_class" else 3


def regions(cfg: dict) -> list[list[int]] | None:
    """The nested regions that ``target: regions`` trains, largest first, as lists of the package's
    classes (``io``; the form checkpoints store); None for ``target: classes``.

    kidney+tumor and tumor; with cysts as their own class kidney+tumor+cyst,
    tumor+cyst and tumor (nnU-Net's KiTS21/23 regions, Isensee et al. 2021,
    arXiv:2110.03352).
    """
    if cfg["target"] == "classes":
        return None
    if cfg["cyst"] == "own_class":
        return [[io.KIDNEY, io.TUMOR, io.CYST], [io.TUMOR, io.CYST], [io.TUMOR]]
    return [[io.KIDNEY, io.TUMOR], [io.TUMOR]]


def num_outputs(cfg: dict) -> int:
    """Network output channels: one per class (softmax) or one per region (sigmoid)."""
    nested = regions(cfg)
    return num_classes(cfg) if nested is None else len(nested)


def decode_regions(probs: np.ndarray, nested: list[list[int]], threshold: float = 0.5) -> np.ndarray:
    """Label map ``(Z, Y, X)`` uint8 from region probabilities ``(R, Z, Y, X)`` without an argmax.

    A voxel belongs to region ``i`` when regions ``0..i`` all exceed
    ``threshold`` (the regions are nested, so a smaller one counts only inside
    the larger ones); it gets the class that region ``i`` holds and region
    ``i + 1`` does not (for kidney+tumor, tumor: kidney where only the first,
    tumor where both). Raises ``ValueError`` when ``probs`` has not one channel
    per region or the regions are not nested with one class between each.
    """
    if probs.ndim != 4 or probs.shape[0] != len(nested):
        raise ValueError(f"expected ({len(nested)}, Z, Y, X) region probabilities, got shape {probs.shape}")
    label = np.zeros(probs.shape[1:], dtype=np.uint8)
    inside = np.ones(probs.shape[1:], dtype=bool)
    for i, region in enumerate(nested):
        smaller = set(nested[i + 1]) if i + 1 < len(nested) else set()
        own = set(region) - smaller
        if len(own) != 1 or not smaller <= set(region):
            raise ValueError(f"regions {nested} are not nested with one class between each")
        inside &= probs[i] > threshold
        label[inside] = own.pop()
    return label


def target_classes(label: np.ndarray, cfg: dict) -> np.ndarray:
    """A label crop as the network's targets: cysts become kidney unless they are their own class."""
    if cfg["cyst"] == "own_class":
        return label
    return np.where(label == io.CYST, io.KIDNEY, label).astype(np.uint8)


def roi_channels(arrays: dict, r: int, spatial_prior: bool) -> np.ndarray:
    """Input channels ``(C, Z, Y, X)`` of ROI ``r``: the normalised CT, plus the stage-1 prior when switched on."""
    image = arrays[f"image_{r}"][None]
    if not spatial_prior:
        return image
    return np.concatenate([image, arrays[f"prior_{r}"][None].astype(np.float32)])


def training_volumes(paths, cfg: dict) -> list[TrainingVolume]:
    """Every ROI of the training cases (.npz of ``roi.crop_rois``) as a training volume."""
    volumes = []
    for path in paths:
        arrays = io.load_npz(path)
        for r in range(int(arrays["n_rois"])):
            if f"label_{r}" not in arrays:
                raise io.CaseError(f"{path}: a training case without a label")
            channels = roi_channels(arrays, r, cfg["network"]["spatial_prior"])
            volumes.append(TrainingVolume.from_arrays(
                channels, target_classes(arrays[f"label_{r}"], cfg),
                max_foreground=cfg["training"]["max_foreground_voxels"], seed=r))
    return volumes


def network_config(cfg: dict) -> dict:
    """Keyword arguments of ``networks.build_network``; ``spatial_prior`` decides the input channels."""
    network = {k: v for k, v in cfg["network"].items() if k != "spatial_prior"}
    in_channels = 2 if cfg["network"]["spatial_prior"] else 1
    return {**network, "in_channels": in_channels, "num_classes": num_outputs(cfg), "patch_size": list(cfg["patch_size"])}


def train_fold(case_paths, cfg: dict, fold: int, checkpoint_path, curve_path, threads: int) -> dict:
    """Train fold ``fold`` of stage 2 from its training cases' ROI crops (.npz paths)."""
    from kitscascade.train import train_model

    volumes, network = training_volumes(case_paths, cfg), network_config(cfg)
    log.info("stage 2 fold %d: %d training volumes, network %s", fold, len(volumes), network)
    extra = {"stage": 2, "fold": fold, "cases": [Path(p).stem for p in case_paths]}
    return train_model(volumes, network, cfg["training"], checkpoint_path, curve_path, fold=fold, extra=extra,
                       threads=threads, regions=regions(cfg))


def predict(rois_path, rois_info_path, model_paths, imaging_path, cfg: dict, labels: dict, out_path,
            threads: int, stage1_mask_path=None, statistics_path=None) -> None:
    """Final label map written for the scan ``imaging_path`` (its shape, orientation, affine and header),
    in the data's label values (``labels``: KiTS19's 0, 1, 2 by default).

    Per ROI: ensemble softmax over the fold models (sliding window, Gaussian
    weighting, optional mirroring) and argmax, or with ``target: regions`` the
    ensemble sigmoid per region and :func:`decode_regions`; then the largest
    connected component of the foreground. With ``roi_growth_steps`` > 0, an
    ROI whose component touches one of its faces (not the scan's border)
    grows by ``roi_margin_mm`` there (``roi.grow_to_prediction``) and is
    predicted again, up to that many times; the grown crop is cut from the
    scan and the stage-1 mask (``stage1_mask_path``, read only when an ROI
    grows) and normalised with the clip range of ``statistics_path`` and the
    mean and std of the first, cropped box (so its voxels come in as
    ``roi.crop_rois`` gave them). In the grown ROI only the components that
    overlap the previous prediction are kept (not another kidney the larger
    box reached); when none does, the previous box and label stay. Every ROI
    is then pasted back into a full-size volume. Raises ``ValueError`` when
    growth is on and either path is missing, when the scan is not the shape
    the ROIs were cut from, or when a model was trained for another target.
    """
    from kitscascade.infer import ensemble_predictor, keep_overlapping_components, postprocess_kidney_tumor

    arrays, info = io.load_npz(rois_path), io.load_json(rois_info_path)
    nested = regions(cfg)
    steps = cfg["roi_growth_steps"]
    if steps and (stage1_mask_path is None or statistics_path is None):
        raise ValueError(f"{info['case_id']}: stage2.roi_growth_steps {steps} needs the stage-1 mask and the "
                         "dataset statistics to crop a grown ROI")
    predict_probs = ensemble_predictor(model_paths, cfg, threads)
    for path, trained in zip(model_paths, predict_probs.regions):
        if trained != nested:
            raise ValueError(f"{path}: trained for regions {trained} (None: classes), but stage2.target "
                             f"{cfg['target']!r} with cyst {cfg['cyst']!r} predicts {nested}")

    def predict_roi(channels: np.ndarray) -> np.ndarray:
        if nested is None:
            return predict_probs(channels, num_classes(cfg)).argmax(0).astype(np.uint8)
        return decode_regions(predict_probs(channels, len(nested), activation="sigmoid"), nested)

    label = np.zeros(tuple(info["shape"]), dtype=np.uint8)
    scan = None
    for r, first_box in enumerate(info["bboxes"]):
        box = first_box
        roi_label = postprocess_kidney_tumor(predict_roi(roi_channels(arrays, r, cfg["network"]["spatial_prior"])))
        for _ in range(steps):
            if not roi.reaches_inner_face(box, roi_label, label.shape):
                break
            scan = scan or _ScanForGrowth(imaging_path, stage1_mask_path, statistics_path, info, labels)
            grown = roi.grow_to_prediction(box, roi_label, cfg["roi_margin_mm"], scan.case.spacing, label.shape)
            before = np.zeros([hi - lo for lo, hi in grown], dtype=bool)
            before[tuple(slice(lo - g, hi - g) for (lo, hi), (g, _) in zip(box, grown))] = roi_label > 0
            grown_label = keep_overlapping_components(
                predict_roi(scan.channels(grown, first_box, cfg["network"]["spatial_prior"])), before)
            if not grown_label.any():
                log.info("%s: ROI %d grown to %s lost the kidney it grew for; kept %s", info["case_id"], r, grown, box)
                break
            log.info("%s: ROI %d reaches its box %s; grown to %s", info["case_id"], r, box, grown)
            box, roi_label = grown, grown_label
        roi.paste_roi(label, roi_label, box)
    io.save_for_scan(io.to_values(label, labels), imaging_path, out_path)
    log.info("%s: kidney %d voxels, tumor %d voxels, cyst %d voxels", Path(out_path).name, int((label > 0).sum()),
             int((label == io.TUMOR).sum()), int((label == io.CYST).sum()))


class _ScanForGrowth:
    """The scan and its stage-1 mask in the canonical orientation, to crop grown ROIs as ``roi.crop_rois``
    does; raises ``ValueError`` when the scan is not the shape its ROIs were cut from."""

    def __init__(self, imaging_path, stage1_mask_path, statistics_path, info: dict, labels: dict):
        self.case = io.read_case(imaging_path, None, info["case_id"], labels)
        if list(self.case.image.shape) != list(info["shape"]):
            raise ValueError(f"{info['case_id']}: {imaging_path} has shape {self.case.image.shape}, but its ROIs "
                             f"were cut from one of {tuple(info['shape'])}")
        self.mask = io.read_aligned(stage1_mask_path, self.case, "stage-1 mask") > 0
        self.foreground = io.load_json(statistics_path)["foreground"]

    def channels(self, box, first_box, spatial_prior: bool) -> np.ndarray:
        """Input channels ``(C, Z, Y, X)`` of ``box``, normalised with the mean and std of ``first_box``,
        the ROI as cropped."""
        lower, upper = self.foreground["lower"], self.foreground["upper"]
        arrays = {"image_0": zscore_as(roi.crop_roi(self.case.image, box), lower, upper,
                                       roi.crop_roi(self.case.image, first_box)),
                  "prior_0": roi.crop_roi(self.mask, box).astype(np.uint8)}
        return roi_channels(arrays, 0, spatial_prior)
