"""CT intensity normalisation: percentile clip, then z-score (paper section 2.3).

Each function makes exactly one float32 copy of the image and works in place on it (``zscore_as`` one of
its reference as well).
"""

from __future__ import annotations

import numpy as np


def clip_and_zscore(image: np.ndarray, lower: float, upper: float, mean: float, std: float) -> np.ndarray:
    """``(clip(image, lower, upper) - mean) / std`` in float32 (HU in, unitless out)."""
    if not upper > lower:
        raise ValueError(f"clip_and_zscore: upper={upper} must be greater than lower={lower}")
    if not std > 0:
        raise ValueError(f"clip_and_zscore: std={std} must be positive")
    out = image.astype(np.float32, copy=True)
    np.clip(out, lower, upper, out=out)
    out -= np.float32(mean)
    out /= np.float32(std)
    return out


def zscore_within(image: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """Clip to ``[lower, upper]`` HU, then z-score with this array's own mean/std (the ROI's, in stage 2)."""
    out = image.astype(np.float32, copy=True)
    np.clip(out, lower, upper, out=out)
    out -= np.float32(out.mean(dtype=np.float64))
    # float64 sum of squares of the centred values, cast chunk by chunk (ndarray.std would make float64 copies)
    flat = out.ravel(order="K")
    std = np.sqrt(np.einsum("i,i->", flat, flat, dtype=np.float64) / max(out.size, 1))
    out /= np.float32(max(std, 1e-6))
    return out


def zscore_as(image: np.ndarray, lower: float, upper: float, reference: np.ndarray) -> np.ndarray:
    """:func:`zscore_within` of ``image`` with the mean and std of ``reference`` instead of its own
    (``reference`` clipped the same way): a grown ROI normalised as the first, cropped box, so that box's
    voxels come out as :func:`zscore_within` gave them. Makes one float32 copy of each array."""
    centred = reference.astype(np.float32, copy=True)
    np.clip(centred, lower, upper, out=centred)
    mean = np.float32(centred.mean(dtype=np.float64))
    centred -= mean
    flat = centred.ravel(order="K")
    std = np.sqrt(np.einsum("i,i->", flat, flat, dtype=np.float64) / max(centred.size, 1))
    out = image.astype(np.float32, copy=True)
    np.clip(out, lower, upper, out=out)
    out -= mean
    out /= np.float32(max(std, 1e-6))
    return out
