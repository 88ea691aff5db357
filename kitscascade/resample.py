"""Resampling between voxel grids. Axis order (slices, rows, cols), spacing in mm.

Spline resampling on a regular grid is separable: ``scipy.ndimage.zoom`` of a
volume equals one 1-D zoom per axis. A 1-D zoom is a fixed linear map, so it is
built once as a sparse ``(n_out, n_in)`` matrix, from scipy's own zoom of unit
impulses (hence exactly scipy's conventions: ``grid_mode=True``,
``mode="nearest"``, order-3 prefilter included), and applied as a sparse
matrix product. That is several times faster than ``ndimage.zoom`` for order
3, on one thread, and needs no float64 copy of the volume: the work is done in
float32 (float64 input stays float64) on blocks of about 4 MB, so memory is
the input, the output and a few blocks, whatever the number of slices.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage, sparse

_BLOCK_VOXELS = 1 << 20  # voxels per block of work (4 MB in float32)
_MIN_WEIGHT = 1e-7  # order-3 weights decay geometrically; smaller ones are below float32 precision


def target_shape(shape, spacing, new_spacing) -> tuple[int, ...]:
    """Grid size that covers the same extent at ``new_spacing`` (at least 1 voxel per axis)."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, new_spacing))


def grid_spacing(shape, spacing, new_shape) -> tuple[float, ...]:
    """The spacing a ``new_shape`` grid has when it covers the extent of ``shape`` at ``spacing``."""
    return tuple(float(n * s / m) for n, s, m in zip(shape, spacing, new_shape))


@lru_cache(maxsize=64)
def _axis_operator(n_in: int, n_out: int, order: int, dtype: str) -> sparse.csr_array:
    """The ``(n_out, n_in)`` sparse matrix of a 1-D ``ndimage.zoom`` from ``n_in`` to ``n_out`` samples.

    Column ``i`` is the zoom of the unit impulse at ``i``, so ``A @ x`` is the
    zoom of ``x``; weights below 1e-7 are dropped (order 3 keeps about 24 a row).
    """
    dense = ndimage.zoom(np.eye(n_in), (n_out / n_in, 1.0), order=order, mode="nearest", grid_mode=True)
    dense[np.abs(dense) < _MIN_WEIGHT] = 0.0
    return sparse.csr_array(dense.astype(dtype))


def _resample_planes(volume: np.ndarray, out: np.ndarray, order: int) -> None:
    """Axes 1 and 2 of C-ordered ``volume`` resampled into ``out`` (same axis-0 size), plane by plane.

    An axis-1 operator multiplies the contiguous plane directly; axis 2 needs
    the plane transposed (a cache-sized copy).
    """
    (_, rows, cols), (_, new_rows, new_cols) = volume.shape, out.shape
    op_rows = _axis_operator(rows, new_rows, order, out.dtype.name) if rows != new_rows else None
    op_cols = _axis_operator(cols, new_cols, order, out.dtype.name) if cols != new_cols else None
    for i in range(volume.shape[0]):
        plane = volume[i].astype(out.dtype, copy=False)
        if op_rows is not None:
            plane = op_rows @ plane
        if op_cols is not None:
            plane = (op_cols @ plane.T).T
        out[i] = plane


def _resample_c_order(volume: np.ndarray, out: np.ndarray, order: int) -> None:
    """Resample C-contiguous ``volume`` into ``out`` (any memory order).

    Axis 0 first, a block of output planes at a time, each from the band of
    input planes its weights cover (a contiguous slab, so no copy for float
    input); then the planes of the block.
    """
    if out.shape[0] == volume.shape[0]:
        _resample_planes(volume, out, order)
        return
    op = _axis_operator(volume.shape[0], out.shape[0], order, out.dtype.name)
    plane = volume.shape[1] * volume.shape[2]
    step = max(1, min(_BLOCK_VOXELS // plane, _BLOCK_VOXELS * out.shape[0] // volume.size))  # block and slab
    for start in range(0, out.shape[0], step):
        rows = op[start : start + step]
        lo, hi = int(rows.indices.min()), int(rows.indices.max()) + 1
        slab = volume[lo:hi].reshape(hi - lo, -1).astype(out.dtype, copy=False)
        block = (rows[:, lo:hi] @ slab).reshape(-1, *volume.shape[1:])
        _resample_planes(block, out[start : start + step], order)


def resample_volume(volume: np.ndarray, new_shape, order: int) -> np.ndarray:
    """Resample a 3-D array onto ``new_shape`` covering the same extent (voxel-corner aligned).

    ``order`` is the spline order (0 nearest, 1 linear, 3 cubic); the result
    equals ``ndimage.zoom(volume, factors, order=order, mode="nearest",
    grid_mode=True)`` up to float32 rounding. Floating input keeps its dtype,
    anything else (uint8, bool) gives float32; the result is C-contiguous.
    Fortran-ordered input (what nibabel gives for NIfTI files) is resampled as
    its C-ordered transpose, so every pass reads contiguous memory.
    """
    new_shape = tuple(int(n) for n in new_shape)
    if volume.ndim != 3 or len(new_shape) != 3:
        raise ValueError(f"resample_volume: expected 3-D volume and shape, got {volume.shape} -> {new_shape}")
    if volume.shape == new_shape:
        return np.array(volume, order="C")
    dtype = volume.dtype if np.issubdtype(volume.dtype, np.floating) else np.dtype(np.float32)
    out = np.empty(new_shape, dtype=dtype)
    if volume.flags.f_contiguous and not volume.flags.c_contiguous:
        _resample_c_order(volume.T, out.T, order)
    else:
        _resample_c_order(np.ascontiguousarray(volume), out, order)
    return out


def resample_labels(label: np.ndarray, new_shape, n_classes: int | None = None) -> np.ndarray:
    """Resample an integer label map without inventing labels: linear on one-hot, then argmax.

    Each class is interpolated as an indicator in turn (memory: one boolean
    input-size mask and two float32 output-size volumes), and a voxel takes
    the class with the largest value (the lowest class on ties). The result
    is C-contiguous; Fortran-ordered input is worked on as its transpose.
    """
    if label.flags.f_contiguous and not label.flags.c_contiguous:
        return np.ascontiguousarray(resample_labels(label.T, tuple(new_shape)[::-1], n_classes).T)
    n_classes = int(label.max()) + 1 if n_classes is None else n_classes
    mask = np.empty_like(label, dtype=bool)
    return _argmax_of_resampled((np.equal(label, c, out=mask) for c in range(n_classes)), new_shape)


def _argmax_of_resampled(channels, new_shape) -> np.ndarray:
    best = np.zeros(tuple(new_shape), dtype=np.float32)
    out = np.zeros(tuple(new_shape), dtype=np.uint8)
    for c, channel in enumerate(channels):
        prob = resample_volume(channel, new_shape, order=1)
        np.copyto(out, np.uint8(c), where=prob > best)
        np.maximum(best, prob, out=best)
        del prob  # before the next class's is made
    return out


def resample_probabilities(probs: np.ndarray, new_shape) -> np.ndarray:
    """Linear resampling of a (C, Z, Y, X) probability map, channel by channel, float32."""
    return np.stack([resample_volume(p.astype(np.float32, copy=False), new_shape, order=1) for p in probs])
