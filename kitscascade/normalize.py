"""CT intensity normalisation: percentile clip, then z-score (paper section 2.3)."""

from __future__ import annotations

import numpy as np


def clip_and_zscore(image: np.ndarray, lower: float, upper: float, mean: float, std: float) -> np.ndarray:
    """``(clip(image, lower, upper) - mean) / std`` in float32 (HU in, unitless out)."""
    if not upper > lower:
        raise ValueError(f"clip_and_zscore: upper={upper} must be greater than lower={lower}")
    if not std > 0:
        raise ValueError(f"clip_and_zscore: std={std} must be positive")
    out = np.clip(image.astype(np.float32, copy=True), lower, upper)
    out -= np.float32(mean)
    out /= np.float32(std)
    return out


def zscore_within(image: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """Clip to ``[lower, upper]`` HU, then z-score with this array's own mean/std (the ROI's, in stage 2)."""
    clipped = np.clip(image.astype(np.float32, copy=True), lower, upper)
    mean = float(clipped.mean(dtype=np.float64))
    std = float(clipped.std(dtype=np.float64))
    clipped -= np.float32(mean)
    clipped /= np.float32(max(std, 1e-6))
    return clipped
