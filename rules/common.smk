# Path templates, input functions, wildcard constraints and resources. What to make (cases,
# splits, experiments, shared folders) is planned once by the package: kitscascade/experiments.py.
import re
from pathlib import Path

from kitscascade import codekey, experiments, io, predict
from kitscascade.config import (
    EXECUTION_KEYS,
    sorted_keys,
    training_settings,
    without_execution,
)
from kitscascade.stage1 import held_out_settings
from snakemake.logging import logger

PLAN = experiments.plan_workflow(config)
# the config with every mapping's keys sorted, for the rules' params: Snakemake compares params as
# text, which must not depend on the order of the config files
SETTINGS = sorted_keys(config)
EXP = PLAN.experiment.name
EXPERIMENTS = PLAN.experiments
CASES = PLAN.cases
UNLABELED = PLAN.unlabeled
FOLDS = PLAN.folds
EVAL_CASES = PLAN.evaluated
PREDICT_CASES = PLAN.predicted
USE_PHANTOMS = not config["data_dir"]

SHARED = "results/shared"
DATA = f"{SHARED}/{PLAN.experiment.folders['data']}"  # one data folder: variants vary stages only
DATA_DIR = config["data_dir"] or f"{DATA}/phantoms"
# scans to predict with the trained models (`snakemake predict`), e.g. the KiTS19 test set: a
# scan file, a folder of them or a folder of case folders; name -> imaging file
PREDICT_DIR = config["predict_dir"]
PREDICT_SCANS = (
    {n: str(p) for n, p in predict.find_scans(PREDICT_DIR).items()}
    if PREDICT_DIR
    else {}
)
EXTERNAL_CASES = list(PREDICT_SCANS)
# an exported model (model.zip) to predict them with instead of the experiment's own models
MODEL = config["model"]
if MODEL and not PREDICT_DIR:
    raise io.CaseError(
        f"model={MODEL}: predicting with a model needs predict_dir, the scans to predict"
    )
IMPORTED = (
    f"results/imported/{Path(MODEL).name.removesuffix('.zip')}-"
    f"{experiments.settings_key(str(Path(MODEL).resolve()), Path(MODEL).stat().st_size)}"
    if MODEL
    else ""
)

# Shared artifacts: the wildcards pre, stage1 and rois are folder names of the plan
PRE_NPZ = "results/shared/{pre}/{case}.npz"
S1_MODEL = "results/shared/{stage1}/models/fold_{fold}.pt"
S1_CURVE = "results/shared/{stage1}/models/fold_{fold}_loss.csv"
S1_MASK = "results/shared/{stage1}/predictions/{case}.nii.gz"
S1_INFO = "results/shared/{stage1}/predictions/{case}.json"
S1_LABELS = (
    "results/shared/{stage1}/labels/{case}.nii.gz"  # kidney and tumor, both classes
)
S1_EVAL = "results/shared/{stage1}/evaluation/{case}.csv"  # stage 1 scored as a single-stage network
ROI_NPZ = "results/shared/{rois}/{case}.npz"
ROI_INFO = "results/shared/{rois}/{case}.json"
# Each experiment's own (stage 2 and after) live under results/{experiment}/.
S2_MODEL = "results/{experiment}/stage2/models/fold_{fold}.pt"
S2_CURVE = "results/{experiment}/stage2/models/fold_{fold}_loss.csv"

PRE = PLAN.by_folder("pre")
STAGE1 = PLAN.by_folder("stage1")
ROIS = PLAN.by_folder("rois")
SHARED_SETTINGS = {
    e.folders[kind]: experiments.shared_settings(e.config)[kind]
    for e in EXPERIMENTS.values()
    for kind in experiments.KINDS
}


def one_of(names):
    return "|".join(re.escape(n) for n in names)


wildcard_constraints:
    case=r"[A-Za-z0-9_-][A-Za-z0-9_.-]*",
    fold=r"\d+",
    number=r"\d{5}",
    stage=r"[12]",
    experiment=one_of(EXPERIMENTS),
    pre=one_of(PRE),
    stage1=one_of(STAGE1),
    rois=one_of(ROIS),
    folder=one_of(SHARED_SETTINGS),


def log_path(path):
    return f"logs/{path}"


def bench_path(path):
    return f"benchmarks/{path}"


def code_keys(rules, package_dir):
    """Set params.code of each script-running rule to a hash of the code of ``package_dir``
    (the kitscascade next to the Snakefile) that its adapter reaches (kitscascade/codekey.py),
    so that editing that code, and only that code, reruns the rule's jobs."""
    for r in rules:
        if r.script:
            r.set_params(code=codekey.code_key(Path(r.basedir) / r.script, package_dir))


# --- case files ----------------------------------------------------------------


def case_inputs(case, data_dir=DATA_DIR, labeled=None):
    """The case's imaging and, when it has one, its segmentation (named inputs)."""
    files = {"imaging": f"{data_dir}/{case}/{io.IMAGING_NAME}"}
    if labeled is None:
        labeled = case not in UNLABELED
    if labeled:
        files["segmentation"] = f"{data_dir}/{case}/{io.SEGMENTATION_NAME}"
    return files


def dataset_files():
    """Every case of the data set: case id -> (imaging, segmentation or None)."""
    files = {c: case_inputs(c) for c in CASES}
    return {c: (f["imaging"], f.get("segmentation")) for c, f in files.items()}


def dataset_file_list():
    """The files of every case, flat (the inputs of whole-data-set rules)."""
    return [f for files in dataset_files().values() for f in files if f]


def get_case_inputs(wildcards):
    return case_inputs(wildcards.case)


def external_inputs(case):
    """A predict_dir scan's imaging and, in a case folder that has one, its segmentation."""
    imaging = PREDICT_SCANS[case]
    segmentation = Path(imaging).with_name(io.SEGMENTATION_NAME)
    labeled = Path(imaging).name == io.IMAGING_NAME and segmentation.exists()
    return {
        "imaging": imaging,
        **({"segmentation": str(segmentation)} if labeled else {}),
    }


def external_files():
    """Every scan of predict_dir: case id -> (imaging, segmentation or None)."""
    files = {c: external_inputs(c) for c in EXTERNAL_CASES}
    return {c: (f["imaging"], f.get("segmentation")) for c, f in files.items()}


def get_external_case_inputs(wildcards):
    return external_inputs(wildcards.case)


def execution_settings():
    """How prediction jobs run on this machine (config.EXECUTION_KEYS of the stage-1 section)."""
    return {k: config["stage1"]["training"][k] for k in EXECUTION_KEYS}


# --- settings of a job, from its wildcards -----------------------------------


def resampling_settings(e):
    """The stage-1 settings of experiment ``e`` that preprocessing uses."""
    return {k: e.config["stage1"][k] for k in experiments.PRE_KEYS}


def cropping_settings(e):
    """The stage-2 settings of experiment ``e`` that ROI cropping uses."""
    return {k: e.config["stage2"][k] for k in experiments.ROI_KEYS}


def pre_settings(wildcards):
    return resampling_settings(PRE[wildcards.pre])


# Stage settings of network jobs: what the output depends on. How a job runs (device, loader
# workers, ...) is read from the config at run time and reruns nothing (config.EXECUTION_KEYS);
# training does not read how its models predict (config.PREDICTION_KEYS).
def stage1_settings(wildcards):
    return without_execution(STAGE1[wildcards.stage1].config["stage1"])


def stage1_prediction_settings(wildcards):
    """A training case is predicted by the one fold that did not train on it, whatever inference.folds says
    (the workflow predicts training cases with predict_stage1_fold_<k> and stage1_held_out_settings; this
    branch serves a training case's mask asked of predict_stage1 itself, e.g. with --allowed-rules).
    """
    if PLAN.stage1_folds_for(wildcards.case) != PLAN.folds:
        return stage1_held_out_settings(wildcards)
    return stage1_settings(wildcards)


def stage1_held_out_settings(wildcards):
    """What a fold's out-of-fold predictions depend on (stage1.held_out_settings): one model, whatever
    inference.folds says, every component kept whatever component_min_peak says."""
    return held_out_settings(stage1_settings(wildcards))


def stage1_training_settings(wildcards):
    return training_settings(STAGE1[wildcards.stage1].config["stage1"])


def stage2_training_settings(wildcards):
    return training_settings(EXPERIMENTS[wildcards.experiment].config["stage2"])


def roi_settings(wildcards):
    return cropping_settings(ROIS[wildcards.rois])


def stage2_settings(wildcards):
    return without_execution(EXPERIMENTS[wildcards.experiment].config["stage2"])


def experiment_stage1_settings(wildcards):
    return without_execution(EXPERIMENTS[wildcards.experiment].config["stage1"])


def folder_of(kind, wildcards):
    return EXPERIMENTS[wildcards.experiment].folders[kind]


# --- inputs ------------------------------------------------------------------


def get_stage1_training_inputs(wildcards):
    pre = STAGE1[wildcards.stage1].folders["pre"]
    cases = PLAN.training_cases(int(wildcards.fold))
    return [PRE_NPZ.format(pre=pre, case=c) for c in cases]


def get_stage1_npz(wildcards):
    return PRE_NPZ.format(
        pre=STAGE1[wildcards.stage1].folders["pre"], case=wildcards.case
    )


def get_stage1_models(wildcards):
    """Out-of-fold for training cases (the fold that did not see the case); the ensemble otherwise."""
    n = STAGE1[wildcards.stage1].config["stage1"]["inference"]["folds"]
    folds = PLAN.stage1_folds_for(wildcards.case, n)
    return [S1_MODEL.format(stage1=wildcards.stage1, fold=k) for k in folds]


def held_out_cases(fold):
    """The training cases stage-1 fold ``fold`` did not train on: the ones its model predicts."""
    return PLAN.splits["folds"][fold]["val"]


def held_out_inputs(fold):
    """The inputs of fold ``fold``'s out-of-fold predictions: per held-out case, in
    held_out_cases order, its stage-1 arrays, imaging and segmentation; and the fold's model.
    """

    def inputs(wildcards):
        cases = held_out_cases(fold)
        pre = STAGE1[wildcards.stage1].folders["pre"]
        return {
            "npz": [PRE_NPZ.format(pre=pre, case=c) for c in cases],
            "imaging": [case_inputs(c)["imaging"] for c in cases],
            "segmentation": [case_inputs(c)["segmentation"] for c in cases],
            "model": S1_MODEL.format(stage1=wildcards.stage1, fold=fold),
        }

    return inputs


def held_out_runtime(fold):
    """Wall-time limit in minutes of fold ``fold``'s out-of-fold predictions: network_runtime (one
    case's) per case it predicts, at most train_runtime, growing with each retry."""
    resources = config["resources"]
    minutes = min(
        resources["network_runtime"] * len(held_out_cases(fold)),
        resources["train_runtime"],
    )
    return lambda wildcards, attempt: minutes * attempt


def get_roi_stage1_mask(wildcards):
    return S1_MASK.format(
        stage1=ROIS[wildcards.rois].folders["stage1"], case=wildcards.case
    )


def get_stage2_training_inputs(wildcards):
    rois = folder_of("rois", wildcards)
    training = EXPERIMENTS[wildcards.experiment].config["stage2"]["training"]
    cases = PLAN.training_cases(int(wildcards.fold), training["train_on"])
    return [ROI_NPZ.format(rois=rois, case=c) for c in cases]


def get_prediction_stage1_mask(wildcards):
    """The stage-1 mask the case's ROIs were cropped from (stage 2 crops a grown ROI from it too)."""
    return S1_MASK.format(stage1=folder_of("stage1", wildcards), case=wildcards.case)


def get_rois(wildcards):
    rois = folder_of("rois", wildcards)
    return {
        "rois": ROI_NPZ.format(rois=rois, case=wildcards.case),
        "info": ROI_INFO.format(rois=rois, case=wildcards.case),
    }


def get_stage1_info(wildcards):
    return S1_INFO.format(stage1=folder_of("stage1", wildcards), case=wildcards.case)


def get_stage1_evaluations(wildcards):
    stage1 = folder_of("stage1", wildcards)
    return [S1_EVAL.format(stage1=stage1, case=c) for c in EVAL_CASES]


def get_experiment_stage1_models(wildcards):
    """Every fold's stage-1 model (the exported model holds them all)."""
    stage1 = folder_of("stage1", wildcards)
    return [S1_MODEL.format(stage1=stage1, fold=k) for k in FOLDS]


def get_stage2_models(wildcards):
    """Every fold's stage-2 model (the exported model holds them all)."""
    return [S2_MODEL.format(experiment=wildcards.experiment, fold=k) for k in FOLDS]


def ensemble_folds(wildcards, stage):
    return PLAN.ensemble(
        EXPERIMENTS[wildcards.experiment].config[stage]["inference"]["folds"]
    )


def get_experiment_stage1_ensemble(wildcards):
    """The stage-1 models that predict scans outside the data set: ``stage1.inference.folds``."""
    stage1 = folder_of("stage1", wildcards)
    return [
        S1_MODEL.format(stage1=stage1, fold=k)
        for k in ensemble_folds(wildcards, "stage1")
    ]


def get_stage2_ensemble(wildcards):
    """The stage-2 models that predict a case: ``stage2.inference.folds``."""
    return [
        S2_MODEL.format(experiment=wildcards.experiment, fold=k)
        for k in ensemble_folds(wildcards, "stage2")
    ]


def get_training_curve(wildcards):
    if wildcards.stage == "1":
        stage1 = folder_of("stage1", wildcards)
        return S1_CURVE.format(stage1=stage1, fold=wildcards.fold)
    return S2_CURVE.format(experiment=wildcards.experiment, fold=wildcards.fold)


def experiment_results(name):
    """What every job behind experiment ``name`` leads to: its predictions and evaluation."""
    r = f"results/{name}"
    return [
        *[f"{r}/predictions/{c}.nii.gz" for c in PREDICT_CASES],
        f"{r}/evaluation/per_case.csv",
    ]


def benchmark_folders(wildcards):
    """The benchmark folders of an experiment: its shared folders' (data first) and its own."""
    e = EXPERIMENTS[wildcards.experiment]
    shared = [bench_path(f"shared/{e.folders[kind]}") for kind in experiments.KINDS]
    return shared + [bench_path(e.name)]


# --- targets -----------------------------------------------------------------


def experiment_targets(name):
    """Everything a full run of experiment ``name`` produces."""
    r = f"results/{name}"
    return [
        *experiment_results(name),
        f"{r}/evaluation/summary.csv",
        f"{r}/evaluation/plots/dice.png",
        *[f"{r}/evaluation/overlays/{c}.png" for c in EVAL_CASES],
        *[f"{r}/plots/training/stage{s}_fold_{k}.png" for s in (1, 2) for k in FOLDS],
        f"{r}/evaluation/benchmarks.csv",
        f"{r}/provenance.json",
        f"{r}/model.zip",
        *[f"{SHARED}/{f}/settings.yaml" for f in EXPERIMENTS[name].folders.values()],
    ]


def get_predict_targets():
    """Predictions of the predict_dir scans (with an exported model when one is given), or else of this
    data set's validation and unlabeled cases."""
    if MODEL:
        return [f"{IMPORTED}/predictions/{c}.nii.gz" for c in EXTERNAL_CASES]
    if PREDICT_DIR:
        return [
            f"results/{EXP}/external/predictions/{c}.nii.gz" for c in EXTERNAL_CASES
        ]
    return [f"results/{EXP}/predictions/{c}.nii.gz" for c in PREDICT_CASES]


def get_submission_targets():
    """Challenge-named copies (prediction_XXXXX.nii.gz) of the KiTS-named cases (case_XXXXX): of the
    predict_dir scans, or else of this data set's unlabeled cases."""
    folder = (
        f"results/{EXP}/external/submission"
        if PREDICT_DIR
        else f"results/{EXP}/submission"
    )
    cases = EXTERNAL_CASES if PREDICT_DIR else UNLABELED
    numbers = [io.kits_number(c) for c in cases]
    skipped = [c for c, n in zip(cases, numbers) if n is None]
    if skipped:
        logger.warning(
            f"submission: {len(skipped)} case(s) not named case_XXXXX get no challenge-named "
            f"copy (their predictions are under results/{EXP}/.../predictions): {skipped[:5]}"
        )
    return [f"{folder}/prediction_{n}.nii.gz" for n in numbers if n]


# --- Table 1 -------------------------------------------------------------------


def table1_rows():
    """The plan's Table 1 rows, each with the files its numbers come from."""
    rows = []
    for row in PLAN.table1:
        e = EXPERIMENTS[row["experiment"]]
        if row["stage"] == 1:
            stage1 = e.folders["stage1"]
            sources = [S1_EVAL.format(stage1=stage1, case=c) for c in EVAL_CASES]
        else:
            sources = [f"results/{e.name}/evaluation/per_case.csv"]
        rows.append({**row, "sources": sources})
    return rows


# --- resources -----------------------------------------------------------------


def job_threads():
    """CPU threads of a training or inference job."""
    return config["resources"]["threads"]


def gpus():
    """GPUs of a training or inference job (0 on a CPU-only machine)."""
    return config["resources"]["gpu"]


def mem_mb(kind):
    """Memory of a job of ``kind`` (network or imaging), growing with each retry."""
    base = config["resources"][f"{kind}_mem_mb"]
    return lambda wildcards, attempt: base * attempt


def runtime(kind):
    """Wall-time limit in minutes of a job of ``kind`` (train, network or imaging), growing with
    each retry (a training job cut off by the limit resumes from its checkpoint)."""
    base = config["resources"][f"{kind}_runtime"]
    return lambda wildcards, attempt: base * attempt
