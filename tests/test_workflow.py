"""Workflow tests: Snakemake itself (lint, format, dry runs) and a tiny end-to-end run on phantoms."""

from __future__ import annotations

import io as io_module
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from nibabel import orientations

from kitscascade import config, experiments, io, metrics, phantoms

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
WORKFLOW_PARTS = ["Snakefile", "rules", "workflow_scripts", "config", "envs", "profiles", "report", "kitscascade"]

pytestmark = pytest.mark.workflow


def snakemake(*args, cwd=ROOT, check=True):
    result = subprocess.run(
        [str(BIN / "snakemake"), *args], cwd=cwd, capture_output=True, text=True, timeout=1200
    )
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def copy_workflow(dest: Path) -> Path:
    """A copy of the workflow (not of results/), so test runs never touch the checkout's outputs."""
    dest.mkdir(parents=True, exist_ok=True)
    for part in WORKFLOW_PARTS:
        src = ROOT / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy(src, dest / part)
    shutil.copy(TINY, dest / "tiny.yaml")
    return dest


def test_lint():
    result = snakemake("--lint")
    assert "Congratulations" in result.stdout + result.stderr


def test_snakefmt_clean():
    result = subprocess.run([str(BIN / "snakefmt"), "--check", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_dry_run_plans_the_whole_cascade(tmp_path):
    wf = copy_workflow(tmp_path / "wf")
    out = snakemake("-n", "--quiet", "rules", cwd=wf).stdout
    for rule in ["make_phantoms", "dataset_statistics", "preprocess_stage1", "train_stage1", "predict_stage1",
                 "crop_rois", "train_stage2", "predict_stage2", "evaluate_case", "aggregate_evaluation"]:
        assert rule in out


def test_a_folds_out_of_fold_predictions_get_the_time_limit_of_its_cases(tmp_path):
    """predict_stage1_fold_<k> predicts the training cases fold k held out, in one job: network_runtime per case,
    at most train_runtime."""
    wf = copy_workflow(tmp_path / "wf")
    plan = experiments.plan_workflow(config.load_config(config.DEFAULT_CONFIG, TINY))
    for per_case, cap in ((7, 100), (7, 9)):
        extra = write_override(wf, "runtime.yaml", f"resources:\n  network_runtime: {per_case}\n  train_runtime: {cap}\n")
        out = snakemake("-n", "--configfile", "tiny.yaml", extra, cwd=wf).stdout
        for k in plan.folds:
            block = out.split(f"\nrule predict_stage1_fold_{k}:\n")[1].split("\nrule ")[0]
            n = len(plan.splits["folds"][k]["val"])
            assert f"runtime={min(per_case * n, cap)}," in block and n >= 2, (k, block)


def test_train_on_all_trains_each_stage2_fold_on_every_training_case(tmp_path):
    """stage2.training.train_on: fold gives train_stage2's fold k the cases fold k does not hold out; all gives
    every fold every training case (the ROIs of the same stage 1), as planned."""
    import re

    wf = copy_workflow(tmp_path / "wf")
    plan = experiments.plan_workflow(config.load_config(config.DEFAULT_CONFIG, TINY))
    for train_on in ("fold", "all"):
        extra = write_override(wf, "train_on.yaml", f"stage2:\n  training:\n    train_on: {train_on}\n")
        out = snakemake("-n", "--configfile", "tiny.yaml", extra, cwd=wf).stdout
        blocks = [b.split("\nrule ")[0] for b in out.split("\nrule train_stage2:\n")[1:]]
        assert len(blocks) == len(plan.folds)
        for block in blocks:
            k = int(re.search(r"wildcards: experiment=\S+, fold=(\d+)", block).group(1))
            inputs = next(line for line in block.splitlines() if line.strip().startswith("input:"))
            expected = plan.splits["training"] if train_on == "all" else plan.training_cases(k)
            assert re.findall(r"rois-[^/]+/(case_\d{5})\.npz", inputs) == expected, (train_on, k)


def test_bad_config_value_names_the_key(tmp_path):
    wf = copy_workflow(tmp_path / "wf")
    result = snakemake("-n", "--config", "experiment=bad name", cwd=wf, check=False)
    assert result.returncode != 0 and "experiment" in result.stdout + result.stderr


def test_missing_data_dir_is_a_clear_error(tmp_path):
    wf = copy_workflow(tmp_path / "wf")
    result = snakemake("-n", "--config", f"data_dir={tmp_path / 'nope'}", cwd=wf, check=False)
    assert result.returncode != 0 and "data_dir is not a folder" in result.stdout + result.stderr


def shared(workflow: Path, kind: str) -> Path:
    """The one shared artifact folder of ``kind`` (data, pre, stage1, rois) of a finished run."""
    (folder,) = (workflow / "results" / "shared").glob(f"{kind}-*")
    return folder


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The whole cascade on seven tiny phantoms (one unlabeled), a few iterations per model."""
    wf = copy_workflow(tmp_path_factory.mktemp("tiny") / "wf")
    snakemake("--cores", "2", "--configfile", "tiny.yaml", cwd=wf)
    return wf


def test_tiny_run_outputs(tiny_run):
    res = tiny_run / "results" / "tiny"
    split = io.load_json(shared(tiny_run, "data") / "splits.json")
    data = shared(tiny_run, "data") / "phantoms"
    for case in split["validation"] + split["unlabeled"]:
        img, pred = nib.load(data / case / io.IMAGING_NAME), nib.load(res / "predictions" / f"{case}.nii.gz")
        assert pred.shape == img.shape
        np.testing.assert_allclose(pred.affine, img.affine)
        assert pred.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}
    # unlabeled cases are predicted but never evaluated
    per_case = pd.read_csv(res / "evaluation" / "per_case.csv")
    assert sorted(per_case["case_id"]) == split["validation"]
    assert not set(split["unlabeled"]) & set(per_case["case_id"])
    summary = pd.read_csv(res / "evaluation" / "summary.csv").set_index("metric")
    assert summary.loc["kidney_dice", "n"] == len(split["validation"])


def test_tiny_run_scores_stage1_beside_the_cascade(tiny_run):
    res = tiny_run / "results" / "tiny" / "evaluation"
    split = io.load_json(shared(tiny_run, "data") / "splits.json")
    stage1 = pd.read_csv(res / "stage1_per_case.csv")
    assert sorted(stage1["case_id"]) == split["validation"] and {"kidney_dice", "tumor_dice"} <= set(stage1)
    for case, row in stage1.set_index("case_id").iterrows():  # stage 1's own labels, scored like the cascade's
        ref = io.read_case_folder(shared(tiny_run, "data") / "phantoms", case)
        labels = io.read_aligned(shared(tiny_run, "stage1") / "labels" / f"{case}.nii.gz", ref, "stage-1 labels")
        np.testing.assert_allclose(row["tumor_dice"], metrics.dice(labels == 2, ref.label == 2), equal_nan=True)
    comparison = pd.read_csv(res / "stage1_vs_cascade.csv").set_index("metric")
    per_case = pd.read_csv(res / "per_case.csv").set_index("case_id")
    gain = per_case["tumor_dice"] - stage1.set_index("case_id")["tumor_dice"]
    np.testing.assert_allclose(comparison.loc["tumor_dice", "gain_mean"], gain.mean(), equal_nan=True)


def test_tiny_run_metrics_match_a_direct_computation(tiny_run):
    res = tiny_run / "results" / "tiny"
    per_case = pd.read_csv(res / "evaluation" / "per_case.csv").set_index("case_id")
    for case, row in per_case.iterrows():
        ref = io.read_case_folder(shared(tiny_run, "data") / "phantoms", case)
        pred = np.asarray(nib.load(res / "predictions" / f"{case}.nii.gz").dataobj)
        expected_kidney = metrics.dice(pred > 0, ref.label > 0)
        expected_tumor = metrics.dice(pred == 2, ref.label == 2)
        np.testing.assert_allclose(row["kidney_dice"], expected_kidney, rtol=1e-9, equal_nan=True)
        np.testing.assert_allclose(row["tumor_dice"], expected_tumor, rtol=1e-9, equal_nan=True)


def test_tiny_run_is_complete_and_rerun_does_nothing(tiny_run):
    result = snakemake("-n", "--configfile", "tiny.yaml", cwd=tiny_run)
    assert "Nothing to be done" in result.stdout + result.stderr


def test_predict_target_on_another_folder_uses_the_trained_models(tiny_run, tmp_path):
    scans = tmp_path / "scans"
    phantoms.write_phantom_dataset(scans, ["case_00210", "case_00211"], (24, 64, 64), (8.0, 6.0, 6.0), seed=99,
                                   unlabeled={"case_00210", "case_00211"})
    # a user's own scan: another name, slice axis last with an RAS affine, int16, sform and qform
    kits = nib.load(scans / "case_00211" / io.IMAGING_NAME)
    to_ras = orientations.ornt_transform(orientations.io_orientation(kits.affine), orientations.axcodes2ornt("RAS"))
    data = np.round(orientations.apply_orientation(np.asarray(kits.dataobj), to_ras)).astype(np.int16)
    own = nib.Nifti1Image(data, kits.affine @ orientations.inv_ornt_aff(to_ras, kits.shape))
    own.set_qform(own.affine, code=1)
    own.set_sform(own.affine, code=2)
    (scans / "patient_017").mkdir()
    nib.save(own, scans / "patient_017" / io.IMAGING_NAME)
    # the twin holds the same int16 values (bfloat16 inference on a CPU that has it tells rounded HU apart)
    nib.save(nib.Nifti1Image(np.round(np.asarray(kits.dataobj)).astype(np.int16), kits.affine, kits.header),
             scans / "case_00211" / io.IMAGING_NAME)
    before = {p: p.stat().st_mtime for p in scans.rglob("*") if p.is_file()}
    args = ["--configfile", "tiny.yaml", "--config", f"predict_dir={scans}"]
    plan = snakemake("-n", "predict", "submission", *args, cwd=tiny_run).stdout
    assert "train_stage" not in plan and "preprocess_stage1_external" in plan and "check_external" in plan
    snakemake("--cores", "2", "predict", "submission", *args, cwd=tiny_run)
    res = tiny_run / "results" / "tiny"
    for case in ["case_00210", "case_00211", "patient_017"]:
        img = nib.load(scans / case / io.IMAGING_NAME)
        pred = nib.load(res / "external" / "predictions" / f"{case}.nii.gz")
        assert pred.shape == img.shape and pred.get_data_dtype() == np.uint8
        np.testing.assert_allclose(pred.affine, img.affine)
        assert [int(pred.header[k]) for k in ("sform_code", "qform_code")] == \
            [int(img.header[k]) for k in ("sform_code", "qform_code")]
    # the RAS scan's prediction is the KiTS-oriented twin's, reoriented the same way
    twin = np.asarray(nib.load(res / "external" / "predictions" / "case_00211.nii.gz").dataobj)
    own_prediction = np.asarray(nib.load(res / "external" / "predictions" / "patient_017.nii.gz").dataobj)
    np.testing.assert_array_equal(own_prediction, orientations.apply_orientation(twin, to_ras))
    # challenge-named copies for the KiTS-named scans only
    assert sorted(p.name for p in (res / "external" / "submission").iterdir()) == [
        "prediction_00210.nii.gz", "prediction_00211.nii.gz"]
    # the input folder is read only to the pipeline
    assert {p: p.stat().st_mtime for p in scans.rglob("*") if p.is_file()} == before


def test_submission_of_the_unlabeled_cases(tiny_run):
    snakemake("--cores", "2", "submission", "--configfile", "tiny.yaml", cwd=tiny_run)
    res = tiny_run / "results" / "tiny"
    unlabeled = io.load_json(shared(tiny_run, "data") / "splits.json")["unlabeled"]
    assert sorted(p.name for p in (res / "submission").glob("prediction_*.nii.gz")) == [
        f"prediction_{c[5:]}.nii.gz" for c in unlabeled]


def test_report_contains_plots_tables_and_benchmarks(tiny_run):
    res = tiny_run / "results" / "tiny"
    assert (res / "evaluation" / "plots" / "dice.png").stat().st_size > 1000
    split = io.load_json(shared(tiny_run, "data") / "splits.json")
    for case in split["validation"]:
        assert (res / "evaluation" / "overlays" / f"{case}.png").exists()
    for stage in (1, 2):
        assert (res / "plots" / "training" / f"stage{stage}_fold_0.png").exists()
    bench = pd.read_csv(res / "evaluation" / "benchmarks.csv")
    assert any(j.endswith("train/fold_0") for j in bench["job"]) and (bench["seconds"] > 0).all()
    snakemake("--configfile", "tiny.yaml", "--report", "report.zip", cwd=tiny_run)
    import zipfile

    names = zipfile.ZipFile(tiny_run / "report.zip").namelist()
    for expected in ["dice.png", "stage1_fold_0.png", f"{split['validation'][0]}.png", "summary.csv",
                     "benchmarks.csv"]:
        assert any(n.endswith(expected) for n in names), expected


def planned_jobs(workflow: Path, *args, target: str = "all") -> dict[str, int]:
    """Rule -> number of jobs that ``snakemake -n`` would run."""
    out = snakemake(target, "-n", *args, "--quiet", "rules", cwd=workflow)
    counts = {}
    for line in (out.stdout + out.stderr).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("job", "total"):
            counts[parts[0]] = int(parts[1])
    return counts


def write_override(workflow: Path, name: str, text: str) -> str:
    (workflow / name).write_text(text)
    return name


STAGE1_JOBS = {"make_phantoms", "make_splits", "dataset_statistics", "preprocess_stage1", "train_stage1",
               "predict_stage1", "predict_stage1_fold_0", "predict_stage1_fold_1"}


def test_changing_a_stage2_setting_replans_only_stage2(tiny_run):
    extra = write_override(tiny_run, "stage2_change.yaml", "stage2:\n  training:\n    learning_rate: 0.002\n")
    jobs = planned_jobs(tiny_run, "--configfile", "tiny.yaml", extra)
    assert jobs.get("train_stage2") == 2 and "predict_stage2" in jobs and "evaluate_case" in jobs
    assert not STAGE1_JOBS & set(jobs) and "crop_rois" not in jobs


def test_changing_a_stage1_setting_replans_stage1_and_after(tiny_run):
    extra = write_override(tiny_run, "stage1_change.yaml", "stage1:\n  training:\n    learning_rate: 0.002\n")
    jobs = planned_jobs(tiny_run, "--configfile", "tiny.yaml", extra)
    assert jobs.get("train_stage1") == 2 and jobs.get("train_stage2") == 2
    assert {"predict_stage1", "predict_stage1_fold_0", "predict_stage1_fold_1", "crop_rois", "predict_stage2",
            "evaluate_case"} <= set(jobs)
    # resampling does not depend on the stage-1 network or training: the arrays are reused
    assert not {"make_phantoms", "dataset_statistics", "preprocess_stage1"} & set(jobs)


def test_inference_folds_choose_the_models_of_each_prediction(tiny_run):
    """``inference.folds: 1`` in both stages: the validation and unlabeled cases are predicted again with fold 0
    only (the training cases with the fold that did not train on them, as before); nothing is trained."""
    extra = write_override(tiny_run, "folds.yaml", "stage1:\n  inference:\n    folds: 1\n"
                                                   "stage2:\n  inference:\n    folds: 1\n")
    out = snakemake("-n", "--configfile", "tiny.yaml", extra, cwd=tiny_run).stdout
    plan = experiments.plan_workflow(config.load_config(config.DEFAULT_CONFIG, TINY))
    for rule, models in (("predict_stage1", "models/fold_"), ("predict_stage2", "stage2/models/fold_")):
        blocks = {block.split("/")[-1].split(".")[0]: block for block in
                  (b.split("output:")[0] + b.split("output:")[1].split("\n")[0]
                   for b in out.split("\nrule ") if b.startswith(f"{rule}:"))}
        assert set(blocks) == set(plan.predicted), rule
        for case in plan.predicted:
            assert f"{models}0.pt" in blocks[case] and f"{models}1.pt" not in blocks[case], (rule, case)
    assert not {"train_stage1", "train_stage2"} & set(planned_jobs(tiny_run, "--configfile", "tiny.yaml", extra))


@pytest.mark.parametrize("value", ["0.99", "0.6"])
def test_component_min_peak_repredicts_only_the_cases_outside_training(tiny_run, value):
    """``stage1.component_min_peak`` leaves the training cases' out-of-fold masks as they are (every
    component: stage 2 learns from the ROIs of stage 1's false kidneys), so nothing trains again; the
    validation and unlabeled cases are predicted again from stage 1 on."""
    extra = write_override(tiny_run, "peak.yaml", f"stage1:\n  component_min_peak: {value}\n")
    jobs = planned_jobs(tiny_run, "--configfile", "tiny.yaml", extra)
    plan = experiments.plan_workflow(config.load_config(config.DEFAULT_CONFIG, TINY))
    assert jobs.get("predict_stage1") == len(plan.predicted) and "predict_stage2" in jobs
    assert not {"train_stage1", "train_stage2", "predict_stage1_fold_0", "predict_stage1_fold_1"} & set(jobs)


def test_roi_growth_steps_repredicts_stage2_only(tiny_run):
    """``stage2.roi_growth_steps`` is read by stage 2's prediction only: no ROI is cropped and nothing is
    trained again; every case's stage-2 prediction is made again."""
    extra = write_override(tiny_run, "growth.yaml", "stage2:\n  roi_growth_steps: 0\n")
    jobs = planned_jobs(tiny_run, "--configfile", "tiny.yaml", extra)
    plan = experiments.plan_workflow(config.load_config(config.DEFAULT_CONFIG, TINY))
    assert jobs.get("predict_stage2") == len(plan.predicted)
    assert not {"crop_rois", "train_stage1", "train_stage2", "predict_stage1"} & set(jobs)


def test_table1_variants_share_the_stage1_models(tiny_run):
    jobs = planned_jobs(tiny_run, "--configfile", "tiny.yaml", target="table1")
    # two stage-1 model sets (3-D, which every stage-2 variant uses, and the 2-D row) of 2 folds;
    # the finished tiny run is the 3D+DS+Res+SP row, so only the 4 other stage-2 variants train
    assert jobs.get("train_stage1") == 2 and jobs.get("train_stage2") == 4 * 2
    assert not {"make_phantoms", "dataset_statistics"} & set(jobs)


def test_provenance_records_config_versions_and_shared_folders(tiny_run):
    record = io.load_json(tiny_run / "results" / "tiny" / "provenance.json")
    assert record["experiment"] == "tiny" and record["config"]["experiment"] == "tiny"
    assert record["seeds"]["splits"] == record["config"]["splits"]["seed"]
    assert record["packages"]["torch"].startswith("2.13")
    for folder in record["shared_artifacts"].values():
        assert (tiny_run / folder).is_dir()


def test_a_rerun_from_scratch_is_identical(tiny_run, tmp_path):
    again = copy_workflow(tmp_path / "again")
    snakemake("--cores", "2", "--configfile", "tiny.yaml", cwd=again)
    for kind, pattern in [("data", "splits.json"), ("pre", "*.npz"), ("rois", "*.npz")]:
        first = sorted(shared(tiny_run, kind).glob(pattern))
        assert first
        for path in first:
            assert (shared(again, kind) / path.name).read_bytes() == path.read_bytes(), path.name
    a = pd.read_csv(tiny_run / "results" / "tiny" / "evaluation" / "per_case.csv")
    b = pd.read_csv(again / "results" / "tiny" / "evaluation" / "per_case.csv")
    pd.testing.assert_frame_equal(a, b)


def test_every_shared_folder_says_what_made_it(tiny_run):
    plan = experiments.plan_workflow(config.load_config(config.DEFAULT_CONFIG, TINY))
    for kind, folder in plan.experiment.folders.items():
        settings = yaml.safe_load((tiny_run / "results" / "shared" / folder / "settings.yaml").read_text())
        assert settings == experiments.shared_settings(plan.experiment.config)[kind]
    assert plan.experiment.folders["stage1"].startswith("stage1-unet4-16x32x32-")


def test_benchmarks_cover_every_computing_job(tiny_run):
    bench = pd.read_csv(tiny_run / "results" / "tiny" / "evaluation" / "benchmarks.csv")
    plan = experiments.plan_workflow(config.load_config(config.DEFAULT_CONFIG, TINY))
    folders = plan.experiment.folders
    expected = {f"shared/{folders['data']}/{job}" for job in ("make_phantoms", "check_dataset", "dataset_statistics")}
    expected |= {f"shared/{folders['stage1']}/train/fold_{k}" for k in plan.folds}
    expected |= {f"tiny/train_stage2/fold_{k}" for k in plan.folds}
    expected |= {f"shared/{folders[kind]}/{c}" for kind in ("pre", "rois") for c in plan.cases}
    # stage 1 predicts the validation and unlabeled cases one by one, the training cases one fold at a time
    expected |= {f"shared/{folders['stage1']}/predict/{c}" for c in plan.predicted}
    expected |= {f"shared/{folders['stage1']}/predict/fold_{k}" for k in plan.folds}
    expected |= {f"tiny/predict_stage2/{c}" for c in plan.predicted}
    assert set(bench["job"]) == expected


def edited_copy(tiny_run: Path, tmp_path: Path, module: str, old: str, new: str) -> Path:
    """The finished tiny run in a new folder, with one edit to a package module."""
    wf = tmp_path / "edited"
    shutil.copytree(tiny_run, wf, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    path = wf / "kitscascade" / f"{module}.py"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return wf


def test_editing_a_plot_function_replans_only_plots(tiny_run, tmp_path):
    wf = edited_copy(tiny_run, tmp_path, "plots", "ax.set_ylabel(\"Dice\")", "ax.set_ylabel(\"Dice score\")")
    jobs = planned_jobs(wf, "--configfile", "tiny.yaml")
    assert set(jobs) == {"plot_evaluation", "all"}


def test_editing_a_comment_or_docstring_replans_nothing(tiny_run, tmp_path):
    wf = edited_copy(tiny_run, tmp_path, "losses", "    Args:", "    Arguments (reworded):")
    jobs = planned_jobs(wf, "--configfile", "tiny.yaml")
    assert not jobs


def test_editing_the_loss_replans_training_and_everything_after(tiny_run, tmp_path):
    wf = edited_copy(tiny_run, tmp_path, "losses", "return sum(w * dice_ce_loss", "return 1.0 * sum(w * dice_ce_loss")
    jobs = planned_jobs(wf, "--configfile", "tiny.yaml")
    assert jobs.get("train_stage1") == 2 and jobs.get("train_stage2") == 2
    assert {"predict_stage1", "crop_rois", "predict_stage2", "evaluate_case", "aggregate_evaluation"} <= set(jobs)
    assert not {"make_phantoms", "dataset_statistics", "preprocess_stage1"} & set(jobs)


def test_a_typo_in_a_table1_override_fails_at_parse_time(tmp_path):
    wf = copy_workflow(tmp_path / "wf")
    extra = write_override(wf, "typo.yaml", "table1:\n  variants:\n    - {name: v, stage: 2, method: x, "
                           "paper: [0, 0], overrides: {stage2: {network: {residul: false}}}}\n")
    result = snakemake("-n", "--configfile", "tiny.yaml", extra, cwd=wf, check=False)
    out = result.stdout + result.stderr
    assert result.returncode != 0 and "table1.variants[v].overrides: stage2.network" in out and "residul" in out
    assert "Job stats" not in out


def test_case_steps_declare_the_files_they_read(tiny_run):
    """Imaging and segmentation are declared inputs (not found in a folder at run time)."""
    out = snakemake("--detailed-summary", "--configfile", "tiny.yaml", cwd=tiny_run).stdout
    table = pd.read_csv(io_module.StringIO(out), sep="\t")
    unlabeled = set(io.load_json(shared(tiny_run, "data") / "splits.json")["unlabeled"])
    checked = 0
    steps = ["preprocess_stage1", "predict_stage1", "predict_stage1_fold_0", "predict_stage1_fold_1", "crop_rois"]
    for _, job in table[table["rule"].isin(steps)].iterrows():
        case = Path(job["output_file"]).stem.split(".")[0]
        inputs = set(job["input-file(s)"].split(","))
        assert f"{shared(tiny_run, 'data').relative_to(tiny_run)}/phantoms/{case}/imaging.nii.gz" in inputs
        assert any(f.endswith(f"{case}/segmentation.nii.gz") for f in inputs) == (case not in unlabeled)
        checked += 1
    assert checked >= 3 * 7


def test_splits_file_is_the_plan(tiny_run):
    plan = experiments.plan_workflow(config.load_config(config.DEFAULT_CONFIG, TINY))
    assert io.load_json(shared(tiny_run, "data") / "splits.json") == plan.splits


REHEARSAL = ["--configfile", "config/kits19.yaml", "config/rehearsal.yaml", "rehearsal_cpu.yaml"]


@pytest.fixture(scope="module")
def rehearsal_run(tmp_path_factory):
    """The KiTS-size rehearsal (config/rehearsal.yaml over kits19.yaml) scaled down for the CPU
    (tests/configs/rehearsal_cpu.yaml): the paper's network kinds and pooling, 5 folds, the loader."""
    wf = copy_workflow(tmp_path_factory.mktemp("rehearsal") / "wf")
    shutil.copy(ROOT / "tests" / "configs" / "rehearsal_cpu.yaml", wf / "rehearsal_cpu.yaml")
    snakemake("--cores", "2", *REHEARSAL, cwd=wf)
    return wf


def test_rehearsal_runs_the_paper_code_path(rehearsal_run):
    import torch

    from kitscascade.networks import pool_schedule, pools_per_axis

    wf = rehearsal_run
    cfg = config.load_config(config.DEFAULT_CONFIG, *(wf / f for f in REHEARSAL[1:]))
    plan = experiments.plan_workflow(cfg)
    assert plan.folds == [0, 1, 2, 3, 4]
    stage1_models = sorted((wf / "results" / "shared" / plan.experiment.folders["stage1"] / "models").glob("fold_?.pt"))
    stage2_models = sorted((wf / "results" / "rehearsal_cpu" / "stage2" / "models").glob("fold_?.pt"))
    for models, kind, pools in ((stage1_models, "unet", (4, 5, 5)), (stage2_models, "resunet", (3, 5, 5))):
        assert len(models) == 5
        network = torch.load(models[0], weights_only=True)["network"]
        assert network["kind"] == kind and pools_per_axis(pool_schedule(network["patch_size"])) == pools
    for case in plan.evaluated:  # ensembled over all five folds
        info = io.load_json(wf / "results" / "shared" / plan.experiment.folders["stage1"] / "predictions" / f"{case}.json")
        assert len(info["models"]) == 5
    data = shared(wf, "data") / "phantoms"
    slices = {nib.load(data / c / io.IMAGING_NAME).shape[0] for c in plan.cases}
    assert len(slices) > 2  # KiTS-like variety of scan lengths
    for case in plan.predicted:
        img, pred = nib.load(data / case / io.IMAGING_NAME), nib.load(wf / "results" / "rehearsal_cpu" / "predictions" / f"{case}.nii.gz")
        assert pred.shape == img.shape and np.allclose(pred.affine, img.affine)
    per_case = pd.read_csv(wf / "results" / "rehearsal_cpu" / "evaluation" / "per_case.csv")
    assert sorted(per_case["case_id"]) == plan.evaluated
    train_log = (wf / "logs" / "shared" / plan.experiment.folders["stage1"] / "train" / "fold_0.log").read_text()
    assert "1 loader workers" in train_log  # resources.threads 4, capped to --cores 2: one worker


def test_a_broken_case_stops_the_run_before_any_training(tmp_path):
    """The whole data set is checked first: every bad case is named, and no job after the check runs."""
    wf = copy_workflow(tmp_path / "wf")
    data = tmp_path / "data"
    names = [f"case_{i:05d}" for i in range(5)] + ["P-0042", "patient_017"]
    phantoms.write_phantom_dataset(data, names[:5], (24, 64, 64), (8.0, 6.0, 6.0), seed=1)
    for name in names[5:]:
        shutil.copytree(data / "case_00000", data / name)
    for broken in ("case_00003", "patient_017"):  # labels one slice short of their imaging
        seg = nib.load(data / broken / io.SEGMENTATION_NAME)
        nib.save(nib.Nifti1Image(np.asarray(seg.dataobj)[:-1], seg.affine), data / broken / io.SEGMENTATION_NAME)
    result = snakemake("--cores", "2", "--configfile", "tiny.yaml", "--config", f"data_dir={data}", cwd=wf,
                       check=False)
    out = result.stdout + result.stderr
    assert result.returncode != 0 and "2 of 7 cases cannot be used" in out
    assert "case_00003: segmentation shape (23, 64, 64) differs" in out and "patient_017: segmentation shape" in out
    assert not list((wf / "results").rglob("*.npz")) and not list((wf / "results").rglob("*.pt"))


def test_an_exported_model_predicts_anywhere_like_the_workflow(tiny_run, tmp_path):
    """export_model, then in a fresh folder holding only the zip (no data, no results/shared): the workflow's
    predict target and the kitscascade-predict command give the workflow's own prediction, byte for byte."""
    snakemake("--cores", "1", "export_model", "--configfile", "tiny.yaml", cwd=tiny_run)
    case = io.load_json(shared(tiny_run, "data") / "splits.json")["validation"][0]
    expected = (tiny_run / "results" / "tiny" / "predictions" / f"{case}.nii.gz").read_bytes()
    fresh = copy_workflow(tmp_path / "fresh")
    shutil.copy(tiny_run / "results" / "tiny" / "model.zip", fresh / "model.zip")
    scans = tmp_path / "scans"
    (scans / case).mkdir(parents=True)
    shutil.copy(shared(tiny_run, "data") / "phantoms" / case / io.IMAGING_NAME, scans / case / io.IMAGING_NAME)
    args = ["predict", "--configfile", "tiny.yaml", "--config", "model=model.zip", f"predict_dir={scans}"]
    assert not {"train_stage1", "train_stage2", "dataset_statistics"} & set(planned_jobs(fresh, *args[1:], target="predict"))
    snakemake("--cores", "2", *args, cwd=fresh)
    (prediction,) = (fresh / "results" / "imported").glob(f"model-*/predictions/{case}.nii.gz")
    assert prediction.read_bytes() == expected
    assert not (fresh / "results" / "shared").exists()
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(scans / case / io.IMAGING_NAME, flat / "scan.nii.gz")
    for source, name in ((scans, case), (flat / "scan.nii.gz", "scan")):
        out = tmp_path / f"out_{name}"
        result = subprocess.run([str(BIN / "kitscascade-predict"), "-m", str(fresh / "model.zip"), "-i", str(source),
                                 "-o", str(out), "--device", "cpu", "--threads", "1"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
        assert (out / f"{name}.nii.gz").read_bytes() == expected
    again = subprocess.run([str(BIN / "kitscascade-predict"), "-m", str(fresh / "model.zip"), "-i", str(scans), "-o",
                            str(tmp_path / f"out_{case}")], capture_output=True, text=True)
    assert again.returncode == 0 and "0 prediction(s) written" in again.stdout and "1 kept" in again.stdout


def test_table1_has_both_columns_for_every_row(tiny_run):
    """Last of the tiny run's tests: it trains the Table 1 variants, which the planning tests above expect untrained."""
    snakemake("--cores", "2", "table1", "--configfile", "tiny.yaml", cwd=tiny_run)
    table = pd.read_csv(tiny_run / "results" / "tiny" / "table1.csv")
    assert len(table) == 7 and table[["kidney_dice", "tumor_dice"]].notna().all().all()
    md = (tiny_run / "results" / "tiny" / "table1.md").read_text()
    assert "Cascade over the single-stage 3-D U-Net (tiny" in md and "(paper: 73.31 -> 83.70)" in md
