"""Exported models: the archive, its checks, finding scans, and the command's errors."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from kitscascade import io, model
from kitscascade.config import defaults
from kitscascade.predict import find_scans
from tests.conftest import rewrite, write_case

BIN = Path(sys.executable).parent


def test_the_archive_holds_what_prediction_needs_and_loads_weights_only(exported, tmp_path):
    names = set(zipfile.ZipFile(exported).namelist())
    assert names == {"model.json", "statistics.json", "provenance.json", "stage1/fold_0.pt", "stage1/fold_1.pt",
                     "stage2/fold_0.pt", "stage2/fold_1.pt"}
    opened = model.open_model(exported, tmp_path / "x")
    assert opened.folds == [0, 1] and opened.labels == {"kidney": 1, "tumor": 2, "cyst": None}
    assert opened.manifest["format_version"] == model.FORMAT_VERSION
    for path in opened.checkpoints("stage2"):
        assert "model_state" in torch.load(path, weights_only=True)
    cfg = opened.stage_config("stage2", {"device": "cpu"}, mirror=False)
    assert cfg["training"]["device"] == "cpu" and cfg["inference"]["mirror_axes"] == []
    assert opened.stage_config("stage2")["inference"]["mirror_axes"] == defaults()["stage2"]["inference"]["mirror_axes"]
    assert model.open_model(exported, tmp_path / "y", folds=[1]).checkpoints("stage1") == [tmp_path / "y" / "stage1" / "fold_1.pt"]


def newer(name, data):
    return json.dumps({**json.loads(data), "format_version": model.FORMAT_VERSION + 1}) if name == "model.json" else data


BAD = {
    "truncated": (lambda z, d: (d / "bad.zip").write_bytes(z.read_bytes()[: z.stat().st_size // 2]) and d / "bad.zip",
                  "not a kitscascade model, or a truncated one"),
    "not a zip": (lambda z, d: (d / "bad.zip").write_text("model") and d / "bad.zip", "not a readable model archive (BadZipFile"),
    "newer": (lambda z, d: rewrite(z, d / "bad.zip", newer), f"model format version {model.FORMAT_VERSION + 1} is newer than this kitscascade"),
    "missing fold": (lambda z, d: rewrite(z, d / "bad.zip", lambda n, data: None if n == "stage2/fold_1.pt" else data),
                     "fold file(s) ['stage2/fold_1.pt'] missing (the archive has folds [0, 1])"),
}


@pytest.mark.parametrize("kind", BAD)
def test_a_bad_archive_is_one_line_naming_the_file(exported, tmp_path, kind):
    make, message = BAD[kind]
    bad = make(exported, tmp_path)
    with pytest.raises(model.ModelError) as error:
        model.open_model(bad, tmp_path / "x")
    assert str(error.value).startswith(f"{bad}: ") and message in str(error.value) and "\n" not in str(error.value)
    scan = tmp_path / "scan.nii.gz"
    io.save_nifti(np.zeros((4, 8, 8), np.float32), io.kits19_affine((3.0, 1.0, 1.0)), scan)
    result = subprocess.run([str(BIN / "kitscascade-predict"), "-m", str(bad), "-i", str(scan), "-o", str(tmp_path / "out")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [f"kitscascade-predict: {error.value}"]
    assert not (tmp_path / "out").exists()


def test_a_fold_that_is_not_there(exported, tmp_path):
    with pytest.raises(model.ModelError, match=r"fold file\(s\) \['stage1/fold_5.pt', 'stage2/fold_5.pt'\] missing"):
        model.open_model(exported, tmp_path / "x", folds=[5])


def test_scans_are_found_as_files_folders_or_case_folders(tmp_path):
    image = np.zeros((4, 8, 8), np.float32)
    write_case(tmp_path / "kits", "case_00210", image)
    write_case(tmp_path / "kits", "patient_1", image)
    assert find_scans(tmp_path / "kits") == {"case_00210": tmp_path / "kits" / "case_00210" / io.IMAGING_NAME,
                                              "patient_1": tmp_path / "kits" / "patient_1" / io.IMAGING_NAME}
    for name in ("a.nii.gz", "b.nii", "._a.nii.gz"):
        io.save_nifti(image, io.kits19_affine((3.0, 1.0, 1.0)), tmp_path / "flat" / name)
    assert find_scans(tmp_path / "flat") == {"a": tmp_path / "flat" / "a.nii.gz", "b": tmp_path / "flat" / "b.nii"}
    assert find_scans(tmp_path / "flat" / "a.nii.gz") == {"a": tmp_path / "flat" / "a.nii.gz"}
    (tmp_path / "empty").mkdir()
    with pytest.raises(io.CaseError, match="no .nii.gz or .nii files"):
        find_scans(tmp_path / "empty")


def test_a_version1_model_predicts_as_it_did(exported, tmp_path):
    """An archive of format 1 (before the body windows, CPU precision and fold keys) reads as version 2 with
    the settings it predicted with: every stage-1 window, float32 on the CPU, every fold."""
    def older(name, data):
        if name != "model.json":
            return data
        manifest = json.loads(data)
        del manifest["config"]["stage1"]["body_threshold_hu"], manifest["config"]["stage1"]["component_min_peak"]
        del manifest["config"]["stage2"]["roi_growth_steps"]
        for stage in model.STAGES:
            del manifest["config"][stage]["inference"]["folds"], manifest["config"][stage]["inference"]["cpu_precision"]
        return json.dumps({**manifest, "format_version": 1})

    for opened in (model.open_model(rewrite(exported, tmp_path / "old.zip", older), tmp_path / "x"),
                   model.read_model(tmp_path / "x")):
        assert opened.manifest["format_version"] == model.FORMAT_VERSION == 5
        assert opened.stage_config("stage1")["body_threshold_hu"] is None
        assert opened.stage_config("stage1")["component_min_peak"] is None
        for stage in model.STAGES:
            inference = opened.stage_config(stage)["inference"]
            assert inference["cpu_precision"] == "fp32" and inference["folds"] is None
            assert set(inference) == set(defaults()[stage]["inference"])
        assert set(opened.stage_config("stage1")) == set(defaults()["stage1"])
        assert opened.stage_config("stage2")["roi_growth_steps"] == 0


def test_a_version2_model_is_class_based(exported, tmp_path):
    """Archives of format 2 have no stage2.target: they were trained on classes and predict so."""
    def older(name, data):
        if name != "model.json":
            return data
        manifest = json.loads(data)
        del manifest["config"]["stage2"]["target"], manifest["config"]["stage1"]["component_min_peak"]
        del manifest["config"]["stage2"]["roi_growth_steps"]
        return json.dumps({**manifest, "format_version": 2})

    opened = model.open_model(rewrite(exported, tmp_path / "old.zip", older), tmp_path / "x")
    assert opened.stage_config("stage2")["target"] == "classes"
    assert opened.stage_config("stage1")["component_min_peak"] is None
    assert opened.stage_config("stage1")["body_threshold_hu"] == defaults()["stage1"]["body_threshold_hu"]
    assert set(opened.stage_config("stage2")) == set(defaults()["stage2"])


def test_a_version3_model_keeps_its_components_as_it_did(exported, tmp_path):
    """Archives of format 3 have no stage1.component_min_peak: they kept the keep_components largest
    components and still do; their stage2.target stays what it was (regions here, not version 2's classes)."""
    def older(name, data):
        if name != "model.json":
            return data
        manifest = json.loads(data)
        del manifest["config"]["stage1"]["component_min_peak"], manifest["config"]["stage2"]["roi_growth_steps"]
        manifest["config"]["stage2"]["target"] = "regions"
        return json.dumps({**manifest, "format_version": 3})

    opened = model.open_model(rewrite(exported, tmp_path / "old.zip", older), tmp_path / "x")
    assert opened.stage_config("stage1")["component_min_peak"] is None
    assert opened.stage_config("stage2")["target"] == "regions"
    assert opened.stage_config("stage2")["roi_growth_steps"] == 0
    assert set(opened.stage_config("stage1")) == set(defaults()["stage1"])


def test_a_version4_model_predicts_in_its_rois_as_cropped(exported, tmp_path):
    """Archives of format 4 have no stage2.roi_growth_steps: their ROIs never grew, and still do not; their
    stage-1 component_min_peak stays what it was (not version 3's null)."""
    def older(name, data):
        if name != "model.json":
            return data
        manifest = json.loads(data)
        del manifest["config"]["stage2"]["roi_growth_steps"]
        manifest["config"]["stage1"]["component_min_peak"] = 0.99
        return json.dumps({**manifest, "format_version": 4})

    opened = model.open_model(rewrite(exported, tmp_path / "old.zip", older), tmp_path / "x")
    assert opened.stage_config("stage2")["roi_growth_steps"] == 0
    assert opened.stage_config("stage1")["component_min_peak"] == 0.99
    assert set(opened.stage_config("stage2")) == set(defaults()["stage2"])


@pytest.mark.parametrize(("config_folds", "given", "expected"), [((None, None), None, ([0, 1], [0, 1])),
                                                                 ((1, None), None, ([0], [0, 1])),
                                                                 ((1, 1), [1], ([1], [1]))])
def test_predict_case_ensembles_the_configured_folds(exported, tmp_path, monkeypatch, config_folds, given, expected):
    """Each stage ensembles its ``inference.folds`` first folds, as the workflow does; ``folds`` (the command's
    ``--folds``) overrides both."""
    from kitscascade import predict, roi, stage1, stage2

    opened = model.open_model(exported, tmp_path / "x")
    for stage, n in zip(("stage1", "stage2"), config_folds):
        opened.manifest["config"][stage]["inference"]["folds"] = n
    used = {}
    monkeypatch.setattr(stage1, "preprocess", lambda *a: None)
    monkeypatch.setattr(roi, "crop_rois", lambda *a: None)
    monkeypatch.setattr(stage1, "predict", lambda npz, models, *a: used.setdefault("stage1", models))
    monkeypatch.setattr(stage2, "predict", lambda rois, info, models, *a: used.setdefault("stage2", models))
    predict.predict_case(opened, tmp_path / "scan.nii.gz", tmp_path / "out.nii.gz", folds=given)
    assert used == {stage: opened.checkpoints(stage, folds) for stage, folds in zip(("stage1", "stage2"), expected)}


@pytest.mark.parametrize(("given", "expected"), [(None, 3), (0, 0), (2, 2)])
def test_predict_case_overrides_the_models_roi_growth_steps(exported, tmp_path, monkeypatch, given, expected):
    """``roi_growth_steps`` (the command's ``--roi-growth-steps``) replaces the model's stage-2 value; ``None``
    keeps it."""
    from kitscascade import predict, roi, stage1, stage2

    opened = model.open_model(exported, tmp_path / "x")
    opened.manifest["config"]["stage2"]["roi_growth_steps"] = 3
    used = {}
    monkeypatch.setattr(stage1, "preprocess", lambda *a: None)
    monkeypatch.setattr(stage1, "predict", lambda *a: None)
    monkeypatch.setattr(roi, "crop_rois", lambda *a: None)
    monkeypatch.setattr(stage2, "predict", lambda rois, info, models, scan, cfg, *a: used.setdefault("cfg", cfg))
    predict.predict_case(opened, tmp_path / "scan.nii.gz", tmp_path / "out.nii.gz", roi_growth_steps=given)
    assert used["cfg"]["roi_growth_steps"] == expected
    assert opened.manifest["config"]["stage2"]["roi_growth_steps"] == 3  # the opened model is not changed
    for bad in (-1, 1.5, "2", True):
        with pytest.raises(ValueError, match=r"^roi_growth_steps: expected an integer >= 0, got "):
            predict.predict_case(opened, tmp_path / "scan.nii.gz", tmp_path / "out.nii.gz", roi_growth_steps=bad)
        with pytest.raises(ValueError, match=r"^roi_growth_steps: expected an integer >= 0, got "):
            predict.predict_scans(opened, {"scan": tmp_path / "missing.nii.gz"}, tmp_path / "out", roi_growth_steps=bad)


def test_the_command_passes_roi_growth_steps_and_refuses_a_negative_one(exported, tmp_path, monkeypatch, capsys):
    from kitscascade import predict

    scan = tmp_path / "scan.nii.gz"
    io.save_nifti(np.zeros((4, 8, 8), np.float32), io.kits19_affine((3.0, 1.0, 1.0)), scan)
    given = {}
    monkeypatch.setattr(predict, "predict_scans", lambda *a, **kw: given.update(kw) or [])
    base = ["-m", str(exported), "-i", str(scan), "-o", str(tmp_path / "out"), "--device", "cpu"]
    assert predict.main(base) == 0 and given["roi_growth_steps"] is None
    assert predict.main([*base, "--roi-growth-steps", "0"]) == 0 and given["roi_growth_steps"] == 0
    for bad in ("-1", "two"):
        with pytest.raises(SystemExit) as stop:
            predict.main([*base, "--roi-growth-steps", bad])
        assert stop.value.code == 2
        assert f"--roi-growth-steps: expected an integer >= 0, got '{bad}'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
