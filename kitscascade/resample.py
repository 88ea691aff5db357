"""Resampling between voxel grids. Axis order (slices, rows, cols), spacing in mm.

All functions keep float32 data in float32 (no full-volume float64 copies) and
work slice by slice when the slice axis keeps its size, which bounds memory
on scans with 1,000+ slices.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def target_shape(shape, spacing, new_spacing) -> tuple[int, ...]:
    """Grid size that covers the same extent at ``new_spacing`` (at least 1 voxel per axis)."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, new_spacing))


def grid_spacing(shape, spacing, new_shape) -> tuple[float, ...]:
    """The spacing a ``new_shape`` grid has when it covers the extent of ``shape`` at ``spacing``."""
    return tuple(float(n * s / m) for n, s, m in zip(shape, spacing, new_shape))


def resample_volume(volume: np.ndarray, new_shape, order: int) -> np.ndarray:
    """Resample a 3-D array onto ``new_shape`` covering the same extent (voxel-corner aligned).

    ``order`` is the spline order (0 nearest, 1 linear, 3 cubic). When the slice
    axis keeps its size the work is done one slice at a time (2-D), which is
    exact for that case and keeps memory at one output volume.
    """
    new_shape = tuple(int(n) for n in new_shape)
    if volume.ndim != 3 or len(new_shape) != 3:
        raise ValueError(f"resample_volume: expected 3-D volume and shape, got {volume.shape} -> {new_shape}")
    if volume.shape == new_shape:
        return volume.copy()
    dtype = volume.dtype if np.issubdtype(volume.dtype, np.floating) else np.float32
    factors = [n / o for n, o in zip(new_shape, volume.shape)]
    if new_shape[0] == volume.shape[0]:
        out = np.empty(new_shape, dtype=dtype)
        for z in range(new_shape[0]):
            ndimage.zoom(
                volume[z].astype(dtype, copy=False), factors[1:], output=out[z],
                order=order, mode="nearest", grid_mode=True,
            )
        return out
    out = np.empty(new_shape, dtype=dtype)
    ndimage.zoom(volume.astype(dtype, copy=False), factors, output=out, order=order, mode="nearest", grid_mode=True)
    return out


def resample_labels(label: np.ndarray, new_shape, n_classes: int | None = None) -> np.ndarray:
    """Resample an integer label map without inventing labels: linear on one-hot, then argmax.

    Each class is interpolated as a float32 indicator in turn (memory: two
    float32 volumes), and a voxel takes the class with the largest value.
    """
    n_classes = int(label.max()) + 1 if n_classes is None else n_classes
    best = np.zeros(tuple(new_shape), dtype=np.float32)
    out = np.zeros(tuple(new_shape), dtype=np.uint8)
    for c in range(n_classes):
        prob = resample_volume((label == c).astype(np.float32), new_shape, order=1)
        better = prob > best
        out[better] = c
        best[better] = prob[better]
    return out


def resample_probabilities(probs: np.ndarray, new_shape) -> np.ndarray:
    """Linear resampling of a (C, Z, Y, X) probability map, channel by channel, float32."""
    return np.stack([resample_volume(p.astype(np.float32, copy=False), new_shape, order=1) for p in probs])
