# Path templates, case lists, experiment plans, input functions and wildcard constraints.
import re
from pathlib import Path

from kitscascade import experiments, io, splits
from kitscascade.provenance import source_hash

EXP = config["experiment"]
EXPERIMENTS = experiments.plan_experiments(config)
DATA_KEY = EXPERIMENTS[EXP].data_key
USE_PHANTOMS = not config["data_dir"]
SHARED = "results/shared"
DATA = f"{SHARED}/data-{DATA_KEY}"
DATA_DIR = config["data_dir"] or f"{DATA}/phantoms"
# scans to predict with the trained models (`snakemake predict`), e.g. the KiTS19 test set
PREDICT_DIR = config["predict_dir"]

# Shared artifacts, keyed by the settings they depend on (kitscascade/experiments.py) ...
PRE_NPZ = "results/shared/pre-{pre_key}/{case}.npz"
S1_DIR = "results/shared/stage1-{stage1_key}"
S1_MODEL = "results/shared/stage1-{stage1_key}/models/fold_{fold}.pt"
S1_CURVE = "results/shared/stage1-{stage1_key}/models/fold_{fold}_loss.csv"
S1_MASK = "results/shared/stage1-{stage1_key}/predictions/{case}.nii.gz"
S1_INFO = "results/shared/stage1-{stage1_key}/predictions/{case}.json"
ROI_NPZ = "results/shared/rois-{roi_key}/{case}.npz"
ROI_INFO = "results/shared/rois-{roi_key}/{case}.json"
# Each experiment's own (stage 2 and after) live under results/{experiment}/.


def by_key(attr):
    return {getattr(e, attr): e for e in EXPERIMENTS.values()}


PRE = by_key("pre_key")
STAGE1 = by_key("stage1_key")
ROIS = by_key("roi_key")


def one_of(names):
    return "|".join(re.escape(n) for n in names)


wildcard_constraints:
    case=r"case_\d{5}",
    fold=r"\d+",
    number=r"\d{5}",
    stage=r"[12]",
    experiment=one_of(EXPERIMENTS),
    pre_key=one_of(PRE),
    stage1_key=one_of(STAGE1),
    roi_key=one_of(ROIS),


def phantom_case_ids():
    n = config["phantoms"]["n_cases"]
    return [f"case_{i:05d}" for i in range(n)]


if USE_PHANTOMS:
    CASES = phantom_case_ids()
    UNLABELED = CASES[len(CASES) - config["phantoms"]["n_unlabeled"] :]
else:
    CASES = io.list_cases(DATA_DIR)
    UNLABELED = [c for c in CASES if not io.has_segmentation(DATA_DIR, c)]

SPLITS = splits.make_splits(
    CASES,
    {c: c not in UNLABELED for c in CASES},
    config["splits"]["n_validation"],
    config["splits"]["n_folds"],
    config["splits"]["seed"],
)
FOLDS = list(range(config["splits"]["n_folds"]))
EXTERNAL_CASES = io.list_cases(PREDICT_DIR) if PREDICT_DIR else []
EVAL_CASES = SPLITS["validation"]
PREDICT_CASES = SPLITS["validation"] + SPLITS["unlabeled"]


# --- cases -------------------------------------------------------------------


def imaging(case):
    return f"{DATA_DIR}/{case}/imaging.nii.gz"


def case_files(case):
    """The case's imaging and, when it has one, its segmentation."""
    files = [imaging(case)]
    if case not in UNLABELED:
        files.append(f"{DATA_DIR}/{case}/segmentation.nii.gz")
    return files


def data_dir_of(files):
    """The data folder of a list of case files (their first file's grandparent)."""
    return str(Path(files[0]).parents[1])


def get_case_inputs(wildcards):
    return case_files(wildcards.case)


def get_all_case_inputs(wildcards):
    return [f for c in CASES for f in case_files(c)]


def get_external_case_inputs(wildcards):
    files = [f"{PREDICT_DIR}/{wildcards.case}/imaging.nii.gz"]
    if io.has_segmentation(PREDICT_DIR, wildcards.case):
        files.append(f"{PREDICT_DIR}/{wildcards.case}/segmentation.nii.gz")
    return files


def log_path(path):
    return f"logs/{path}"


def bench_path(path):
    return f"benchmarks/{path}"


# --- settings of a job, from its wildcards -----------------------------------


def pre_settings(wildcards):
    cfg = PRE[wildcards.pre_key].config["stage1"]
    return {k: cfg[k] for k in experiments.PRE_KEYS}


def stage1_settings(wildcards):
    return STAGE1[wildcards.stage1_key].config["stage1"]


def roi_settings(wildcards):
    cfg = ROIS[wildcards.roi_key].config["stage2"]
    return {k: cfg[k] for k in experiments.ROI_KEYS}


def stage2_settings(wildcards):
    return EXPERIMENTS[wildcards.experiment].config["stage2"]


def experiment_stage1_settings(wildcards):
    return EXPERIMENTS[wildcards.experiment].config["stage1"]


# --- inputs ------------------------------------------------------------------


def get_stage1_training_inputs(wildcards):
    pre_key = STAGE1[wildcards.stage1_key].pre_key
    cases = SPLITS["folds"][int(wildcards.fold)]["train"]
    return [PRE_NPZ.format(pre_key=pre_key, case=c) for c in cases]


def get_stage1_npz(wildcards):
    return PRE_NPZ.format(
        pre_key=STAGE1[wildcards.stage1_key].pre_key, case=wildcards.case
    )


def get_stage1_models(wildcards):
    """Out-of-fold for training cases (the fold that did not see the case); all folds otherwise."""
    held_out = splits.held_out_fold(SPLITS, wildcards.case)
    folds = FOLDS if held_out is None else [held_out]
    return [S1_MODEL.format(stage1_key=wildcards.stage1_key, fold=k) for k in folds]


def get_roi_stage1_mask(wildcards):
    return S1_MASK.format(
        stage1_key=ROIS[wildcards.roi_key].stage1_key, case=wildcards.case
    )


def get_stage2_training_inputs(wildcards):
    roi_key = EXPERIMENTS[wildcards.experiment].roi_key
    cases = SPLITS["folds"][int(wildcards.fold)]["train"]
    return [ROI_NPZ.format(roi_key=roi_key, case=c) for c in cases]


def get_rois(wildcards):
    roi_key = EXPERIMENTS[wildcards.experiment].roi_key
    return {
        "rois": ROI_NPZ.format(roi_key=roi_key, case=wildcards.case),
        "info": ROI_INFO.format(roi_key=roi_key, case=wildcards.case),
    }


def get_stage1_info(wildcards):
    key = EXPERIMENTS[wildcards.experiment].stage1_key
    return S1_INFO.format(stage1_key=key, case=wildcards.case)


def get_experiment_stage1_models(wildcards):
    key = EXPERIMENTS[wildcards.experiment].stage1_key
    return [S1_MODEL.format(stage1_key=key, fold=k) for k in FOLDS]


def get_stage2_models(wildcards):
    return [f"results/{wildcards.experiment}/stage2/models/fold_{k}.pt" for k in FOLDS]


def get_training_curve(wildcards):
    if wildcards.stage == "1":
        key = EXPERIMENTS[wildcards.experiment].stage1_key
        return S1_CURVE.format(stage1_key=key, fold=wildcards.fold)
    return (
        f"results/{wildcards.experiment}/stage2/models/fold_{wildcards.fold}_loss.csv"
    )


def get_benchmark_files(wildcards):
    """The benchmark TSVs of every computing job behind an experiment (see the benchmark: lines)."""
    e = EXPERIMENTS[wildcards.experiment]
    files = [bench_path(f"shared/data-{DATA_KEY}/dataset_statistics.tsv")]
    if USE_PHANTOMS:
        files.append(bench_path(f"shared/data-{DATA_KEY}/make_phantoms.tsv"))
    for c in CASES:
        files.append(bench_path(f"shared/pre-{e.pre_key}/{c}.tsv"))
        files.append(bench_path(f"shared/stage1-{e.stage1_key}/predict/{c}.tsv"))
        files.append(bench_path(f"shared/rois-{e.roi_key}/{c}.tsv"))
    for k in FOLDS:
        files.append(bench_path(f"shared/stage1-{e.stage1_key}/train/fold_{k}.tsv"))
        files.append(bench_path(f"{e.name}/train_stage2/fold_{k}.tsv"))
    files += [bench_path(f"{e.name}/predict_stage2/{c}.tsv") for c in PREDICT_CASES]
    return files


# --- targets -----------------------------------------------------------------


def experiment_targets(name):
    """Everything a full run of experiment ``name`` produces."""
    r = f"results/{name}"
    return [
        *[f"{r}/predictions/{c}.nii.gz" for c in PREDICT_CASES],
        f"{r}/evaluation/per_case.csv",
        f"{r}/evaluation/summary.csv",
        f"{r}/evaluation/plots/dice.png",
        *[f"{r}/evaluation/overlays/{c}.png" for c in EVAL_CASES],
        *[f"{r}/plots/training/stage{s}_fold_{k}.png" for s in (1, 2) for k in FOLDS],
        f"{r}/evaluation/benchmarks.csv",
        f"{r}/provenance.json",
    ]


def get_predict_targets():
    """Predictions of the predict_dir scans, or else of this data set's validation and unlabeled cases."""
    if PREDICT_DIR:
        return [
            f"results/{EXP}/external/predictions/{c}.nii.gz" for c in EXTERNAL_CASES
        ]
    return [f"results/{EXP}/predictions/{c}.nii.gz" for c in PREDICT_CASES]


def get_submission_targets():
    """Challenge-named copies: of the predict_dir scans, or else of this data set's unlabeled cases."""
    folder = (
        f"results/{EXP}/external/submission"
        if PREDICT_DIR
        else f"results/{EXP}/submission"
    )
    cases = EXTERNAL_CASES if PREDICT_DIR else SPLITS["unlabeled"]
    return [f"{folder}/prediction_{c[len('case_'):]}.nii.gz" for c in cases]


# --- Table 1 -------------------------------------------------------------------


def table1_rows():
    """One row per variant: where its numbers come from, and the paper's for reference."""
    rows = []
    for v in config["table1"]["variants"]:
        e = EXPERIMENTS[experiments.variant_experiment(config, v)]
        if v["stage"] == 1:
            key = e.stage1_key
            sources = [S1_INFO.format(stage1_key=key, case=c) for c in EVAL_CASES]
        else:
            sources = [f"results/{e.name}/evaluation/per_case.csv"]
        rows.append(
            {
                **{k: v[k] for k in ("name", "stage", "method", "paper")},
                "experiment": e.name,
                "sources": sources,
            }
        )
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
