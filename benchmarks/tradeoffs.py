"""Speed against accuracy at inference: body windows, stage-1 overlap, mirroring, and the folds ensembled.

Usage:
    python benchmarks/tradeoffs.py                          # results/demo after `make demo`
    python benchmarks/tradeoffs.py --results R --experiment E --threads 2 --repeats 2

Takes a trained experiment (``results/<experiment>/model.zip``, made by ``make
demo`` or ``snakemake export_model``), its held-out validation cases (the
split of its data folder) and predicts each case with every setting below,
through ``kitscascade.predict.predict_case``: the workflow's own steps from
the scan file to the written prediction, as ``kitscascade-predict`` runs them.
Each setting changes one thing against the experiment's own config in
float32 with the body windows on (``body windows``); the first row switches
the body windows off (the code path of earlier versions). Reported: mean kidney and tumor Dice
over the cases (KiTS19 regions, ``metrics.score_case``) and mean seconds per
case, in total and for stage 1 (its preprocessing included). With
``--repeats`` each case is predicted that many times per setting and the
fastest time kept (the Dice does not change: CPU inference is deterministic).
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from kitscascade.config import deep_merge

ROOT = Path(__file__).resolve().parents[1]


def both(**inference) -> dict:
    """The same ``inference`` overrides for both stages."""
    return {"stage1": {"inference": inference}, "stage2": {"inference": dict(inference)}}


def settings() -> list[tuple[str, dict]]:
    """(name, overrides of the model's stage1/stage2 config) per row. Every row but the first has the body
    windows on, and every row but the bf16 ones runs in float32 on the CPU, so that each changes one thing
    against the second row (whatever the model's own config says: a version-1 archive predicts without
    body windows, in float32)."""
    base = {"stage1": {"body_threshold_hu": -500}}
    rows = [
        ("full sweep (no body windows)", {"stage1": {"body_threshold_hu": None}}),
        ("body windows", {}),
        ("bf16 on the CPU", both(cpu_precision="bf16")),
        ("stage-1 overlap 0.25", {"stage1": {"inference": {"overlap": 0.25}}}),
        ("stage-2 overlap 0.25", {"stage2": {"inference": {"overlap": 0.25}}}),
        ("stage-1 ensemble of 1 fold", {"stage1": {"inference": {"folds": 1}}}),
        ("no mirroring", both(mirror_axes=[])),
        ("mirror X, both stages", both(mirror_axes=[2])),
        ("mirror Y and X, both stages", both(mirror_axes=[1, 2])),
        ("mirror Z, Y and X, both stages", both(mirror_axes=[0, 1, 2])),
        ("stage-1 overlap 0.25 + bf16", deep_merge(both(cpu_precision="bf16"),
                                                   {"stage1": {"inference": {"overlap": 0.25}}})),
    ]
    fp32 = deep_merge(base, both(cpu_precision="fp32"))
    return [(name, deep_merge(base if "bf16" in name else fp32, overrides)) for name, overrides in rows]


def main() -> None:
    from kitscascade import io, metrics, model, predict

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "results", help="the workflow's results folder")
    parser.add_argument("--experiment", default="demo", help="the trained experiment (its model.zip)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    parser.add_argument("--repeats", type=int, default=1, help="predictions of each case per setting (fastest kept)")
    parser.add_argument("--only", nargs="+", help="run only the settings whose names start with these")
    args = parser.parse_args()

    provenance = io.load_json(args.results / args.experiment / "provenance.json")
    data = args.results.parent / provenance["shared_artifacts"]["data"]
    data_dir = Path(provenance["config"]["data_dir"] or data / "phantoms")
    cases = io.load_json(data / "splits.json")["validation"]
    labels = provenance["config"]["labels"]
    evaluation = provenance["config"]["evaluation"]
    with tempfile.TemporaryDirectory(prefix="kitscascade-tradeoffs-") as scratch:
        work = Path(scratch)
        trained = model.open_model(args.results / args.experiment / "model.zip", work / "model")
        print(f"{args.experiment}: {len(cases)} validation cases ({', '.join(cases)}), folds {trained.folds}, "
              f"{args.threads} thread(s), best of {args.repeats}")
        print(f"{'setting':34} {'kidney Dice':>11} {'tumor Dice':>10} {'s/case':>7} {'stage 1 s':>9}")
        for name, overrides in settings():
            if args.only and not any(name.startswith(o) for o in args.only):
                continue
            manifest = copy.deepcopy(trained.manifest)
            manifest["config"] = deep_merge(manifest["config"], overrides)
            variant = model.Model(trained.folder, manifest)
            kidney, tumor, total, stage1 = [], [], [], []
            for case in cases:
                imaging, segmentation = io.case_files(data_dir, case)
                best = None
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    seconds = predict.predict_case(variant, imaging, work / f"{case}.nii.gz", {"device": "cpu"},
                                                   threads=args.threads)
                    seconds["total"] = time.perf_counter() - start
                    best = seconds if best is None or seconds["total"] < best["total"] else best
                row = metrics.score_case(imaging, segmentation, case, work / f"{case}.nii.gz", evaluation, labels)
                kidney.append(row["kidney_dice"])
                tumor.append(row["tumor_dice"])
                total.append(best["total"])
                stage1.append(best["preprocess"] + best["stage 1"])
            print(f"{name:34} {np.mean(kidney):11.4f} {np.mean(tumor):10.4f} {np.mean(total):7.2f} "
                  f"{np.mean(stage1):9.2f}", flush=True)


if __name__ == "__main__":
    main()
