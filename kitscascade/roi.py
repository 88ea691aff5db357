"""Regions of interest around each kidney found by stage 1 (paper section 2.2).

Bounding boxes are ``[[z0, z1], [y0, y1], [x0, x1]]`` half-open voxel ranges in
the ORIGINAL grid of the scan (axis order slices, rows, cols).
"""

from __future__ import annotations

import cc3d
import numpy as np


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
