"""Dataset statistics ("fingerprint"): geometry of every case and foreground HU statistics.

The numbers stage-1 and stage-2 normalisation use: the (0.05 %, 99.5 %)
percentiles, mean and std of the foreground (label > 0) intensities over the
training cases. Cases are read one at a time; the mean/std are exact (float64
running sums) and the percentiles come from at most ``samples_per_case``
foreground voxels per case, so memory never holds more than one volume.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from kitscascade import io


def case_geometry(data_dir, case_id: str) -> dict:
    """Shape and spacing (mm) of a case from its imaging header (the data is not read)."""
    path = Path(data_dir) / case_id / io.IMAGING_NAME
    try:
        img = nib.load(path)
    except Exception as exc:
        raise io.CaseError(f"{case_id}: cannot read imaging {path}: {type(exc).__name__}: {exc}") from None
    if len(img.shape) != 3:
        raise io.CaseError(f"{case_id}: imaging {path} has {len(img.shape)} dimensions, expected 3-D data")
    spacing = io.spacing_from_affine(img.affine)
    return {"case_id": case_id, "shape": [int(n) for n in img.shape], "spacing": list(spacing)}


def foreground_sample(image: np.ndarray, label: np.ndarray, n_max: int, rng: np.random.Generator):
    """Foreground (label > 0) intensities: all of them, or ``n_max`` drawn without replacement."""
    values = image[label > 0]
    if values.size > n_max:
        values = values[rng.choice(values.size, size=n_max, replace=False)]
    return values


def collect_statistics(
    data_dir,
    case_ids: list[str],
    training_ids: list[str],
    percentiles=(0.05, 99.5),
    samples_per_case: int = 10000,
    seed: int = 0,
) -> tuple[dict, pd.DataFrame]:
    """Statistics over a KiTS19-layout folder.

    Geometry is taken for every case in ``case_ids``; intensity statistics
    only over ``training_ids`` (which must be labeled). Returns the JSON-ready
    summary and a per-case table.
    """
    rng = np.random.default_rng(seed)
    rows = {c: case_geometry(data_dir, c) for c in case_ids}
    total, total_sq, count = 0.0, 0.0, 0
    samples = []
    for case_id in training_ids:
        case = io.read_case(data_dir, case_id)
        if case.label is None:
            raise io.CaseError(f"{case_id}: training case has no {io.SEGMENTATION_NAME}")
        fg = case.image[case.label > 0].astype(np.float64)
        total += float(fg.sum())
        total_sq += float(np.square(fg).sum())
        count += int(fg.size)
        samples.append(foreground_sample(case.image, case.label, samples_per_case, rng))
        rows[case_id].update(
            foreground_voxels=int(fg.size),
            kidney_voxels=int((case.label == 1).sum()),
            tumor_voxels=int((case.label == 2).sum()),
            foreground_mean_hu=float(fg.mean()) if fg.size else float("nan"),
        )
    if count == 0:
        raise io.CaseError(f"{data_dir}: the training cases have no foreground voxels (label > 0)")
    pooled = np.concatenate(samples)
    lower, upper = (float(v) for v in np.percentile(pooled, percentiles))
    mean = total / count
    std = float(np.sqrt(max(total_sq / count - mean * mean, 0.0)))
    table = pd.DataFrame(
        [
            {
                "case_id": r["case_id"],
                "training": r["case_id"] in set(training_ids),
                **{f"shape_{a}": n for a, n in zip("zyx", r["shape"])},
                **{f"spacing_{a}_mm": s for a, s in zip("zyx", r["spacing"])},
                **{k: r.get(k) for k in ("foreground_voxels", "kidney_voxels", "tumor_voxels", "foreground_mean_hu")},
            }
            for r in rows.values()
        ]
    )
    summary = {
        "n_cases": len(case_ids),
        "n_training_cases": len(training_ids),
        "median_spacing": np.median([r["spacing"] for r in rows.values()], axis=0).tolist(),
        "median_shape": np.median([r["shape"] for r in rows.values()], axis=0).tolist(),
        "foreground": {
            "percentiles": list(percentiles),
            "lower": lower,
            "upper": upper,
            "mean": float(mean),
            "std": std,
            "n_voxels": count,
            "n_sampled": int(pooled.size),
        },
        "cases": list(rows.values()),
    }
    return summary, table
