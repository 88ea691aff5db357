"""The data set checked before any work (in the spirit of nnU-Net's ``--verify_dataset_integrity``).

Every case is read as far as the pipeline will need it, and no further: the
imaging header (shape, affine, spacing, orientation, dtype) and the size its
file should have (a truncated file is found from the gzip trailer; its voxels
are not decompressed, so NaN HU are found only when preprocessing reads
them), the segmentation's header and its voxels once (shape, affine and label
values against the imaging). All problems of all cases are collected; the
step then writes one row per case and fails with one line per bad case, so
a broken case among hundreds is found before hours of training, not when
its own job runs.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from kitscascade import io

log = logging.getLogger(__name__)


def check_case(imaging_path, segmentation_path, case_id: str, labels: dict) -> dict:
    """One row: the case's geometry and label values, and ``problem`` (None, or the one-line error).

    Columns: ``case_id``, ``labeled``, ``shape`` and ``spacing_mm`` (canonical
    order, ``io``), ``orientation`` (the file's axis codes, e.g. ``IPL`` for
    KiTS19, ``RAS``), ``oblique`` (the affine is not along the axes; read as
    the nearest orientation), ``slice_axis_first`` (the coarsest axis is the
    canonical axis 0, as the networks expect), ``imaging_dtype``,
    ``segmentation_dtype``, ``label_values`` (the data's values present).
    """
    row = {"case_id": case_id, "labeled": segmentation_path is not None, "problem": None}
    try:
        io.check_case_id(case_id)
        img = io.open_nifti(imaging_path, case_id, "imaging")
        affine, shape = io.checked_geometry(img, case_id, "imaging")
        io.check_complete(img, case_id, "imaging")
        orientation = io.Orientation.of(affine, shape)
        spacing = io.spacing_from_affine(orientation.canonical_affine(affine))
        directions = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
        row.update(shape="x".join(map(str, orientation.canonical_shape)),
                   spacing_mm="x".join(f"{s:.4g}" for s in spacing), orientation=orientation.axis_codes,
                   oblique=bool(np.abs(directions).max(axis=0).min() < 1 - 1e-3),
                   slice_axis_first=bool(spacing[0] >= max(spacing[1:]) - 1e-6),
                   imaging_dtype=str(img.get_data_dtype()))
        if segmentation_path is not None:
            seg, label = io.load_nifti(segmentation_path, case_id, "segmentation")
            io.check_same_grid(seg.affine, label.shape, affine, shape, case_id, "segmentation")
            values = np.unique(io.integer_labels(label, case_id))
            io.declared_values(values, case_id, labels)
            row.update(segmentation_dtype=str(seg.get_data_dtype()),
                       label_values=" ".join(str(int(v)) for v in values))
    except io.CaseError as error:
        row["problem"] = str(error)
    return row


def check_dataset(cases: dict, labels: dict, out_path) -> pd.DataFrame:
    """The workflow step: :func:`check_case` for ``cases`` (id -> (imaging, segmentation or None)).

    Writes the table to ``out_path`` when every case is usable; otherwise
    raises ``io.CaseError`` whose message has one line per bad case (all of
    them) and writes nothing. Cases whose slice axis is not the coarsest
    after reorientation (a sagittal or coronal acquisition) are logged as
    warnings: they are read, but the networks assume axial slices.
    """
    table = pd.DataFrame([check_case(*files, case_id, labels) for case_id, files in cases.items()])
    bad = table[table["problem"].notna()]
    if len(bad):
        lines = "\n".join(bad["problem"])
        raise io.CaseError(f"{len(bad)} of {len(table)} cases cannot be used:\n{lines}")
    for case_id in table.loc[~table["slice_axis_first"].astype(bool), "case_id"]:
        log.warning("%s: its coarsest axis is not the slice axis after reorientation (not an axial scan?)", case_id)
    for case_id in table.loc[table["oblique"].astype(bool), "case_id"]:
        log.warning("%s: oblique affine, read in the nearest axis orientation", case_id)
    io.save_table(table.drop(columns=["problem"]), out_path)
    log.info("%d cases checked: %s", len(table), dict(table["orientation"].value_counts()))
    return table
