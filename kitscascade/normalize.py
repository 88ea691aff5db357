"""CT intensity normalisation: percentile clip, then z-score (paper section 2.3).

Both functions make exactly one float32 copy of the image and work in place on it.
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
