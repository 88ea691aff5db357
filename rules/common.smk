# Path helpers, case lists and wildcard constraints; nothing else.
from pathlib import Path

from kitscascade import io, splits

EXP = config["experiment"]
DATA_DIR = config["data_dir"] or f"results/{EXP}/phantoms"
USE_PHANTOMS = not config["data_dir"]


wildcard_constraints:
    case=r"case_\d{5}",
    fold=r"\d+",


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


def get_stage2_models(wildcards):
    return [res(f"stage2/models/fold_{k}.pt") for k in FOLDS]


def get_final_targets():
    return [
        *[res(f"predictions/{c}.nii.gz") for c in PREDICT_CASES],
        res("evaluation/per_case.csv"),
        res("evaluation/summary.csv"),
    ]


def threads_for(key):
    return config["resources"][key]


def gpu_resources():
    return config["resources"]["gpu"]
