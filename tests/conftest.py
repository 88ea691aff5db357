"""Shared fixtures: small KiTS19-layout folders written with the KiTS19 affine."""

from __future__ import annotations

import numpy as np
import pytest

from kitscascade import io


def write_case(data_dir, case_id, image, label=None, spacing=(3.0, 0.78, 0.78)):
    affine = io.kits19_affine(spacing)
    io.save_nifti(np.asarray(image, dtype=np.float32), affine, data_dir / case_id / io.IMAGING_NAME)
    if label is not None:
        io.save_nifti(np.asarray(label, dtype=np.uint8), affine, data_dir / case_id / io.SEGMENTATION_NAME)


@pytest.fixture
def tiny_dataset(tmp_path):
    """Five small cases (one unlabeled) with known foreground intensities."""
    rng = np.random.default_rng(0)
    data_dir = tmp_path / "data"
    for i in range(5):
        image = rng.normal(0, 50, size=(6, 10, 12)).astype(np.float32)
        label = np.zeros((6, 10, 12), np.uint8)
        label[2:4, 3:6, 4:8] = 1
        label[2, 3, 4:6] = 2
        image[label > 0] += 150 + 10 * i
        write_case(data_dir, f"case_{i:05d}", image, None if i == 4 else label, spacing=(3.0 + i, 0.8, 0.8))
    return data_dir
