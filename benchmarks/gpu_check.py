"""GPU check at the paper's sizes: training step, GPU memory, data loading and inference per case.

Usage:
    python benchmarks/gpu_check.py                 # on a CUDA machine, config/kits19.yaml sizes
    python benchmarks/gpu_check.py --smoke         # tiny sizes on the CPU, in seconds (a test of this script)

Per stage (stage 1: U-Net, patch 80x160x160, batch 2; stage 2: residual
U-Net, patch 40x128x128, batch 5, 30 base features) it times the training
step of ``kitscascade.train.train_model`` (float16 autocast + GradScaler,
deep-supervision loss, gradient clipping, Adam) after warm-up steps, reads the
peak GPU memory (``torch.cuda.max_memory_allocated`` and ``_reserved``; the
reserved peak is compared with the paper's 32 GB V100), times
``kitscascade.data.sample_batch`` with the stage's augmentation on
realistic-size volumes (stage 1: a 138x256x256 resampled scan; stage 2: a
48x160x160 ROI with its prior) to tell whether one loader process keeps up
with the GPU (train_model samples and steps in turn) or how many it needs,
and times the sliding-window inference of one case (stage 1: the resampled
scan; stage 2: two ROIs) with the stage's mirroring and batch.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from inference import network_kwargs, stage_config
from kitscascade.data import TrainingVolume, sample_batch
from kitscascade.infer import sliding_window_predict
from kitscascade.train import optimizer_step
from kitscascade.networks import build_network, count_parameters

V100_GB = 32
# stage: (channels, classes, training volume, inference volumes per case)
SIZES = {
    "stage1": (1, 2, (138, 256, 256), [(138, 256, 256)]),
    "stage2": (2, 3, (48, 160, 160), [(48, 160, 160)] * 2),
}
SMOKE = {"stage1": ((16, 32, 32), 4, (24, 48, 48)), "stage2": ((16, 32, 32), 4, (20, 40, 40))}


def synthetic_volume(channels: int, classes: int, shape, rng: np.random.Generator, max_foreground: int) -> TrainingVolume:
    """Z-scored noise with a kidney ellipsoid (1) holding a tumor (2, merged into 1 for two classes).

    Channel 1, when asked for, is the kidney mask (stage 2's prior).
    """
    grid = np.indices(shape, dtype=np.float32)
    centre, semi = [n / 2 for n in shape], [n / 4 for n in shape]
    rho = sum(((g - c) / s) ** 2 for g, c, s in zip(grid, centre, semi))
    label = np.where(rho < 1, 1, 0).astype(np.uint8)
    label[rho < 0.2] = classes - 1
    image = rng.normal(size=shape).astype(np.float32) + label
    planes = [image, (label > 0).astype(np.float32)][:channels]
    return TrainingVolume.from_arrays(np.stack(planes), label, max_foreground=max_foreground)


def time_training(model, batches, training: dict, device, iterations: int,
                  warmup: int) -> tuple[float, float, float]:
    """Median seconds per step of train_model's step, and peak GPU memory allocated and reserved (GB; NaN on CPU)."""
    use_amp = device.type == "cuda"
    optimizer = torch.optim.Adam(model.parameters(), lr=float(training["learning_rate"]))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    model.train()
    if use_amp:
        torch.cuda.empty_cache()  # the other stage's cached blocks would count as reserved
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + iterations):
        x, y = (torch.from_numpy(a).to(device) for a in batches[i % len(batches)])
        start = time.perf_counter()
        optimizer_step(model, optimizer, scaler, x, y, training["deep_supervision_weights"],
                       training["grad_clip_norm"], use_amp)
        if use_amp:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    if not use_amp:
        return float(np.median(times)), float("nan"), float("nan")
    return float(np.median(times)), torch.cuda.max_memory_allocated() / 1e9, torch.cuda.max_memory_reserved() / 1e9


def time_loader(volumes, patch, training: dict, batches: int) -> tuple[float, list]:
    """Median seconds per ``sample_batch`` call with the stage's augmentation, and the batches made."""
    rng = np.random.default_rng(0)
    times, made = [], []
    for _ in range(batches):
        start = time.perf_counter()
        made.append(sample_batch(volumes, patch, int(training["batch_size"]), float(training["foreground_fraction"]),
                                 rng, training["augmentation"], training["prior_perturbation"]))
        times.append(time.perf_counter() - start)
    return float(np.median(times)), made


def time_inference(model, channels: int, shapes, patch, cfg: dict, device) -> float:
    """Seconds for the sliding-window passes of one case (all its volumes), with the stage's mirroring."""
    rng = np.random.default_rng(1)
    volumes = [rng.normal(size=(channels, *shape)).astype(np.float32) for shape in shapes]
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for volume in volumes:
        sliding_window_predict([model], volume, patch, model.config["num_classes"], overlap=cfg["overlap"],
                               batch_size=cfg["batch_size"], mirror_axes=tuple(cfg["mirror_axes"]), device=device,
                               use_amp=device.type == "cuda")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, 1 step (tests this script)")
    parser.add_argument("--iterations", type=int, default=20, help="timed training steps per stage")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (cuDNN autotuning)")
    args = parser.parse_args()
    if args.smoke:
        device, args.iterations, args.warmup = torch.device("cpu"), 1, 1
        torch.set_num_threads(1)  # a test on a shared machine: more threads only contend
    elif torch.cuda.is_available():
        device = torch.device("cuda")
        torch.backends.cudnn.benchmark = True
    else:
        raise SystemExit("gpu_check.py needs a CUDA GPU; use --smoke for a CPU run at tiny sizes")
    where = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (smoke test, tiny sizes)"
    print(f"device: {where}; torch {torch.__version__}")
    print(f"{'stage':7} {'patch':>12} {'batch':>5} {'params':>8} {'s/step':>7} {'loader s':>8} {'in series':>9} "
          f"{'loaders':>7} {'GB alloc':>8} {'GB reserved':>11} {'fits 32 GB':>10} {'infer s/case':>12}")
    for stage, (channels, classes, train_shape, case_shapes) in SIZES.items():
        cfg = stage_config(stage, paper=True)
        network = network_kwargs(cfg, channels, classes)
        if args.smoke:
            network["patch_size"], network["base_features"], train_shape = SMOKE[stage]
            case_shapes = [train_shape] * len(case_shapes)
        patch, training = network["patch_size"], cfg["training"]
        torch.manual_seed(0)
        model = build_network(**network).to(device)
        volumes = [synthetic_volume(channels, classes, train_shape, np.random.default_rng(0),
                                    training["max_foreground_voxels"])]
        loader_s, batches = time_loader(volumes, patch, training, max(2, args.warmup + args.iterations))
        step_s, allocated, reserved = time_training(model, batches, training, device, args.iterations, args.warmup)
        infer_s = time_inference(model.eval(), channels, case_shapes, patch, cfg["inference"], device)
        memory = [f"{gb:.2f}" if not math.isnan(gb) else "n/a" for gb in (allocated, reserved)]
        fits = "n/a" if math.isnan(reserved) else ("yes" if reserved < V100_GB else "NO")
        print(f"{stage:7} {'x'.join(map(str, patch)):>12} {training['batch_size']:>5} "
              f"{count_parameters(model) / 1e6:7.2f}M {step_s:7.3f} {loader_s:8.3f} {step_s + loader_s:9.3f} "
              f"{math.ceil(loader_s / step_s):7d} {memory[0]:>8} {memory[1]:>11} {fits:>10} {infer_s:12.1f}")
    print("s/step: one training step (float16 autocast + GradScaler); loader s: one sample_batch call; in series:\n"
          "s/iter of train_model, which samples and steps in turn; loaders: sample_batch processes that would keep\n"
          "the GPU busy (ceil of loader / step); GB: peak torch.cuda memory in training; infer: one case, mirroring")


if __name__ == "__main__":
    main()
