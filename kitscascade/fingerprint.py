"""Dataset statistics ("fingerprint"): geometry of every case and foreground HU statistics.

The numbers stage-1 and stage-2 normalisation use: the (0.05 %, 99.5 %)
percentiles, mean and std of the foreground (label > 0) intensities over the
training cases. Cases are read one at a time; the mean/std are exact (float64
running sums) and the percentiles come from at most ``samples_per_case``
foreground voxels per case, so memory never holds more than one volume.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from kitscascade import io

log = logging.getLogger(__name__)


def case_geometry(path, case_id: str) -> dict:
    """Shape and spacing (mm) of a case in the canonical orientation, from its imaging header (the data is not read)."""
    img = io.open_nifti(path, case_id, "imaging")
    affine, shape = io.checked_geometry(img, case_id, "imaging")
    orientation = io.Orientation.of(affine, shape)
    spacing = io.spacing_from_affine(orientation.canonical_affine(affine))
    return {"case_id": case_id, "shape": list(orientation.canonical_shape), "spacing": list(spacing)}


def foreground_sample(image: np.ndarray, label: np.ndarray, n_max: int, rng: np.random.Generator):
    """Foreground (label > 0) intensities: all of them, or ``n_max`` drawn without replacement."""
    values = image[label > 0]
    if values.size > n_max:
        values = values[rng.choice(values.size, size=n_max, replace=False)]
    return values


def collect_statistics(
    cases: dict,
    training_ids: list[str],
    percentiles,
    samples_per_case: int,
    seed: int,
    labels: dict = io.KITS19_LABELS,
) -> tuple[dict, pd.DataFrame]:
    """Statistics over a data set: ``cases`` maps case id -> (imaging path, segmentation path or None).

    Geometry is taken for every case; intensity statistics only over
    ``training_ids`` (which must be labeled): exact foreground mean/std and
    the ``percentiles`` (in %) of at most ``samples_per_case`` foreground
    voxels per case, drawn with ``seed``. Returns the JSON-ready summary and
    a per-case table.
    """
    rng = np.random.default_rng(seed)
    rows = {c: case_geometry(imaging, c) for c, (imaging, _) in cases.items()}
    case_ids = list(cases)
    total, total_sq, count = 0.0, 0.0, 0
    samples = []
    for case_id in training_ids:
        imaging, segmentation = cases[case_id]
        if segmentation is None:
            raise io.CaseError(f"{case_id}: training case has no {io.SEGMENTATION_NAME}")
        case = io.read_case(imaging, segmentation, case_id, labels)
        fg = case.image[case.label > 0].astype(np.float64)
        total += float(fg.sum())
        total_sq += float(np.square(fg).sum())
        count += int(fg.size)
        samples.append(foreground_sample(case.image, case.label, samples_per_case, rng))
        rows[case_id].update(
            foreground_voxels=int(fg.size),
            kidney_voxels=int((case.label == io.KIDNEY).sum()),
            tumor_voxels=int((case.label == io.TUMOR).sum()),
            cyst_voxels=int((case.label == io.CYST).sum()),
            foreground_mean_hu=float(fg.mean()) if fg.size else float("nan"),
        )
    if count == 0:
        raise io.CaseError(f"the {len(training_ids)} training cases have no foreground voxels (label > 0)")
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
                **{k: r.get(k) for k in ("foreground_voxels", "kidney_voxels", "tumor_voxels", "cyst_voxels",
                                       "foreground_mean_hu")},
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


def dataset_statistics(cases: dict, splits_path, cfg: dict, labels: dict, json_path, csv_path) -> dict:
    """The workflow step: statistics of ``cases`` (id -> (imaging, segmentation or None)) over the
    training cases of ``splits_path``, with the ``statistics`` and ``labels`` config sections; writes the
    JSON summary and the per-case CSV."""
    training = io.load_json(splits_path)["training"]
    summary, table = collect_statistics(cases, training, cfg["percentiles"], cfg["samples_per_case"], cfg["seed"],
                                        labels)
    io.save_table(table, csv_path)
    io.save_json(summary, json_path)
    fg = summary["foreground"]
    log.info("foreground HU: clip [%.1f, %.1f], mean %.1f, std %.1f", fg["lower"], fg["upper"], fg["mean"], fg["std"])
    return summary
