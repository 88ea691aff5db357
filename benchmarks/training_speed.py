"""Seconds per training iteration and per-case sliding-window inference, demo and paper sizes.

Usage: python benchmarks/training_speed.py [--sizes demo paper] [--iterations 3] [--threads 2]
                                          [--cpu-precision fp32 bf16] [--channels-last off on]
                                          [--compile off on]

Builds the networks from config/config.yaml (demo) and config/kits19.yaml
(paper), times a few optimiser steps on random patches (after one warm-up
step) and one sliding-window pass over a volume of the size the stage sees
(paper: a 138x512x512 case at half in-plane resolution, and a 40x160x160
ROI, the paper's median; demo: the phantoms' equivalents). On the CPU each
``--cpu-precision`` gets its rows (``training.cpu_precision`` for training,
``inference.cpu_precision`` for inference; default: the config's; ignored on
CUDA, where ``training.precision`` applies), and each ``--channels-last``
its rows too (``training.channels_last``: the network and its patches in
channels-last memory format; default: the config's). ``--compile on``
times the training step of ``torch.compile(network)`` (inductor) in rows of
its own, which the training loop does not do: the last column is the
seconds of the first, warm-up step, which compiles (their inference
column is nan: inference is not compiled either). Prints a
table; numbers depend on the machine (CPU threads or CUDA), so quote them with it.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import time
from pathlib import Path

import numpy as np
import torch

from kitscascade.infer import sliding_window_predict
from kitscascade.networks import build_network, count_parameters
from kitscascade import config, stage1, stage2
from kitscascade.train import autocast_dtype, cpu_autocast_dtype, memory_format, optimizer_step

ROOT = Path(__file__).resolve().parents[1]
# what one case puts through each stage: the stage-1 grid, and one kidney ROI
VOLUMES = {
    "demo": {"stage1": (56, 80, 80), "stage2": (36, 56, 48)},
    "paper": {"stage1": (138, 256, 256), "stage2": (40, 160, 160)},
}


def stage_settings(size: str, stage: str) -> dict:
    """The network, batch and inference batch of a stage: config/config.yaml (demo) or, for the paper,
    its network, patch and batch sizes from config/kits19.yaml."""
    cfg = config.load_config()[stage]
    if size == "paper":
        paper = config.load_config(config.DEFAULT_CONFIG, ROOT / "config" / "kits19.yaml")[stage]
        cfg = config.deep_merge(cfg, {"network": paper["network"], "patch_size": paper["patch_size"],
                                      "training": {"batch_size": paper["training"]["batch_size"]}})
    network = (stage1 if stage == "stage1" else stage2).network_config(cfg)
    return {"network": network, "batch_size": cfg["training"]["batch_size"],
            "inference_batch": cfg["inference"]["batch_size"], "training": cfg["training"],
            "cpu_precision": cfg["inference"]["cpu_precision"]}


def time_training(model, network: dict, batch_size: int, training: dict, iterations: int, device,
                  compiled: bool = False) -> tuple[float, float]:
    """Median seconds of the training loop's optimizer step on random patches, and the seconds of the first,
    warm-up step (which compiles with ``compiled``: the step runs ``torch.compile(model)``). ``model`` is
    already in ``training.channels_last``'s memory format, as the training loop makes it."""
    amp_dtype = autocast_dtype(training["precision"], device, training["cpu_precision"])
    optimizer = torch.optim.Adam(model.parameters(), lr=float(training["learning_rate"]))
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    layout = memory_format(training, len(network["patch_size"]))
    x = torch.randn(batch_size, network["in_channels"], *network["patch_size"], device=device)
    x = x.contiguous(memory_format=layout)
    y = torch.randint(0, network["num_classes"], (batch_size, *network["patch_size"]), device=device)
    run = torch.compile(model) if compiled else model
    times = []
    for _ in range(iterations + 1):
        start = time.perf_counter()
        optimizer_step(run, optimizer, scaler, x, y, training["deep_supervision_weights"],
                       training["grad_clip_norm"], amp_dtype)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:])), times[0]


def time_inference(model, network: dict, volume_shape, batch: int, precision: str, cpu_precision: str,
                   device) -> float:
    volume = np.random.default_rng(0).normal(size=(network["in_channels"], *volume_shape)).astype(np.float32)
    amp_dtype = autocast_dtype(precision, device) if device.type == "cuda" else cpu_autocast_dtype(cpu_precision)
    start = time.perf_counter()
    sliding_window_predict([model], volume, network["patch_size"], network["num_classes"], batch_size=batch,
                           device=device, amp_dtype=amp_dtype)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["demo", "paper"], choices=["demo", "paper"])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-inference", action="store_true", help="time training steps only")
    parser.add_argument("--cpu-precision", nargs="+", choices=["auto", "bf16", "fp32"],
                        help="CPU precisions to time, each in its own rows (default: the config's)")
    parser.add_argument("--channels-last", nargs="+", choices=["off", "on"],
                        help="training.channels_last values to time, each in its own rows (default: the config's)")
    parser.add_argument("--compile", nargs="+", choices=["off", "on"], default=["off"],
                        help="time torch.compile(network)'s training step too, in its own rows (default: off)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.processor() or 'CPU'}, {args.threads} threads"
    print(f"device: {where}; torch {torch.__version__}")
    print(f"{'size':6} {'stage':7} {'patch':>14} {'batch':>5} {'params':>8} {'CPU prec':>8} {'layout':>13} "
          f"{'s/iter':>8} {'volume':>14} {'s/case':>8} {'compiled':>8} {'first s':>8}")
    for size in args.sizes:
        for stage in ("stage1", "stage2"):
            s = stage_settings(size, stage)
            precisions = args.cpu_precision if args.cpu_precision and device.type == "cpu" else [None]
            layouts = [v == "on" for v in args.channels_last] if args.channels_last else [None]
            for cpu_precision, channels_last, compiled in itertools.product(precisions, layouts,
                                                                            [v == "on" for v in args.compile]):
                training = dict(s["training"], cpu_precision=cpu_precision or s["training"]["cpu_precision"])
                if channels_last is not None:
                    training["channels_last"] = channels_last
                layout = memory_format(training, len(s["network"]["patch_size"]))
                model = build_network(**s["network"]).to(device, memory_format=layout)
                per_iter, first = time_training(model, s["network"], s["batch_size"], training, args.iterations,
                                                device, compiled)
                volume = VOLUMES[size][stage]
                per_case = float("nan") if args.no_inference or compiled else time_inference(
                    build_network(**s["network"]).to(device), s["network"], volume, s["inference_batch"],
                    training["precision"], cpu_precision or s["cpu_precision"], device)
                patch = "x".join(map(str, s["network"]["patch_size"]))
                shown = "-" if device.type == "cuda" else cpu_precision or "config"
                layout_name = "channels_last" if training["channels_last"] else "contiguous"
                print(f"{size:6} {stage:7} {patch:>14} {s['batch_size']:>5} {count_parameters(model) / 1e6:7.2f}M "
                      f"{shown:>8} {layout_name:>13} {per_iter:8.2f} {'x'.join(map(str, volume)):>14} "
                      f"{per_case:8.1f} {'yes' if compiled else 'no':>8} {first:8.1f}")

if __name__ == "__main__":
    main()
