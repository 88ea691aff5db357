"""Predicting new scans with an exported model (``model.zip``): the cascade for one scan, and a command.

``predict_case`` runs the workflow's own steps on one scan, in a scratch
folder: ``stage1.preprocess``, ``stage1.predict``, ``roi.crop_rois`` and
``stage2.predict``, with the model's statistics, config and fold
checkpoints. The prediction is therefore the one the workflow makes for that
scan with the same models (byte for byte on the same machine, device and
thread count), in the scan's own geometry.

The command ``kitscascade-predict`` (installed with the package)::

    kitscascade-predict -m model.zip -i IN -o OUT_DIR [--device auto|cpu|cuda] [--folds 0 1 ...]
                        [--mirror | --no-mirror] [--roi-growth-steps N] [--threads N] [--overwrite]

``IN`` is one ``.nii``/``.nii.gz`` file, a folder of them, or a folder of
case folders holding ``imaging.nii.gz`` (the KiTS layout). Each prediction is
``OUT_DIR/<name>.nii.gz`` (``name``: the file's name without ``.nii.gz``, or
the case folder's). Every scan's header is checked before any is predicted;
predictions already in ``OUT_DIR`` are kept unless ``--overwrite``.
``--roi-growth-steps`` overrides the model's ``stage2.roi_growth_steps``
(0: stage 2 predicts in the ROIs as cropped, the paper's; archives older
than format 5 read 0).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from kitscascade import check, io, roi, stage1, stage2
from kitscascade.model import Model, ModelError, open_model

log = logging.getLogger(__name__)
NIFTI_SUFFIXES = (".nii.gz", ".nii")


def scan_name(path) -> str:
    """A scan file's name without ``.nii.gz`` / ``.nii``."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def find_scans(path) -> dict[str, Path]:
    """The scans to predict: name -> imaging file, for one NIfTI file, a folder of them, or a KiTS-layout folder.

    Raises ``io.CaseError`` when ``path`` holds none, or two scans of one name.
    """
    path = Path(path)
    if path.is_file():
        return {io.check_case_id(scan_name(path)): path}
    if not path.is_dir():
        raise io.CaseError(f"{path}: no such file or folder")
    if any((entry / io.IMAGING_NAME).exists() for entry in path.iterdir() if entry.is_dir()):
        return {case: path / case / io.IMAGING_NAME for case in io.list_cases(path)}
    files = sorted(p for p in path.iterdir()  # hidden files (macOS' ._scan.nii.gz) are not scans
                   if p.is_file() and p.name.endswith(NIFTI_SUFFIXES) and not p.name.startswith("."))
    if not files:
        raise io.CaseError(f"{path}: no .nii.gz or .nii files, and no case folders with {io.IMAGING_NAME}")
    scans = {}
    for file in files:
        name = io.check_case_id(scan_name(file))
        if name in scans:
            raise io.CaseError(f"{file}: a second scan named {name!r} (also {scans[name].name})")
        scans[name] = file
    return scans


def check_roi_growth_steps(value) -> None:
    """Raise ``ValueError`` unless ``value`` is ``None`` or an integer >= 0 (an override of the model's
    ``stage2.roi_growth_steps``)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"roi_growth_steps: expected an integer >= 0, got {value!r}")


def predict_case(model: Model, imaging_path, out_path, execution: dict | None = None, mirror: bool = True,
                 threads: int = 1, folds=None, roi_growth_steps: int | None = None) -> dict[str, float]:
    """Both stages of one scan, written to ``out_path`` in its geometry; returns the seconds of each step.

    ``execution``: values of ``config.EXECUTION_KEYS`` for this machine (e.g.
    ``{"device": "cpu"}``); ``mirror``: the model's test-time mirroring, or
    none; ``folds``: the folds to ensemble in both stages (default: each
    stage's ``inference.folds`` first folds of the model's, as the workflow
    predicts); ``roi_growth_steps``: stage 2's ``roi_growth_steps`` instead of
    the model's (``None``: the model's; else an integer >= 0, or ``ValueError``).
    """
    check_roi_growth_steps(roi_growth_steps)
    cfg1 = model.stage_config("stage1", execution, mirror)
    cfg2 = model.stage_config("stage2", execution, mirror)
    if roi_growth_steps is not None:
        cfg2["roi_growth_steps"] = roi_growth_steps
    name, seconds = scan_name(imaging_path), {}
    with tempfile.TemporaryDirectory(prefix="kitscascade-") as scratch:
        work = Path(scratch)
        start = time.perf_counter()
        stage1.preprocess(imaging_path, None, name, model.statistics, cfg1, model.labels, work / "stage1.npz")
        seconds["preprocess"] = time.perf_counter() - start
        models1 = model.checkpoints("stage1", folds or model.folds[:cfg1["inference"]["folds"]])
        stage1.predict(work / "stage1.npz", models1, imaging_path, None, name, cfg1, model.labels,
                       work / "mask.nii.gz", work / "stage1_labels.nii.gz", work / "stage1.json", threads)
        seconds["stage 1"] = time.perf_counter() - start - seconds["preprocess"]
        roi.crop_rois(imaging_path, None, name, work / "mask.nii.gz", model.statistics, cfg2, model.labels,
                      work / "rois.npz", work / "rois.json")
        seconds["crop"] = time.perf_counter() - start - sum(seconds.values())
        models2 = model.checkpoints("stage2", folds or model.folds[:cfg2["inference"]["folds"]])
        stage2.predict(work / "rois.npz", work / "rois.json", models2, imaging_path, cfg2, model.labels, out_path,
                       threads, work / "mask.nii.gz", model.statistics)
        seconds["stage 2"] = time.perf_counter() - start - sum(seconds.values())
    return seconds


def predict_scans(model: Model, scans: dict, out_dir, execution: dict | None = None, mirror: bool = True,
                  threads: int = 1, overwrite: bool = False, progress: bool = True, folds=None,
                  roi_growth_steps: int | None = None) -> list[Path]:
    """:func:`predict_case` for every scan (name -> imaging file) into ``out_dir/<name>.nii.gz``.

    Every scan is checked first (``check.check_case``: headers, file size);
    any problem stops it before any work with ``io.CaseError``, one line per
    bad scan. Predictions already there are kept unless ``overwrite``.
    ``folds`` and ``roi_growth_steps`` as in :func:`predict_case` (a bad
    ``roi_growth_steps`` is a ``ValueError`` before any scan is read). Returns
    the predictions written.
    """
    check_roi_growth_steps(roi_growth_steps)
    problems = [row["problem"] for name, path in scans.items()
                if (row := check.check_case(path, None, name, model.labels))["problem"]]
    if problems:
        raise io.CaseError(f"{len(problems)} of {len(scans)} scans cannot be used:\n" + "\n".join(problems))
    out_dir = Path(out_dir)
    todo = {n: p for n, p in scans.items() if overwrite or not (out_dir / f"{n}.nii.gz").exists()}
    if len(todo) < len(scans):
        log.info("%d of %d predictions exist already (--overwrite to redo them)", len(scans) - len(todo), len(scans))
    written = []
    for name, path in tqdm(todo.items(), desc="predict", unit="scan", disable=not progress):
        seconds = predict_case(model, path, out_dir / f"{name}.nii.gz", execution, mirror, threads, folds,
                               roi_growth_steps)
        log.info("%s: %s", name, ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
        written.append(out_dir / f"{name}.nii.gz")
    return written


def select_device(device: str):
    from kitscascade.train import select_device as select

    return select(device)


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="kitscascade-predict", description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", required=True, help="the exported model (snakemake export_model)")
    parser.add_argument("-i", "--input", required=True, help="a .nii(.gz) scan, a folder of them, or case folders")
    parser.add_argument("-o", "--output", required=True, help="the folder for the predictions")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    # a bad --device is caught before any work (select_device imports torch, which the scans need anyway)
    parser.add_argument("--folds", type=int, nargs="+", help="folds to ensemble (default: the model's inference.folds, all unless set)")
    parser.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=True,
                        help="the model's test-time mirroring (default), or none: 8x faster, slightly less accurate")
    parser.add_argument("--roi-growth-steps", type=non_negative_int, metavar="N",
                        help="grow an ROI whose kidney reaches its box up to N times (default: the model's "
                             "stage2.roi_growth_steps; 0: the ROIs as cropped)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of torch (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="predict scans whose prediction exists already")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        select_device(args.device)
        scans = find_scans(args.input)
        with tempfile.TemporaryDirectory(prefix="kitscascade-model-") as folder:
            model = open_model(args.model, folder, args.folds)
            written = predict_scans(model, scans, args.output, {"device": args.device}, args.mirror, args.threads,
                                    args.overwrite, folds=args.folds, roi_growth_steps=args.roi_growth_steps)
    except (ModelError, io.CaseError, ValueError) as error:
        print(f"kitscascade-predict: {error}", file=sys.stderr)
        return 2
    print(f"{len(written)} prediction(s) written to {args.output}, {len(scans) - len(written)} kept")
    return 0


if __name__ == "__main__":
    sys.exit(main())
