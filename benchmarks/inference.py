"""Inference of a KiTS19-sized scan: the cascade before and after, vs one full-resolution network, vs MONAI.

Usage:
    python benchmarks/inference.py                       # demo network sizes, (a0) (a) (b) (c) on a 138x512x512 scan
    python benchmarks/inference.py --sizes paper --threads 2 --folds 5 --ours-only  # the paper's networks, 5 folds
    python benchmarks/inference.py --sizes paper --threads 2 --folds 5 --mirror     # the same, (a) mirrored
    python benchmarks/inference.py --ours-only --small   # a quick run that installs nothing
    python benchmarks/inference.py --big-scan            # time and memory of every step on a 1,000-slice scan

(a0) the cascade as earlier versions ran it: every stage-1 window (no body
    mask), stage-1 overlap 0.5, float32 on the CPU.
(a) the cascade at the config's settings (body windows, its overlaps, its CPU
    precision), through the workflow's own steps on the scan's files, as
    ``kitscascade-predict`` runs them (``stage1.preprocess``, ``stage1.predict``,
    ``roi.crop_rois``, ``stage2.predict``). The networks are untrained, so the
    ROIs come from the ground-truth kidneys. Seconds are split into read
    (NIfTI data decoded), preprocess, stage 1, crop, stage 2, paste and write.
(b) single stage: the stage-2 network (CT channel only) slid over the whole
    full-resolution scan at the config's CPU precision, read and written the
    same way (every window: a full-resolution network has no body mask here).
(c) ``kitscascade.infer.sliding_window_predict`` vs MONAI's
    ``sliding_window_inference``: the stage-1 network over the stage-1 volume,
    overlap 0.5, Gaussian weights (sigma 1/8 of the patch), the same number of
    windows per batch, float32; MONAI runs in its own venv (installed once under
    ~/.cache/kitscascade-bench/, torch==2.13.0) with the same weights.

Networks, window overlaps and batches come from config/config.yaml
(``--sizes paper``: config/kits19.yaml layered over it; ``--stage1-overlap``
overrides stage 1's in (a)), with random weights (timing does not depend on
them); ``--folds`` checkpoints per stage, ensembled as the workflow does. No
mirroring unless ``--mirror`` (then only (a), with the config's axes); (b)
and (c) run with one fold only. Every run is a fresh process with ``--threads`` torch
threads, repeated ``--repeats`` times alternating with its rivals (the
fastest kept); wall time includes reading and writing the files, peak RSS
(``ru_maxrss``) includes everything.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from preprocess import CACHE, CASE_ID, CASES, ROOT, best_of, machine, peak_rss_mb, peer_python, run_worker, write_case

BIG_SCAN = ((1000, 512, 512), (0.5, 0.78, 0.78))  # a thin-slice scan; stage 1 keeps its 1,000 slices
MEMORY_BOUND_MB = 8000


BEFORE = {  # (a0): the code path of earlier versions
    "stage1": {"body_threshold_hu": None, "inference": {"overlap": 0.5, "cpu_precision": "fp32"}},
    "stage2": {"inference": {"cpu_precision": "fp32"}},
}


def stage_config(stage: str, sizes: str, overrides: dict | None = None) -> dict:
    """A section of config/config.yaml, validated; ``sizes`` paper: config/kits19.yaml layered over it;
    ``overrides`` (stage -> section) on top. Stage 2 predicts in its ROIs as cropped (``roi_growth_steps``
    0): whether an untrained network's output reaches a box's face is chance, and each growth would add
    one stage-2 pass of a larger ROI to the time."""
    from kitscascade import config

    files = [config.DEFAULT_CONFIG] + ([ROOT / "config" / "kits19.yaml"] if sizes == "paper" else [])
    section = config.deep_merge(config.load_config(*files)[stage], (overrides or {}).get(stage, {}))
    if stage == "stage2":
        section["roi_growth_steps"] = 0
    return section


def untrained(network: dict):
    """The network with seed-0 random weights, in eval mode."""
    import torch

    from kitscascade.networks import build_network

    torch.manual_seed(0)
    return build_network(**network).eval()


def n_windows(shape, patch, overlap: float = 0.5) -> int:
    """How many windows ``sliding_window_predict`` evaluates on ``shape``."""
    from kitscascade.infer import sliding_window_starts

    return math.prod(len(sliding_window_starts(max(n, p), p, overlap)) for n, p in zip(shape, patch))


def dims(shape) -> str:
    return "x".join(map(str, shape))


# --------------------------------------------------------------------------
# workers: one timed job each, in a fresh process
# --------------------------------------------------------------------------


def stage1_volume(case, s1: dict, fg: dict) -> np.ndarray:
    """The case on the stage-1 grid (in-plane spacing doubled), clipped and z-scored: (1, Z, Y, X) float32."""
    from kitscascade.normalize import clip_and_zscore
    from kitscascade.resample import resample_volume, target_shape

    grid = target_shape(case.image.shape, case.spacing, [s * f for s, f in zip(case.spacing, s1["spacing_factor"])])
    image = resample_volume(case.image, grid, s1["image_order"])
    return clip_and_zscore(image, fg["lower"], fg["upper"], fg["mean"], fg["std"])[None]


def untrained_checkpoints(network: dict, folder: Path, stage: str, folds: int, regions=None) -> list[str]:
    """``folds`` checkpoints of the network, saved as train_model saves them (random weights, one seed each;
    ``regions``: what a region-based stage 2 was trained for)."""
    import torch

    from kitscascade.networks import build_network

    paths = []
    for fold in range(folds):
        torch.manual_seed(fold)
        paths.append(str(folder / f"{stage}_fold_{fold}.pt"))
        torch.save({"network": network, "model_state": build_network(**network).state_dict(),
                    "regions": regions}, paths[-1])
    return paths


class StepClock:
    """Seconds spent in reading NIfTI data (``io.read_data``), writing NIfTI files (``io.write_nifti``) and
    pasting ROIs (``roi.paste_roi``), by wrapping those functions of the package in this process."""

    def __init__(self) -> None:
        from kitscascade import io, roi

        self.seconds = {"read": 0.0, "write": 0.0, "paste": 0.0}
        for module, name, kind in ((io, "read_data", "read"), (io, "write_nifti", "write"), (roi, "paste_roi", "paste")):
            setattr(module, name, self.timed(getattr(module, name), kind))

    def timed(self, function, kind: str):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[kind] += time.perf_counter() - start
        return wrapper

    def step(self, function, *args):
        """Run a step; returns (its result, its seconds less the reads, writes and pastes inside it)."""
        before = sum(self.seconds.values())
        start = time.perf_counter()
        result = function(*args)
        return result, time.perf_counter() - start - (sum(self.seconds.values()) - before)


def stage1_windows(npz_path, patch, overlap: float) -> tuple[int, int]:
    """(windows that run, all windows) of stage 1 on a preprocessed case, as ``sliding_window_predict`` pads it."""
    from kitscascade import io
    from kitscascade.infer import padding, window_boxes

    arrays = io.load_npz(npz_path)
    padded, crop = padding(arrays["image"].shape[1:], patch)
    body = arrays.get("body")
    if body is not None and body.any():  # an empty body sweeps everything (stage1.predict)
        full = np.zeros(padded, bool)
        full[crop] = body
        body = full
    else:
        body = None
    return len(window_boxes(padded, patch, overlap, body)), len(window_boxes(padded, patch, overlap))


def run_cascade(job: dict) -> dict:
    """(a0) and (a): both stages of one case through the workflow's own steps, files in, files out:
    ``stage1.preprocess``, ``stage1.predict``, ``roi.crop_rois``, ``stage2.predict``. The networks are
    untrained, so the ROIs come from the true kidneys, written as stage 1's mask (outside the timing)."""
    import tempfile

    from kitscascade import io, roi, stage1, stage2

    s1, s2 = (stage_config(stage, job["sizes"], job["overrides"]) for stage in ("stage1", "stage2"))
    labels = stage_config("labels", job["sizes"])
    if job["stage1_overlap"] is not None:
        s1["inference"]["overlap"] = job["stage1_overlap"]
    for cfg in (s1, s2):
        cfg["training"]["device"] = "cpu"
        if not job["mirror"]:
            cfg["inference"]["mirror_axes"] = []
    imaging, _ = io.case_files(job["data"], CASE_ID)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        models1 = untrained_checkpoints(stage1.network_config(s1), work, "stage1", job["folds"])
        models2 = untrained_checkpoints(stage2.network_config(s2), work, "stage2", job["folds"], stage2.regions(s2))
        kidneys = io.read_case_folder(job["data"], CASE_ID).label > 0
        io.save_for_scan(kidneys.astype(np.uint8), imaging, work / "kidneys.nii.gz")
        clock = StepClock()
        start = time.perf_counter()
        steps = {}
        _, steps["preprocess"] = clock.step(stage1.preprocess, imaging, None, CASE_ID, job["stats"], s1, labels,
                                            work / "s1.npz")
        _, steps["stage 1"] = clock.step(stage1.predict, work / "s1.npz", models1, imaging, None, CASE_ID, s1, labels,
                                         work / "mask.nii.gz", work / "labels.nii.gz", work / "s1.json", job["threads"])
        info, steps["crop"] = clock.step(roi.crop_rois, imaging, None, CASE_ID, work / "kidneys.nii.gz", job["stats"],
                                         s2, labels, work / "rois.npz", work / "rois.json")
        _, steps["stage 2"] = clock.step(stage2.predict, work / "rois.npz", work / "rois.json", models2, imaging, s2,
                                         labels, work / "out.nii.gz", job["threads"])
        seconds = time.perf_counter() - start
        ran, every = stage1_windows(work / "s1.npz", s1["patch_size"], s1["inference"]["overlap"])
        grid = io.load_npz(work / "s1.npz")["image"].shape[1:]
    rois = [[hi - lo for lo, hi in box] for box in info["bboxes"]]
    passes = 2 ** len(s1["inference"]["mirror_axes"]), 2 ** len(s2["inference"]["mirror_axes"])
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "steps": {**clock.seconds, **steps},
            "detail": f"stage 1: {ran} of {every} windows {dims(s1['patch_size'])} on {dims(grid)} x {job['folds']} "
                      f"fold(s) x {passes[0]} pass(es); stage 2: "
                      f"{sum(n_windows(r, s2['patch_size'], s2['inference']['overlap']) for r in rois)} windows "
                      f"{dims(s2['patch_size'])} on ROIs {', '.join(map(dims, rois))} x {job['folds']} fold(s) x "
                      f"{passes[1]} pass(es)"}


def run_single(job: dict) -> dict:
    """(b): the stage-2 network alone over the whole full-resolution scan, files in, files out."""
    from kitscascade import io, stage2
    from kitscascade.infer import postprocess_kidney_tumor, sliding_window_predict
    from kitscascade.train import cpu_autocast_dtype
    from kitscascade.normalize import clip_and_zscore

    s2 = stage_config("stage2", job["sizes"])
    # a softmax network over background, kidney and tumor (whatever stage2.target says), without the prior
    net = untrained(stage2.network_config(dict(s2, target="classes", network={**s2["network"], "spatial_prior": False})))
    fg = json.loads(Path(job["stats"]).read_text())["foreground"]
    imaging, _ = io.case_files(job["data"], CASE_ID)

    start = time.perf_counter()
    case = io.read_case(imaging, None, CASE_ID)
    volume = clip_and_zscore(case.image, fg["lower"], fg["upper"], fg["mean"], fg["std"])[None]
    probs = sliding_window_predict([net], volume, s2["patch_size"], 3, overlap=s2["inference"]["overlap"],
                                   batch_size=s2["inference"]["batch_size"],
                                   amp_dtype=cpu_autocast_dtype(s2["inference"]["cpu_precision"]))
    label = postprocess_kidney_tumor(probs.argmax(0).astype(np.uint8))
    io.save_for_scan(label, imaging, Path(job["stats"]).with_name("single_stage.nii.gz"))
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb(),
            "detail": f"{n_windows(label.shape, s2['patch_size'], s2['inference']['overlap'])} windows "
                      f"{dims(s2['patch_size'])} on {dims(label.shape)}"}


def run_window(job: dict) -> dict:
    """One sliding-window pass of the saved network over the saved volume, ours or MONAI's."""
    import torch

    from kitscascade.networks import build_network

    checkpoint = torch.load(job["network"], weights_only=True)
    model = build_network(**checkpoint["network"]).eval()
    model.load_state_dict(checkpoint["model_state"])
    volume = np.load(job["volume"])
    patch, batch = checkpoint["network"]["patch_size"], job["batch_size"]
    num_classes = checkpoint["network"]["num_classes"]
    start = time.perf_counter()
    if job["implementation"] == "monai":
        from monai.inferers import sliding_window_inference

        with torch.inference_mode():
            probs = sliding_window_inference(torch.from_numpy(volume)[None], patch, batch,
                                             lambda x: model(x)[0].softmax(dim=1), overlap=0.5,
                                             mode="gaussian", sigma_scale=0.125)[0].numpy()
    else:
        from kitscascade.infer import sliding_window_predict

        probs = sliding_window_predict([model], volume, patch, num_classes, overlap=0.5, batch_size=batch)
    seconds = time.perf_counter() - start
    np.save(job["out"], probs[1])
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "output": job["out"]}


def run_step(job: dict) -> dict:
    """One workflow step (``module.function`` of kitscascade) as the workflow runs it, files in, files out."""
    import importlib

    module, function = job["step"].rsplit(".", 1)
    step = getattr(importlib.import_module(f"kitscascade.{module}"), function)
    start = time.perf_counter()
    step(*job["args"])
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}


WORKERS = {"cascade": run_cascade, "single": run_single, "window": run_window, "step": run_step}


# --------------------------------------------------------------------------
# the runs
# --------------------------------------------------------------------------


def worker(python, job: dict) -> dict:
    return run_worker(python, Path(__file__), [json.dumps(job)])


STEPS = ("read", "preprocess", "stage 1", "crop", "stage 2", "paste", "write")


def compare_cascade(args, data_dir: Path, stats_path: Path) -> None:
    """(a0) and (a), and unless mirroring (b): the cascade before and now, against one network at full resolution."""
    job = {"data": str(data_dir), "stats": str(stats_path), "sizes": args.sizes, "threads": args.threads,
           "stage1_overlap": args.stage1_overlap, "folds": args.folds, "mirror": args.mirror, "kind": "cascade"}
    runs = {"(a0) cascade before": {**job, "overrides": BEFORE, "stage1_overlap": None},
            "(a) cascade": {**job, "overrides": {}}}
    if args.mirror:  # (a) only: (a0) mirrored is its unmirrored time times the passes
        del runs["(a0) cascade before"]
    elif args.folds == 1:  # (b) is one network
        runs["(b) single stage, full res"] = {**job, "kind": "single"}
    best = best_of({name: functools.partial(worker, sys.executable, run) for name, run in runs.items()}, args.repeats)
    for name, result in best.items():
        print(f"{name:30} {result['seconds']:9.1f} {result['peak_rss_mb']:12.0f}   {result['detail']}")
    a = best["(a) cascade"]["seconds"]
    if "(a0) cascade before" in best:
        print(f"{'':30} -> (a) {best['(a0) cascade before']['seconds'] / a:.1f}x faster than (a0)")
    print(f"{'':30} -> (a) {a / 60:.1f} min per case")
    if "(b) single stage, full res" in best:
        ratio = best["(b) single stage, full res"]["seconds"] / a
        print(f"{'':30} -> cascade {ratio:.1f}x faster than (b) (target >= 5x: {'met' if ratio >= 5 else 'MISSED'})")
    print(f"{'seconds per step':30} " + " ".join(f"{step:>10}" for step in STEPS))
    for name in (n for n in ("(a0) cascade before", "(a) cascade") if n in best):
        print(f"{name.split()[0] + ' steps':30} " + " ".join(f"{best[name]['steps'][step]:10.1f}" for step in STEPS))


def compare_windows(args, data_dir: Path, stats_path: Path, work: Path) -> None:
    """(c): our sliding window against MONAI's, same network and volume."""
    import torch

    from kitscascade import io, stage1, stage2

    s1 = stage_config("stage1", args.sizes)
    network = stage1.network_config(s1)
    torch.save({"network": network, "model_state": untrained(network).state_dict()}, work / "stage1_network.pt")
    case = io.read_case_folder(data_dir, CASE_ID, with_label=False)
    volume = stage1_volume(case, s1, json.loads(stats_path.read_text())["foreground"])
    grid = volume.shape[1:]
    np.save(work / "stage1_volume.npy", volume)
    del case, volume
    pythons = {"kitscascade": sys.executable}
    if not args.ours_only:
        pythons["monai"] = peer_python("monai", ["monai"])
    job = {"network": str(work / "stage1_network.pt"), "volume": str(work / "stage1_volume.npy"),
           "batch_size": s1["inference"]["batch_size"], "threads": args.threads, "kind": "window"}
    runs = {name: functools.partial(worker, python, {**job, "implementation": name,
                                                      "out": str(work / f"window_{name}.npy")})
            for name, python in pythons.items()}
    best = best_of(runs, args.repeats)
    ours = np.load(best["kitscascade"]["output"])
    for name, result in best.items():
        diff = np.abs(np.load(result["output"]) - ours).max()
        print(f"{'(c) sliding window, ' + name:30} {result['seconds']:9.1f} {result['peak_rss_mb']:12.0f}   "
              f"{n_windows(grid, network['patch_size'])} windows {dims(network['patch_size'])} on {dims(grid)}, "
              f"max |p - p_ours| {diff:.4f}")
    if "monai" in best:
        ratio = best["monai"]["seconds"] / best["kitscascade"]["seconds"]
        print(f"{'':30} -> ours {ratio:.2f}x MONAI's speed (target >= 1: {'met' if ratio >= 1 else 'MISSED'})")


def big_scan(args) -> None:
    """Every workflow step on a 1,000-slice scan, each in its own process: seconds and peak RSS."""
    import torch

    from kitscascade import io, stage1, stage2

    shape, spacing = BIG_SCAN
    data_dir = args.work / "data" / "big"
    stats_path = write_case(data_dir, shape, spacing)
    out = args.work / "big-scan"
    out.mkdir(parents=True, exist_ok=True)
    s1, s2 = stage_config("stage1", args.sizes), stage_config("stage2", args.sizes)
    models = {}
    for stage, cfg, network in ((1, s1, stage1.network_config(s1)), (2, s2, stage2.network_config(s2))):
        models[stage] = str(out / f"stage{stage}.pt")
        regions = stage2.regions(cfg) if stage == 2 else None
        torch.save({"network": network, "model_state": untrained(network).state_dict(), "regions": regions},
                   models[stage])
        cfg["training"]["device"] = "cpu"
    case = io.read_case_folder(data_dir, CASE_ID)  # an untrained stage 1's mask means nothing: stage 2 gets the true kidneys
    io.save_for_scan((case.label > 0).astype(np.uint8), data_dir / CASE_ID / io.IMAGING_NAME, out / "kidneys.nii.gz")
    del case
    imaging, segmentation = (str(p) for p in io.case_files(data_dir, CASE_ID))
    labels = stage_config("labels", args.sizes)
    steps = [
        ("stage1.preprocess", [imaging, segmentation, CASE_ID, str(stats_path), s1, labels, str(out / "stage1.npz")]),
        ("stage1.predict", [str(out / "stage1.npz"), [models[1]], imaging, segmentation, CASE_ID, s1, labels,
                            str(out / "stage1_mask.nii.gz"), str(out / "stage1_labels.nii.gz"), str(out / "stage1.json"),
                            args.threads]),
        ("roi.crop_rois", [imaging, segmentation, CASE_ID, str(out / "kidneys.nii.gz"), str(stats_path), s2, labels,
                           str(out / "rois.npz"), str(out / "rois.json")]),
        ("stage2.predict", [str(out / "rois.npz"), str(out / "rois.json"), [models[2]], imaging, s2, labels,
                            str(out / "prediction.nii.gz"), args.threads]),
        ("metrics.evaluate_case", [imaging, segmentation, CASE_ID, str(out / "prediction.nii.gz"),
                                   str(out / "stage1.json"), str(out / "rois.json"),
                                   stage_config("evaluation", args.sizes), labels, str(out / "evaluation.csv")]),
    ]
    print(f"big scan: {dims(shape)} at {spacing} mm; memory bound {MEMORY_BOUND_MB} MB per step")
    print(f"{'step':20} {'seconds':>9} {'peak RSS MB':>12}")
    for step, step_args in steps:
        result = worker(sys.executable, {"kind": "step", "step": step, "args": step_args, "threads": args.threads})
        within = "within" if result["peak_rss_mb"] < MEMORY_BOUND_MB else "OVER"
        print(f"{step:20} {result['seconds']:9.1f} {result['peak_rss_mb']:12.0f}   {within} the bound")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", choices=("demo", "paper"), default="demo",
                        help="network sizes: the demo's (config/config.yaml) or the paper's (config/kits19.yaml)")
    parser.add_argument("--folds", type=int, default=1, help="fold models per stage in (a0) and (a)")
    parser.add_argument("--mirror", action="store_true", help="only (a), with the config's test-time mirroring")
    parser.add_argument("--small", action="store_true", help="a small scan (a quick check)")
    parser.add_argument("--ours-only", action="store_true", help="skip MONAI (nothing is installed)")
    parser.add_argument("--big-scan", action="store_true", help="only the 1,000-slice memory check")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each, alternating; the fastest is kept")
    parser.add_argument("--stage1-overlap", type=float, help="stage-1 window overlap in (a) (default: the config's)")
    parser.add_argument("--work", type=Path, default=CACHE, help="folder for the phantoms and outputs")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        job = json.loads(args.worker)
        if "threads" in job:
            import torch

            torch.set_num_threads(job["threads"])
        print(json.dumps(WORKERS[job["kind"]](job)))
        return
    from kitscascade.train import cpu_has_native_bf16  # not in a worker: MONAI's venv has no kitscascade deps

    print(f"machine: {machine()}; {args.threads} torch thread(s) per run; {args.sizes} network sizes; "
          f"CPU bfloat16 {'native' if cpu_has_native_bf16() else 'emulated'}")
    if args.big_scan:
        big_scan(args)
        return
    name = "small" if args.small else "kits"
    shape, spacing = CASES[name]
    data_dir = args.work / "data" / name
    stats_path = write_case(data_dir, shape, spacing)
    work = args.work / "inference" / name
    work.mkdir(parents=True, exist_ok=True)
    print(f"scan {dims(shape)} at {spacing} mm")
    print(f"{'run':30} {'seconds':>9} {'peak RSS MB':>12}   detail")
    compare_cascade(args, data_dir, stats_path)
    if not args.mirror and args.folds == 1:
        compare_windows(args, data_dir, stats_path, work)


if __name__ == "__main__":
    main()
