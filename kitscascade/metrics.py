"""Segmentation metrics: the official KiTS19 Dice plus surface metrics.

Arrays are 3-D in the package's axis order ``(slices, rows, cols)``; masks are
boolean, label maps uint8 in {0 background, 1 kidney, 2 tumor}. ``spacing`` is
the voxel size in mm in the same axis order. Distances are in mm, volumes in ml.

Conventions (chosen so that per-case rows aggregate with NaN-aware means):

- Dice: NaN when both masks are empty, 0 when exactly one is (the official
  KiTS19 rule).
- Surface of a mask: its voxels with at least one face neighbour (3-D cross,
  6-connectivity, as medpy uses) outside the mask; voxels on the array border
  count as surface.
- HD95: the maximum of the two directed 95th percentiles of surface
  distances (MONAI's ``compute_hausdorff_distance(percentile=95)``; medpy's
  ``hd95`` instead takes the 95th percentile of both directions pooled).
  Percentiles use numpy's default linear interpolation. NaN when either mask
  is empty: ``inf`` would poison means, and the false-positive/negative flags
  of :func:`evaluate_labels` record those cases instead.
- Surface Dice (Nikolov et al. 2021) counts surface voxels, it is not
  weighted by surface area; a voxel counts when its distance is <= the
  tolerance. NaN when both masks are empty, 0 when exactly one is.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from kitscascade import io

if TYPE_CHECKING:  # pandas is imported where a table is built: the preprocessing jobs use dice() only
    import pandas as pd

Spacing = tuple[float, float, float]

_FACE_CONNECTIVITY = ndimage.generate_binary_structure(3, 1)


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice 2|A∩B| / (|A| + |B|) of two boolean masks of equal shape; NaN if both are empty."""
    pred, ref = _mask_pair(pred, ref)
    total = np.count_nonzero(pred) + np.count_nonzero(ref)
    if total == 0:
        return math.nan
    return float(2 * np.count_nonzero(pred & ref) / total)


def surface_distances(
    pred: np.ndarray, ref: np.ndarray, spacing: Spacing
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm: ``(pred -> ref, ref -> pred)``.

    Each array holds, for every surface voxel of the first mask, the Euclidean
    distance in mm to the nearest surface voxel of the other mask (``inf`` for
    all of them when the other mask is empty). An empty mask has no surface
    voxels, so its own array is empty. Both masks are cropped to their joint
    bounding box first, which leaves every distance unchanged.
    """
    pred, ref = _mask_pair(pred, ref)
    spacing = _checked_spacing(spacing)
    box = _bounding_box(pred | ref)
    if box is None:
        return np.empty(0), np.empty(0)
    pred_surface, ref_surface = _surface(pred[box]), _surface(ref[box])
    return (
        _directed_distances(pred_surface, ref_surface, spacing),
        _directed_distances(ref_surface, pred_surface, spacing),
    )


def hausdorff95(pred: np.ndarray, ref: np.ndarray, spacing: Spacing) -> float:
    """95th-percentile Hausdorff distance in mm (max of the two directed 95th percentiles).

    NaN when either mask is empty (see the module docstring).
    """
    return _hausdorff95(*surface_distances(pred, ref, spacing))


def surface_dice(
    pred: np.ndarray, ref: np.ndarray, spacing: Spacing, tolerance_mm: float
) -> float:
    """Normalised surface Dice at ``tolerance_mm``, in [0, 1], counting surface voxels.

    (#pred surface voxels within tolerance of the ref surface + #ref surface
    voxels within tolerance of the pred surface) / (#pred + #ref surface voxels).
    NaN when both masks are empty, 0 when exactly one is.
    """
    return _surface_dice(*surface_distances(pred, ref, spacing), tolerance_mm)


def volume_ml(mask: np.ndarray, spacing: Spacing) -> float:
    """Volume of a boolean mask in ml (1 ml = 1000 mm³)."""
    voxel_mm3 = math.prod(_checked_spacing(spacing))
    return float(np.count_nonzero(mask) * voxel_mm3 / 1000.0)


def evaluate_labels(
    pred_label: np.ndarray,
    ref_label: np.ndarray,
    spacing: Spacing,
    tolerance_mm: float = 2.0,
    masses: bool = False,
) -> dict[str, float | bool]:
    """All per-case metrics for the two official KiTS19 regions, and optionally KiTS21/23's masses.

    Labels are the package's classes (``io``: 1 kidney, 2 tumor, 3 cyst).
    Kidney is ``label > 0`` (kidney, tumor and cyst merged: KiTS19's kidney
    and KiTS21/23's "kidney and masses"), tumor is ``label == 2``; with
    ``masses``, also ``masses``, tumor and cyst (``label`` 2 or 3), the third
    of the KiTS21/23 hierarchical regions.
    ``pred_label`` and ``ref_label`` are 3-D label maps of equal shape in
    ``(slices, rows, cols)``; ``spacing`` is in mm; ``tolerance_mm`` is the
    surface Dice tolerance. Returns Dice, HD95 (mm), surface Dice, volumes
    (ml), ``composite_dice`` (NaN-aware mean of the two Dice scores) and the
    flags ``tumor_false_positive``, ``tumor_false_negative`` and
    ``kidney_false_negative`` (a region predicted where the reference has
    none, or missed entirely).

    Raises ``ValueError`` if the shapes differ or are not 3-D, or if spacing
    is not 3 positive numbers.
    """
    pred_label, ref_label = np.asarray(pred_label), np.asarray(ref_label)
    if pred_label.shape != ref_label.shape or pred_label.ndim != 3:
        raise ValueError(
            "prediction and reference must be 3-D label maps of equal shape, got "
            f"prediction {pred_label.shape} and reference {ref_label.shape}"
        )
    spacing = _checked_spacing(spacing)
    # All foreground lies inside this box, so every metric is unchanged by the crop.
    box = _bounding_box((pred_label > 0) | (ref_label > 0)) or (slice(None),) * 3
    pred_label, ref_label = pred_label[box], ref_label[box]

    result: dict[str, float | bool] = {}
    present: dict[str, tuple[bool, bool]] = {}
    regions = [("kidney", pred_label > 0, ref_label > 0), ("tumor", pred_label == 2, ref_label == 2)]
    if masses:
        regions.append(("masses", np.isin(pred_label, (2, 3)), np.isin(ref_label, (2, 3))))
    for region, pred, ref in regions:
        d_pred, d_ref = surface_distances(pred, ref, spacing)
        result[f"{region}_dice"] = dice(pred, ref)
        result[f"{region}_hd95_mm"] = _hausdorff95(d_pred, d_ref)
        result[f"{region}_surface_dice"] = _surface_dice(d_pred, d_ref, tolerance_mm)
        result[f"{region}_volume_ref_ml"] = volume_ml(ref, spacing)
        result[f"{region}_volume_pred_ml"] = volume_ml(pred, spacing)
        present[region] = (bool(pred.any()), bool(ref.any()))

    dices = [result["kidney_dice"], result["tumor_dice"]]
    finite = [d for d in dices if not math.isnan(d)]
    result["composite_dice"] = sum(finite) / len(finite) if finite else math.nan
    result["tumor_false_positive"] = present["tumor"] == (True, False)
    result["tumor_false_negative"] = present["tumor"] == (False, True)
    result["kidney_false_negative"] = present["kidney"] == (False, True)
    return result


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Per-metric statistics over cases, ignoring NaN.

    One row per numeric or boolean column of ``frame`` (other columns, such as
    case ids, are skipped); booleans count as 0/1, so their mean is the rate of
    True. Columns: ``metric, mean, std, median, min, max, n``, where ``std`` is
    the sample standard deviation (ddof=1, NaN when ``n`` < 2) and ``n`` the
    number of non-NaN values.
    """
    import pandas as pd

    values = frame.select_dtypes(include=["number", "bool"]).astype(float)
    stats = pd.DataFrame(
        {
            "mean": values.mean(),
            "std": values.std(ddof=1),
            "median": values.median(),
            "min": values.min(),
            "max": values.max(),
            "n": values.count(),
        }
    )
    return stats.rename_axis("metric").reset_index()


def score_case(imaging_path, segmentation_path, case_id: str, prediction_path, cfg: dict, labels: dict) -> dict:
    """:func:`evaluate_labels` of a prediction file against a labeled case (both read as classes in the
    canonical orientation); ``cfg`` is the ``evaluation`` section, ``labels`` the data's label values
    (with a cyst label, the masses region is scored too)."""
    case = io.read_case(imaging_path, segmentation_path, case_id, labels)
    pred = io.read_prediction(prediction_path, case, labels)
    masses = labels["cyst"] is not None
    return {"case_id": case_id, **evaluate_labels(pred, case.label, case.spacing, cfg["surface_tolerance_mm"], masses)}


def evaluate_case(imaging_path, segmentation_path, case_id: str, prediction_path, stage1_info_path,
                  rois_info_path, cfg: dict, labels: dict, out_path) -> pd.DataFrame:
    """The workflow step: one CSV row of :func:`score_case` for the cascade's prediction, plus the
    stage-1 localizer's Dice and whether the no-kidney fallback was used."""
    import pandas as pd

    row = score_case(imaging_path, segmentation_path, case_id, prediction_path, cfg, labels)
    row["stage1_dice"] = io.load_json(stage1_info_path)["stage1_dice"]
    row["no_kidney_fallback"] = io.load_json(rois_info_path)["fallback_used"]
    frame = pd.DataFrame([row])
    io.save_table(frame, out_path)
    return frame


def evaluate_stage1_case(imaging_path, segmentation_path, case_id: str, stage1_labels_path, cfg: dict,
                         labels: dict, classes: str, out_path) -> pd.DataFrame:
    """The workflow step: one CSV row of :func:`score_case` for stage 1's own label map (the single-stage
    network). With ``classes: merged`` stage 1 has no tumor class: its tumor and masses columns are left
    out (and the composite is the kidney Dice)."""
    import pandas as pd

    row = score_case(imaging_path, segmentation_path, case_id, stage1_labels_path, cfg, labels)
    if classes == "merged":
        row = {k: v for k, v in row.items() if not k.startswith(("tumor_", "masses_"))}
        row["composite_dice"] = row["kidney_dice"]
    frame = pd.DataFrame([row])
    io.save_table(frame, out_path)
    return frame


def compare_stages(stage1: pd.DataFrame, cascade: pd.DataFrame) -> pd.DataFrame:
    """Stage 1 beside the cascade on the same cases: per Dice column both have, the mean and sample std of
    each, and of their paired per-case difference (``gain``, cascade minus stage 1; NaN-aware)."""
    import pandas as pd

    both = stage1.merge(cascade, on="case_id", suffixes=("_stage1", "_cascade"))
    rows = []
    for metric in ("kidney_dice", "tumor_dice", "masses_dice", "composite_dice"):
        if f"{metric}_stage1" not in both or f"{metric}_cascade" not in both:
            continue
        a, b = both[f"{metric}_stage1"].astype(float), both[f"{metric}_cascade"].astype(float)
        gain = b - a
        rows.append({"metric": metric, "stage1_mean": a.mean(), "stage1_std": a.std(), "cascade_mean": b.mean(),
                     "cascade_std": b.std(), "gain_mean": gain.mean(), "gain_std": gain.std(), "n": int(gain.count())})
    return pd.DataFrame(rows)


def aggregate_evaluation(case_csvs, stage1_csvs, per_case_path, summary_path, stage1_per_case_path,
                         comparison_path) -> pd.DataFrame:
    """The workflow step: the cascade's per-case rows in one table (sorted by case) and their
    :func:`summarize`; stage 1's the same; and :func:`compare_stages` of the two. Returns the comparison."""
    import pandas as pd

    per_case = pd.concat([pd.read_csv(p) for p in case_csvs], ignore_index=True).sort_values("case_id")
    stage1 = pd.concat([pd.read_csv(p) for p in stage1_csvs], ignore_index=True).sort_values("case_id")
    io.save_table(per_case, per_case_path)
    io.save_table(summarize(per_case.drop(columns=["case_id"])), summary_path)
    io.save_table(stage1, stage1_per_case_path)
    comparison = compare_stages(stage1, per_case)
    io.save_table(comparison, comparison_path)
    return comparison


def _mask_pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(
            f"prediction and reference shapes differ: {pred.shape} vs {ref.shape}"
        )
    return pred, ref


def _checked_spacing(spacing: Spacing) -> Spacing:
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be 3 positive numbers in mm, got {spacing!r}")
    return values


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The tightest slices holding all True voxels of ``mask``; None if it has none.

    No margin is needed around the crop: erosion treats voxels outside the
    array as background, which they are, and the distance transform only
    needs the target surface, which lies inside.
    """
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        if hits.size == 0:
            return None
        box.append(slice(hits[0], hits[-1] + 1))
    return tuple(box)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=_FACE_CONNECTIVITY)


def _directed_distances(
    from_surface: np.ndarray, to_surface: np.ndarray, spacing: Spacing
) -> np.ndarray:
    if not to_surface.any():
        return np.full(np.count_nonzero(from_surface), np.inf)
    return ndimage.distance_transform_edt(~to_surface, sampling=spacing)[from_surface]


def _hausdorff95(d_pred: np.ndarray, d_ref: np.ndarray) -> float:
    if d_pred.size == 0 or d_ref.size == 0:
        return math.nan
    return float(max(np.percentile(d_pred, 95), np.percentile(d_ref, 95)))


def _surface_dice(d_pred: np.ndarray, d_ref: np.ndarray, tolerance_mm: float) -> float:
    if not tolerance_mm >= 0:
        raise ValueError(f"tolerance_mm must be >= 0 mm, got {tolerance_mm!r}")
    total = d_pred.size + d_ref.size
    if total == 0:
        return math.nan
    within = np.count_nonzero(d_pred <= tolerance_mm) + np.count_nonzero(d_ref <= tolerance_mm)
    return float(within / total)
