"""Regions of interest around each kidney found by stage 1 (paper section 2.2).

Bounding boxes are ``[[z0, z1], [y0, y1], [x0, x1]]`` half-open voxel ranges in
the ORIGINAL grid of the scan, in the canonical orientation (``io``: slices, rows, cols).
"""

from __future__ import annotations

import logging

import cc3d
import numpy as np

from kitscascade import io
from kitscascade.normalize import zscore_within

log = logging.getLogger(__name__)


def body_mask(image_hu: np.ndarray, threshold_hu: float) -> np.ndarray:
    """The body on a CT: the largest 6-connected component of ``image_hu > threshold_hu``.

    ``image_hu`` is ``(Z, Y, X)`` in Hounsfield units; returns a boolean mask of
    its shape (empty when no voxel passes). Air (-1000 HU) and a scanner's
    padding (-1024 to -3024) fall below a threshold of -500; a table apart
    from the patient is a smaller component. Lungs and bowel gas are holes in
    the mask: a window over them that holds no tissue at all (inside a large
    lung) is skipped and reads as background, where no kidney is. nnU-Net
    crops to the nonzero region for the same purpose, which on CT (air is not
    0) keeps the whole scan.
    """
    image_hu = np.asarray(image_hu)
    if image_hu.ndim != 3:
        raise ValueError(f"image must be (Z, Y, X), got shape {image_hu.shape}")
    labels, n = cc3d.connected_components(image_hu > threshold_hu, connectivity=6, return_N=True)
    if n == 0:
        return np.zeros(image_hu.shape, dtype=bool)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    return labels == np.argmax(sizes)


def component_bboxes(mask: np.ndarray, max_components: int = 2) -> list[list[list[int]]]:
    """Bounding boxes of the ``max_components`` largest 26-connected components, largest first."""
    labels, n = cc3d.connected_components(mask.astype(np.uint8), connectivity=26, return_N=True)
    if n == 0:
        return []
    stats = cc3d.statistics(labels)
    order = np.argsort(-stats["voxel_counts"][1:], kind="stable")[:max_components] + 1
    return [[[int(s.start), int(s.stop)] for s in stats["bounding_boxes"][i]] for i in order]


def expand_bbox(bbox, margin_mm, spacing, shape, min_size=None) -> list[list[int]]:
    """Grow ``bbox`` by ``margin_mm`` per axis (converted with ``spacing``), clipped to ``shape``.

    With ``min_size`` the box is also grown symmetrically to at least that many
    voxels per axis where the scan allows (so a small kidney still fills a patch).
    """
    out = []
    for axis, ((lo, hi), m, s, n) in enumerate(zip(bbox, margin_mm, spacing, shape)):
        pad = int(np.ceil(m / s))
        lo, hi = max(lo - pad, 0), min(hi + pad, n)
        if min_size is not None and hi - lo < min_size[axis]:
            grow = min_size[axis] - (hi - lo)
            lo, hi = lo - grow // 2, hi + grow - grow // 2
            if lo < 0:  # shift the grown box back inside the scan
                lo, hi = 0, hi - lo
            if hi > n:
                lo, hi = max(0, lo - (hi - n)), n
        out.append([int(lo), int(hi)])
    return out


def grow_to_prediction(bbox, roi_label: np.ndarray, margin_mm, spacing, shape) -> list[list[int]]:
    """``bbox`` grown by ``margin_mm`` on each face that ``roi_label``'s foreground touches.

    ``roi_label`` is the label predicted in ``bbox`` (``(Z, Y, X)``, its
    shape, foreground > 0); ``margin_mm`` and ``spacing`` are per axis in mm
    (slice, row, col), ``shape`` the scan's. A face that is the scan's border
    cannot grow; a box that needs no growth comes back equal to ``bbox``.
    Raises ``ValueError`` when ``roi_label`` is not the box's shape. The
    prediction reaching the box's face means the kidney or its tumor goes on
    beyond it: stage 1 found the kidney but not all of a large tumor (README,
    "Following a tumor out of its ROI").
    """
    grown = []
    for (lo, hi), (first, last), m, s, n in zip(bbox, _touched_faces(bbox, roi_label), margin_mm, spacing, shape):
        pad = max(int(np.ceil(m / s)), 1)
        grown.append([int(max(lo - pad, 0) if first else lo), int(min(hi + pad, n) if last else hi)])
    return grown


def reaches_inner_face(bbox, roi_label: np.ndarray, shape) -> bool:
    """Whether ``roi_label``'s foreground touches a face of ``bbox`` that is not the scan's border (``shape``),
    i.e. whether :func:`grow_to_prediction` would grow it; it needs no spacing."""
    return any((first and lo > 0) or (last and hi < n)
               for (lo, hi), (first, last), n in zip(bbox, _touched_faces(bbox, roi_label), shape))


def _touched_faces(bbox, roi_label: np.ndarray) -> list[tuple[bool, bool]]:
    """Per axis, whether ``roi_label``'s foreground lies on the box's first and last face."""
    size = tuple(hi - lo for lo, hi in bbox)
    if roi_label.shape != size:
        raise ValueError(f"ROI label shape {roi_label.shape} is not the box's {size} ({bbox})")
    return [(bool(np.take(roi_label, 0, axis=axis).any()), bool(np.take(roi_label, n - 1, axis=axis).any()))
            for axis, n in enumerate(size)]


def bbox_slices(bbox) -> tuple[slice, ...]:
    return tuple(slice(lo, hi) for lo, hi in bbox)


def crop_roi(array: np.ndarray, bbox) -> np.ndarray:
    """The part of the last 3 axes of ``array`` inside ``bbox`` (a copy)."""
    return np.array(array[(..., *bbox_slices(bbox))])


def paste_roi(target: np.ndarray, roi: np.ndarray, bbox) -> None:
    """Write ``roi`` into ``target`` at ``bbox`` (in place), only where ``roi`` is non-zero.

    Two ROIs may overlap when the kidneys are close; non-zero labels of a
    later ROI never erase those of an earlier one with background.
    """
    view = target[bbox_slices(bbox)]
    view[roi > 0] = roi[roi > 0]


def crop_rois(imaging_path, segmentation_path, case_id: str, stage1_mask_path, statistics_path, cfg: dict,
              labels: dict, out_path, info_path) -> dict:
    """The workflow step: one ROI per stage-1 kidney component (up to ``max_rois``) at the original resolution.

    ``cfg`` is the ``stage2`` config section. Each ROI is grown by
    ``roi_margin_mm`` and to at least the patch size; it holds the CT
    (clipped to the dataset percentiles, z-scored over the ROI), the stage-1
    mask (the spatial prior) and, with ``segmentation_path``, the label as
    the package's classes (``labels`` maps the data's values). When
    stage 1 found no kidney, the whole volume is the single ROI
    (``fallback_used`` in the info JSON) so stage 2 still searches everywhere.
    """
    case = io.read_case(imaging_path, segmentation_path, case_id, labels)
    mask = io.read_aligned(stage1_mask_path, case, "stage-1 mask") > 0
    fg = io.load_json(statistics_path)["foreground"]
    boxes = component_bboxes(mask, cfg["max_rois"])
    fallback = not boxes
    if fallback:
        log.warning("%s: no stage-1 kidney; using the whole volume as the ROI", case_id)
        boxes = [[[0, n] for n in case.image.shape]]
    else:
        min_size = [int(p) for p in cfg["patch_size"]][-3:]
        min_size = [1] * (3 - len(min_size)) + min_size
        boxes = [expand_bbox(b, cfg["roi_margin_mm"], case.spacing, case.image.shape, min_size) for b in boxes]
    arrays = {"n_rois": np.array(len(boxes))}
    for r, box in enumerate(boxes):
        arrays[f"image_{r}"] = zscore_within(crop_roi(case.image, box), fg["lower"], fg["upper"])
        arrays[f"prior_{r}"] = crop_roi(mask, box).astype(np.uint8)
        if case.label is not None:
            arrays[f"label_{r}"] = crop_roi(case.label, box)
    io.save_npz(out_path, **arrays)
    info = {"case_id": case_id, "shape": list(case.image.shape), "bboxes": boxes, "fallback_used": fallback,
            "orientation": case.orientation.axis_codes}
    io.save_json(info, info_path)
    log.info("%s: %d ROI(s) %s", case_id, len(boxes), boxes)
    return info
