# Path helpers, case lists and wildcard constraints; nothing else.
from pathlib import Path

from kitscascade import io, splits

EXP = config["experiment"]
DATA_DIR = config["data_dir"] or f"results/{EXP}/phantoms"
USE_PHANTOMS = not config["data_dir"]


wildcard_constraints:
    case=r"case_\d{5}",
    fold=r"\d+",
    number=r"\d{5}",


def res(path):
    """Path of an artifact of this experiment: results/<experiment>/<path>."""
    return f"results/{EXP}/{path}"


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
# scans to predict with the trained models (`snakemake predict`), e.g. the KiTS19 test set
PREDICT_DIR = config["predict_dir"]
EXTERNAL_CASES = io.list_cases(PREDICT_DIR) if PREDICT_DIR else []
EVAL_CASES = SPLITS["validation"]
PREDICT_CASES = SPLITS["validation"] + SPLITS["unlabeled"]


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


def log_path(path):
    return f"logs/{EXP}/{path}"


def bench_path(path):
    return f"benchmarks/{EXP}/{path}"


def fold_train_cases(fold):
    return SPLITS["folds"][int(fold)]["train"]


def get_stage1_models(wildcards):
    """Out-of-fold for training cases (the fold that did not see the case); all folds otherwise."""
    held_out = splits.held_out_fold(SPLITS, wildcards.case)
    folds = FOLDS if held_out is None else [held_out]
    return [res(f"stage1/models/fold_{k}.pt") for k in folds]


def get_external_case_inputs(wildcards):
    files = [f"{PREDICT_DIR}/{wildcards.case}/imaging.nii.gz"]
    if io.has_segmentation(PREDICT_DIR, wildcards.case):
        files.append(f"{PREDICT_DIR}/{wildcards.case}/segmentation.nii.gz")
    return files


def get_all_stage1_models(wildcards):
    return [res(f"stage1/models/fold_{k}.pt") for k in FOLDS]


def get_stage2_models(wildcards):
    return [res(f"stage2/models/fold_{k}.pt") for k in FOLDS]


def get_final_targets():
    return [
        *[res(f"predictions/{c}.nii.gz") for c in PREDICT_CASES],
        res("evaluation/per_case.csv"),
        res("evaluation/summary.csv"),
        res("evaluation/plots/dice.png"),
        *[res(f"evaluation/overlays/{c}.png") for c in EVAL_CASES],
        *[res(f"plots/training/stage{s}_fold_{k}.png") for s in (1, 2) for k in FOLDS],
        res("evaluation/benchmarks.csv"),
    ]


def get_benchmark_files(wildcards):
    """The benchmark TSVs of every computing job of a full run (see the rules' benchmark: lines)."""
    per_case = ["preprocess_stage1", "predict_stage1", "crop_rois"]
    files = [bench_path("dataset_statistics.tsv")]
    files += [bench_path(f"{rule}/{c}.tsv") for rule in per_case for c in CASES]
    files += [bench_path(f"predict_stage2/{c}.tsv") for c in PREDICT_CASES]
    files += [bench_path(f"train_stage{s}/fold_{k}.tsv") for s in (1, 2) for k in FOLDS]
    if USE_PHANTOMS:
        files.append(bench_path("make_phantoms.tsv"))
    return files


def get_predict_targets():
    """Predictions of the predict_dir scans, or else of this data set's validation and unlabeled cases."""
    if PREDICT_DIR:
        return [res(f"external/predictions/{c}.nii.gz") for c in EXTERNAL_CASES]
    return [res(f"predictions/{c}.nii.gz") for c in PREDICT_CASES]


def get_submission_targets():
    """Challenge-named copies: of the predict_dir scans, or else of this data set's unlabeled cases."""
    if PREDICT_DIR:
        return [
            res(f"external/submission/prediction_{c[len('case_'):]}.nii.gz")
            for c in EXTERNAL_CASES
        ]
    return [
        res(f"submission/prediction_{c[len('case_'):]}.nii.gz")
        for c in SPLITS["unlabeled"]
    ]


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
    """Wall-time limit in minutes of a job of ``kind`` (train, network or imaging)."""
    return config["resources"][f"{kind}_runtime"]
