"""Figures for the report: Dice distributions, training curves, per-case overlays.

Every function writes one PNG atomically. The plotting functions take tables
or arrays; the three at the end are the workflow's steps, which read the
files their rule declared and call them. Axis order of volumes: (slices, rows, cols).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from kitscascade import io  # noqa: E402

DICE_COLUMNS = ["kidney_dice", "tumor_dice", "composite_dice", "stage1_dice"]
CT_WINDOW = (-160.0, 240.0)  # HU, an abdominal soft-tissue window (level 40, width 400)


def save_figure(fig, path) -> None:
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    plt.close(fig)


def plot_dice_distribution(per_case: pd.DataFrame, path) -> None:
    """Box plot with every case as a dot, one box per Dice column present in ``per_case``."""
    columns = [c for c in DICE_COLUMNS if c in per_case and per_case[c].notna().any()]
    fig, ax = plt.subplots(figsize=(1.6 * len(columns) + 2, 4))
    data = [per_case[c].dropna().to_numpy() for c in columns]
    ax.boxplot(data, widths=0.5, showfliers=False)
    jitter = np.random.default_rng(0)
    for i, values in enumerate(data, start=1):
        ax.scatter(i + jitter.uniform(-0.12, 0.12, len(values)), values, s=14, alpha=0.7, zorder=3)
    ax.set_xticks(range(1, len(columns) + 1), [c.replace("_", " ") for c in columns])
    ax.set_ylabel("Dice")
    ax.set_ylim(min(0.0, *(v.min() for v in data if len(v))) - 0.02, 1.02)
    ax.set_title(f"Validation cases (n = {len(per_case)})")
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)


def plot_training_curve(curve: pd.DataFrame, title: str, path, window: int = 20) -> None:
    """Loss per iteration (faint) and its running mean over ``window`` iterations."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(curve["iteration"], curve["loss"], alpha=0.3, lw=0.8, label="loss")
    ax.plot(curve["iteration"], curve["loss"].rolling(window, min_periods=1).mean(), lw=1.8,
            label=f"running mean ({window})")
    ax.set_xlabel("iteration")
    ax.set_ylabel("CE + Dice loss")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def overlay_slices(reference: np.ndarray, n: int = 3) -> list[int]:
    """``n`` slice indices through the tumor (or the kidney when there is no tumor), spread evenly."""
    for mask in (reference == 2, reference > 0):
        z = np.flatnonzero(mask.any(axis=(1, 2)))
        if len(z):
            return sorted({int(z[int(round(q * (len(z) - 1)))]) for q in np.linspace(0.2, 0.8, n)})
    return [reference.shape[0] // 2]


def plot_case_overlay(image: np.ndarray, reference: np.ndarray, prediction: np.ndarray, spacing, title: str, path):
    """A few axial slices in a CT window with reference (solid) and prediction (dashed) contours.

    Slice numbers are those of the canonical orientation (``io``: head to
    feet), not necessarily the file's for a scan stored otherwise.

    Kidney (label > 0) in green, tumor (label 2) in red; pixels drawn with the
    in-plane aspect ratio of ``spacing`` (mm).
    """
    slices = overlay_slices(reference)
    fig, axes = plt.subplots(1, len(slices), figsize=(4 * len(slices), 4.2), squeeze=False)
    for ax, z in zip(axes[0], slices):
        ax.imshow(image[z], cmap="gray", vmin=CT_WINDOW[0], vmax=CT_WINDOW[1], aspect=spacing[1] / spacing[2])
        for mask, color in ((reference[z] > 0, "lime"), (reference[z] == 2, "red")):
            if mask.any():
                ax.contour(mask, levels=[0.5], colors=color, linewidths=1.2)
        for mask, color in ((prediction[z] > 0, "lime"), (prediction[z] == 2, "red")):
            if mask.any():
                ax.contour(mask, levels=[0.5], colors=color, linewidths=1.2, linestyles="dashed")
        ax.set_title(f"slice {z}")
        ax.axis("off")
    fig.suptitle(f"{title} - reference solid, prediction dashed; kidney green, tumor red")
    save_figure(fig, path)


# --------------------------------------------------------------------------
# the workflow's plot steps: files in, one PNG out
# --------------------------------------------------------------------------


def plot_evaluation(per_case_path, out_path) -> None:
    plot_dice_distribution(pd.read_csv(per_case_path), out_path)


def plot_training_curve_from_csv(curve_path, title: str, out_path) -> None:
    plot_training_curve(pd.read_csv(curve_path), title, out_path)


def plot_case(imaging_path, segmentation_path, case_id: str, prediction_path, labels: dict, out_path) -> None:
    case = io.read_case(imaging_path, segmentation_path, case_id, labels)
    prediction = io.read_prediction(prediction_path, case, labels)
    plot_case_overlay(case.image, case.label, prediction, case.spacing, case_id, out_path)
