"""Background batch making at the paper's sizes: batches per second for 0, 1, 2, 4 ... loader workers.

Usage:
    python benchmarks/loader.py                     # config/kits19.yaml sizes, workers 0 1 2 4
    python benchmarks/loader.py --workers 0 1 2 4 8 --batches 60
    python benchmarks/loader.py --smoke             # tiny sizes, seconds (a test of this script)

Per stage it builds training volumes of the size the stage trains on
(stage 1: 138x256x256 resampled scans; stage 2: 48x160x160 ROIs with their
prior), then reads ``--batches`` batches through ``train.batch_loader``, the
loader ``train.train_model`` uses (``data.TrainingBatches``: the stage's
patch, batch size, augmentation and prior perturbation from
config/kits19.yaml), with each number of workers. It reports batches per
second, the memory each worker holds of its own (USS: pages not shared with
the training process, mostly the batches it has made and not yet handed
over) and, as a reference, how many workers a GPU step of
``--step-seconds`` needs. On a CUDA machine it also times the stage's real
training step (``train.optimizer_step``, synchronised) and reports the
fraction of each iteration the GPU would wait for batches with each number
of workers: ``1 - step / max(step, 1 / batches_per_second)``.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from pathlib import Path

import numpy as np
import psutil
import torch

from kitscascade import config, stage1, stage2
from kitscascade.data import TrainingBatches, TrainingVolume
from kitscascade.networks import build_network
from kitscascade.train import autocast_dtype, batch_loader, configure_backend, optimizer_step
from preprocess import machine

ROOT = Path(__file__).resolve().parents[1]
# what each stage trains on: (volume shape, volumes); stage 2's have the prior as a second channel
VOLUMES = {"stage1": ((138, 256, 256), 4), "stage2": ((48, 160, 160), 8)}
SMOKE = {"stage1": ((24, 48, 48), (16, 32, 32)), "stage2": ((20, 40, 40), (16, 32, 32))}


def paper_config() -> dict:
    return config.load_config(config.DEFAULT_CONFIG, ROOT / "config" / "kits19.yaml")


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


def stage_setup(stage: str, cfg: dict, smoke: bool) -> tuple[dict, dict, list[TrainingVolume]]:
    """The stage's network arguments, training section and synthetic training volumes."""
    section = cfg[stage]
    network = (stage1 if stage == "stage1" else stage2).network_config(section)
    shape, count = VOLUMES[stage]
    if smoke:
        shape, network["patch_size"] = SMOKE[stage][0], list(SMOKE[stage][1])
        network["base_features"], count = 4, 2
    rng = np.random.default_rng(0)
    volumes = [synthetic_volume(network["in_channels"], network["num_classes"], shape, rng,
                                section["training"]["max_foreground_voxels"]) for _ in range(count)]
    return network, section["training"], volumes


def measure_loader(volumes, patch, training: dict, workers: int, batches: int) -> tuple[float, float]:
    """Batches per second through ``train.batch_loader`` (after its first batch), and the largest USS (MB)
    of one worker."""
    source = TrainingBatches(volumes, tuple(patch), training, seed=0, fold=0, iterations=batches + 1)
    batch_iter = iter(batch_loader(source, 0, workers, int(training["prefetch_factor"]), pin_memory=False))
    next(batch_iter)  # workers started and the first batch made
    start = time.perf_counter()
    for _ in range(batches):
        next(batch_iter)
    rate = batches / (time.perf_counter() - start)
    own = [p.memory_full_info().uss / 1e6 for p in psutil.Process().children()]
    del batch_iter
    return rate, max(own, default=0.0)


def gpu_step_seconds(network: dict, training: dict, volumes, iterations: int = 10) -> float:
    """Median synchronised seconds of the training step on CUDA, at the stage's precision."""
    device = torch.device("cuda")
    configure_backend(training, device)
    amp_dtype = autocast_dtype(training["precision"], device)
    model = build_network(**network).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=float(training["learning_rate"]))
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    source = TrainingBatches(volumes, tuple(network["patch_size"]), training, 0, 0, iterations + 3)
    times = []
    for i in range(iterations + 3):
        x, y = (torch.from_numpy(a).to(device) for a in source[i])
        torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer_step(model, optimizer, scaler, x, y.long(), training["deep_supervision_weights"],
                       training["grad_clip_norm"], amp_dtype)
        torch.cuda.synchronize()
        if i >= 3:  # cuDNN autotuning in the first steps
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2, 4])
    parser.add_argument("--batches", type=int, default=40, help="batches timed per run")
    parser.add_argument("--step-seconds", type=float, default=0.3,
                        help="a GPU training step to compare with when there is no GPU (default: the V100 figure)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, few batches (tests this script)")
    args = parser.parse_args()
    if args.smoke:
        args.batches, args.workers = 4, [0, 1]
    torch.set_num_threads(1)
    cfg = paper_config()
    cuda = torch.cuda.is_available() and not args.smoke
    warnings.filterwarnings("ignore", "This DataLoader will create")  # more workers than cores, on purpose
    print(f"machine: {machine()}; {torch.cuda.get_device_name() if cuda else 'no GPU'}; torch {torch.__version__}")
    print(f"{'stage':7} {'patch':>12} {'batch':>5} {'workers':>7} {'batches/s':>9} {'s/batch':>8} "
          f"{'worker MB':>9} {'GPU step s':>10} {'GPU waits':>9}")
    for stage in ("stage1", "stage2"):
        network, training, volumes = stage_setup(stage, cfg, args.smoke)
        patch = network["patch_size"]
        step = gpu_step_seconds(network, training, volumes) if cuda else args.step_seconds
        rates = {}
        for workers in args.workers:
            rate, own_mb = measure_loader(volumes, patch, training, workers, args.batches)
            rates[workers] = rate
            waits = 1 - step / max(step, 1 / rate)
            print(f"{stage:7} {'x'.join(map(str, patch)):>12} {training['batch_size']:>5} {workers:>7} {rate:9.2f} "
                  f"{1 / rate:8.3f} {own_mb:9.0f} {step:10.3f}{'' if cuda else '*'} {100 * waits:8.0f}%")
        single = 1 / rates[min(rates)]  # one process making batches, in series with nothing else
        print(f"{'':7} -> one process makes a batch in {single:.3f} s: {math.ceil(single / step)} worker(s) keep a "
              f"{step:.2f} s step busy")
    if not cuda:
        print(f"* no GPU: the step is --step-seconds {args.step_seconds}, not a measurement")


if __name__ == "__main__":
    main()
