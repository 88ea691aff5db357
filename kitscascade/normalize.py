"""CT intensity normalisation: percentile clip, then z-score (paper section 2.3).

Both functions make exactly one float32 copy of the image and work in place on it (``zscore_within``
with a ``reference`` makes one more, of the reference).
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


def zscore_within(image: np.ndarray, lower: float, upper: float, reference: np.ndarray | None = None) -> np.ndarray:
    """Clip to ``[lower, upper]`` HU, then z-score with this array's own mean/std (the ROI's, in stage 2), or
    with those of ``reference`` clipped the same way (a grown ROI normalised as the box it grew from)."""
    out = image.astype(np.float32, copy=True)
    np.clip(out, lower, upper, out=out)
    if reference is None:
        _centre(out)
        std = _centred_std(out)
    else:
        centred = reference.astype(np.float32, copy=True)
        np.clip(centred, lower, upper, out=centred)
        out -= _centre(centred)
        std = _centred_std(centred)
    out /= np.float32(max(std, 1e-6))
    return out


def _centre(out: np.ndarray) -> np.float32:
    """Subtract ``out``'s mean (float64 sum) in place; returns the mean."""
    mean = np.float32(out.mean(dtype=np.float64))
    out -= mean
    return mean


def _centred_std(centred: np.ndarray) -> float:
    """Population std of an array whose mean was subtracted: a float64 sum of squares of its float32 values,
    cast chunk by chunk (``ndarray.std`` would make float64 copies)."""
    flat = centred.ravel(order="K")
    return float(np.sqrt(np.einsum("i,i->", flat, flat, dtype=np.float64) / max(centred.size, 1)))
