"""GPU check at the paper's sizes: the training loop, its speed settings, memory, and inference per case.

Usage:
    python benchmarks/gpu_check.py                 # on a CUDA machine, config/kits19.yaml sizes (about 10 min)
    python benchmarks/gpu_check.py --smoke         # tiny sizes on the CPU, in seconds (a test of this script)

Everything runs through the functions the workflow runs:

1. Training (``train.train_model``, the real loop with its background
   loader) of each stage at the paper's sizes (stage 1: U-Net, patch
   80x160x160, batch 2; stage 2: residual U-Net, patch 40x128x128, batch 5;
   30 base features) on synthetic volumes of realistic size, with 0 loader
   workers and with the number config/kits19.yaml's ``resources.threads``
   gives (threads - 1). Reported: seconds per iteration after ``--warmup``
   iterations, the GPU's busy fraction (1 - the loop's time waiting for
   batches / wall time), and the peak GPU memory reserved against the
   V100's 32 GB that the paper trained on.
2. Speed settings, one at a time from config/kits19.yaml's: ``precision``
   fp16 / bf16 / fp32, ``cudnn_benchmark`` off, ``channels_last`` on.
3. Inference of one 138x512x512 phantom (3 x 0.78 x 0.78 mm) through
   ``stage1.preprocess``, ``stage1.predict``, ``roi.crop_rois`` and
   ``stage2.predict`` with 5 untrained fold models per stage, with and
   without mirroring (stage 2 gets the true kidneys, as an untrained stage 1
   finds none).
4. The full config/kits19.yaml training (5 folds x 125,000 + 100,000
   iterations) extrapolated in GPU-hours from the seconds per iteration of 1.,
   against the paper's ~18 h + 30 h per fold on a V100.
"""

from __future__ import annotations

import argparse
import copy
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from loader import paper_config, stage_setup
from kitscascade import fingerprint, io, phantoms, roi, stage1, stage2
from kitscascade.networks import build_network, count_parameters
from kitscascade.train import train_model

V100_GB = 32
PAPER_HOURS_PER_FOLD = {"stage1": 18.0, "stage2": 30.0}  # the paper's training times on a V100
CASE = ((138, 512, 512), (3.0, 0.78, 0.78))
SMOKE_CASE = ((24, 96, 96), (6.0, 2.0, 2.0))


def gpu_memory_gb(device) -> float:
    return torch.cuda.max_memory_reserved() / 1e9 if device.type == "cuda" else float("nan")


def time_training(network: dict, training: dict, volumes, iterations: int, warmup: int, work: Path,
                  device) -> dict:
    """``train_model`` for ``warmup + iterations`` steps; s/iteration, busy fraction and peak memory after warm-up."""
    training = dict(training, iterations=warmup + iterations, log_every=1, checkpoint_every=10**9)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    train_model(volumes, network, training, work / "check.pt", work / "check.csv", threads=1, progress=False)
    curve = pd.read_csv(work / "check.csv").iloc[warmup - 1:]
    elapsed = curve["seconds"].iloc[-1] - curve["seconds"].iloc[0]
    waited = curve["batch_wait_seconds"].iloc[1:].sum()
    return {"s_per_iteration": elapsed / iterations, "busy": 1 - waited / elapsed, "memory_gb": gpu_memory_gb(device)}


def untrained_checkpoints(network: dict, folds: int, work: Path, name: str) -> list[Path]:
    """``folds`` checkpoints of the network with different random weights, as ``train_model`` writes them."""
    paths = []
    for fold in range(folds):
        torch.manual_seed(fold)
        path = work / f"{name}_fold_{fold}.pt"
        torch.save({"model_state": build_network(**network).state_dict(), "network": network}, path)
        paths.append(path)
    return paths


def time_inference(cfg: dict, case, folds: int, mirror: bool, work: Path, smoke: bool) -> dict:
    """Seconds of each prediction step of the cascade on one case, with ``folds`` models per stage."""
    s1, s2 = copy.deepcopy(cfg["stage1"]), copy.deepcopy(cfg["stage2"])
    if smoke:
        for section in (s1, s2):
            section["network"]["base_features"], section["patch_size"] = 4, [16, 32, 32]
    for section in (s1, s2):
        section["inference"]["mirror_axes"] = [0, 1, 2] if mirror else []
    s2["roi_growth_steps"] = 0  # untrained networks: whether their output reaches a box's face is chance
    imaging, segmentation, stats = case
    models1 = untrained_checkpoints(stage1.network_config(s1), folds, work, "stage1")
    models2 = untrained_checkpoints(stage2.network_config(s2), folds, work, "stage2")
    kidneys = work / "kidneys.nii.gz"
    seconds = {}
    start = time.perf_counter()
    stage1.preprocess(imaging, None, "case", stats, s1, cfg["labels"], work / "stage1.npz")
    seconds["preprocess"] = time.perf_counter() - start
    start = time.perf_counter()
    stage1.predict(work / "stage1.npz", models1, imaging, None, "case", s1, cfg["labels"], work / "mask.nii.gz",
                   work / "labels.nii.gz", work / "mask.json", threads=1)
    seconds["stage 1"] = time.perf_counter() - start
    start = time.perf_counter()
    roi.crop_rois(imaging, None, "case", kidneys, stats, s2, cfg["labels"], work / "rois.npz", work / "rois.json")
    seconds["crop"] = time.perf_counter() - start
    start = time.perf_counter()
    stage2.predict(work / "rois.npz", work / "rois.json", models2, imaging, s2, cfg["labels"], work / "prediction.nii.gz",
                   threads=1)
    seconds["stage 2"] = time.perf_counter() - start
    return seconds


def write_case(work: Path, smoke: bool):
    """A phantom scan, its true kidneys (the ROIs of stage 2) and its statistics."""
    shape, spacing = SMOKE_CASE if smoke else CASE
    image, label = phantoms.make_phantom(0, shape, spacing)
    affine = io.kits19_affine(spacing)
    imaging, segmentation = work / "imaging.nii.gz", work / "segmentation.nii.gz"
    io.save_nifti(image, affine, imaging)
    io.save_nifti(label, affine, segmentation)
    io.save_nifti((label > 0).astype(np.uint8), affine, work / "kidneys.nii.gz")
    summary, _ = fingerprint.collect_statistics({"case": (imaging, segmentation)}, ["case"], (0.05, 99.5), 10000, 0)
    io.save_json(summary, work / "statistics.json")
    return imaging, segmentation, work / "statistics.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (tests this script)")
    parser.add_argument("--iterations", type=int, default=30, help="timed training iterations per run")
    parser.add_argument("--warmup", type=int, default=8, help="untimed iterations first (cuDNN autotuning)")
    parser.add_argument("--folds", type=int, default=5, help="fold models per stage in the inference check")
    parser.add_argument("--no-settings", action="store_true", help="skip the speed-setting variants (2.)")
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the timed window starts after it)")
    if args.smoke:
        device, args.iterations, args.warmup, args.folds = torch.device("cpu"), 2, 1, 2
        torch.set_num_threads(1)  # a test on a shared machine: more threads only contend
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        raise SystemExit("gpu_check.py needs a CUDA GPU; use --smoke for a CPU run at tiny sizes")
    cfg = paper_config()
    workers = max(cfg["resources"]["threads"] - 1, 0)
    if args.smoke:
        workers = min(workers, 1)  # two cores here
    where = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (smoke test, tiny sizes)"
    print(f"device: {where}; torch {torch.__version__}; kits19.yaml resources.threads {cfg['resources']['threads']}")

    print("\n1./2. training (train_model), seconds per iteration after warm-up")
    print(f"{'stage':7} {'patch':>12} {'batch':>5} {'params':>8} {'setting':22} {'workers':>7} {'s/iter':>7} "
          f"{'busy':>8} {'GB reserved':>11} {'fits 32 GB':>10}")
    default_speed = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for stage in ("stage1", "stage2"):
            network, training, volumes = stage_setup(stage, cfg, args.smoke)
            training = dict(training, device=device.type)
            runs = [("kits19.yaml", {}, 0), ("kits19.yaml", {}, workers)]
            if not args.no_settings:
                runs += [(f"precision {p}", {"precision": p}, workers) for p in ("bf16", "fp32")
                         if p != training["precision"]]
                runs += [("cudnn_benchmark off", {"cudnn_benchmark": False}, workers),
                         ("channels_last on", {"channels_last": True}, workers)]
            params = count_parameters(build_network(**network)) / 1e6
            for label, change, n in runs:
                try:
                    result = time_training(network, dict(training, **change, num_workers=n), volumes,
                                           args.iterations, args.warmup, work, device)
                except (ValueError, RuntimeError) as error:  # bf16 on a card without it, out of memory
                    print(f"{stage:7} {label:>35}: {type(error).__name__}: {str(error).splitlines()[0][:80]}")
                    continue
                if not change and n == workers:
                    default_speed[stage] = result["s_per_iteration"]
                memory = result["memory_gb"]
                fits = "n/a" if math.isnan(memory) else ("yes" if memory < V100_GB else "NO")
                print(f"{stage:7} {'x'.join(map(str, network['patch_size'])):>12} {training['batch_size']:>5} "
                      f"{params:7.2f}M {label:22} {n:>7} {result['s_per_iteration']:7.3f} "
                      f"{100 * result['busy']:7.0f}% {memory:11.2f} {fits:>10}")

        print(f"\n3. inference of one {'x'.join(map(str, (SMOKE_CASE if args.smoke else CASE)[0]))} case, "
              f"{args.folds} folds per stage, seconds")
        case = write_case(work, args.smoke)
        print(f"{'mirroring':9} {'preprocess':>10} {'stage 1':>8} {'crop':>6} {'stage 2':>8} {'total':>7}")
        for mirror in (False, True):
            s = time_inference(cfg, case, args.folds, mirror, work, args.smoke)
            print(f"{'8 passes' if mirror else 'off':9} {s['preprocess']:10.1f} {s['stage 1']:8.1f} {s['crop']:6.1f} "
                  f"{s['stage 2']:8.1f} {sum(s.values()):7.1f}")

    print("busy: the share of wall time the loop was not waiting for batches (GPU busy on CUDA, where the fp16\n"
          "gradient scaler and the per-iteration loss read-back of this check synchronise every step)")
    print("\n4. config/kits19.yaml training extrapolated from 1. (kits19.yaml settings and workers)")
    folds = cfg["splits"]["n_folds"]
    total = 0.0
    for stage in ("stage1", "stage2"):
        if stage not in default_speed:
            print(f"{stage}: no measurement at the kits19.yaml settings (see the error above)")
            continue
        iterations = cfg[stage]["training"]["iterations"]
        hours = iterations * default_speed[stage] / 3600
        total += folds * hours
        print(f"{stage}: {iterations} iterations x {default_speed[stage]:.3f} s = {hours:.1f} h per fold "
              f"(paper, V100: ~{PAPER_HOURS_PER_FOLD[stage]:.0f} h)")
    paper_total = folds * sum(PAPER_HOURS_PER_FOLD.values())
    if len(default_speed) < 2:
        return
    print(f"all {2 * folds} trainings: {total:.1f} GPU-hours on this device (paper: ~{paper_total:.0f} h on a V100; "
          f"target <= {sum(PAPER_HOURS_PER_FOLD.values()):.0f} h: {'met' if total <= 48 else 'MISSED'})")


if __name__ == "__main__":
    main()
