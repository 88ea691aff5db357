"""Shared fixtures: small KiTS19-layout folders written with the KiTS19 affine, and a small exported model."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

from kitscascade import io, model
from kitscascade.config import defaults
from kitscascade.networks import build_network


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


@pytest.fixture
def exported(tmp_path):
    """A model.zip of two folds per stage with small untrained networks."""
    cfg = defaults()
    paths = {"stage1": [], "stage2": []}
    for stage, in_channels, classes in (("stage1", 1, 3), ("stage2", 2, 3)):
        for fold in range(2):
            network = {"kind": "unet", "in_channels": in_channels, "num_classes": classes, "patch_size": [8, 16, 16],
                       "base_features": 2, "max_features": 4}
            path = tmp_path / "models" / f"{stage}_{fold}.pt"
            path.parent.mkdir(exist_ok=True)
            torch.save({"model_state": build_network(**network).state_dict(), "network": network}, path)
            paths[stage].append(path)
    io.save_json({"median_spacing": [3.0, 1.0, 1.0]}, tmp_path / "statistics.json")
    io.save_json({"experiment": "demo"}, tmp_path / "provenance.json")
    model.export_model(paths["stage1"], paths["stage2"], tmp_path / "statistics.json", tmp_path / "provenance.json",
                       cfg, tmp_path / "model.zip")
    return tmp_path / "model.zip"


def rewrite(zip_path, out_path, change):
    """A copy of the archive with ``change(name, data) -> data or None`` applied to each member."""
    with zipfile.ZipFile(zip_path) as source, zipfile.ZipFile(out_path, "w") as target:
        for name in source.namelist():
            data = change(name, source.read(name))
            if data is not None:
                target.writestr(name, data)
    return out_path
