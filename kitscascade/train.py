"""The training loop, shared by both stages: setup -> batches -> step -> log -> checkpoint.

Stage 1 (the localizer) and stage 2 (the kidney/tumor network) differ only in
the network config, the training volumes and a few config keys; they call
the same :func:`train_model`.

Batches are made in the background: a ``torch.utils.data.DataLoader`` over
iteration numbers hands them to ``training.num_workers`` forked processes
that share the training volumes with this one (read-only pages, not copies),
prefetches ``prefetch_factor`` batches per worker into pinned memory, and the
loop copies them to the GPU with ``non_blocking``. Batch ``i`` depends only
on ``(seed, fold, i)`` (:class:`kitscascade.data.TrainingBatches`), so 0, 1
or 8 workers give the same batches. The loss is summed on the device and read
back once every ``log_every`` iterations, so the loop does not wait for the
GPU on every step.

Checkpoints describe themselves (weights, network config, patch size,
iteration, training settings) and load with
``torch.load(..., weights_only=True)``. While training, a resume file next
to the final checkpoint is rewritten every ``checkpoint_every`` iterations
(with the optimizer state and the loss curve so far); a restarted job
(killed, or requeued by SLURM) continues from it and ends with the same
weights it would have had without the interruption (on the CPU; cuDNN's
autotuned kernels are not bit-reproducible). It continues only with the
same network, training settings, arithmetic and training data (a digest
of the volumes): a job rerun because its inputs changed starts afresh.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import re
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from kitscascade import io
from kitscascade.config import EXECUTION_KEYS
from kitscascade.data import TrainingBatches, TrainingVolume
from kitscascade.losses import deep_supervision_loss
from kitscascade.networks import build_network

log = logging.getLogger(__name__)

AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}
PRECISION_NAMES = {dtype: name for name, dtype in AUTOCAST_DTYPES.items()}


def resume_path_for(checkpoint_path) -> Path:
    """Where the in-progress state of ``checkpoint_path`` lives (not a workflow output)."""
    checkpoint_path = Path(checkpoint_path)
    return checkpoint_path.with_name(checkpoint_path.name.replace(".pt", "") + ".resume.pt")


def select_device(requested: str) -> torch.device:
    """``auto`` (CUDA when available, else the CPU), ``cpu`` or ``cuda[:N]``; CUDA asked for but absent is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"training.device={requested!r} but CUDA is not available on this machine")
    return torch.device(requested)


def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes bfloat16 natively: the x86 flag ``avx512_bf16`` or ``amx_bf16`` in
    ``/proc/cpuinfo``. False elsewhere (no such file, or another architecture: ``cpu_precision: bf16``
    forces it there, unmeasured)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def cpu_autocast_dtype(cpu_precision: str, key: str = "inference.cpu_precision") -> torch.dtype | None:
    """A ``cpu_precision`` setting (``key`` names it in errors) as an autocast dtype on the CPU: bfloat16
    or None (float32).

    ``auto`` is bf16 where :func:`cpu_has_native_bf16`: on an AMX CPU that
    makes a demo training step 2.4-2.8x and a paper-size inference window about
    2x faster (README, Performance). Raises ``ValueError`` for another value.
    """
    if cpu_precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"{key}={cpu_precision!r}: expected auto, bf16 or fp32")
    if cpu_precision == "bf16" or (cpu_precision == "auto" and cpu_has_native_bf16()):
        return torch.bfloat16
    return None


def autocast_dtype(precision: str, device: torch.device, cpu_precision: str = "fp32") -> torch.dtype | None:
    """The autocast dtype of training on ``device``: ``training.precision`` on CUDA,
    ``training.cpu_precision`` (:func:`cpu_autocast_dtype`) on the CPU; None means float32.

    Raises ``ValueError`` for an unknown value, or ``bf16`` on a GPU without bfloat16 support (before Ampere).
    """
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f"training.precision={precision!r}: expected one of {sorted(AUTOCAST_DTYPES)}")
    if device.type != "cuda":
        return cpu_autocast_dtype(cpu_precision, "training.cpu_precision")
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"training.precision='bf16' but {torch.cuda.get_device_name(device)} has no bfloat16 "
                         "support; use fp16")
    return AUTOCAST_DTYPES[precision]


def configure_backend(training: dict, device: torch.device) -> None:
    """cuDNN autotuning (``training.cudnn_benchmark``): picks the fastest kernels for the patch size once."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(training["cudnn_benchmark"])


def memory_format(training: dict, dims: int) -> torch.memory_format:
    """``training.channels_last``: channels-last (3-D: ``channels_last_3d``) tensors and weights, else contiguous."""
    if not training["channels_last"]:
        return torch.contiguous_format
    return torch.channels_last_3d if dims == 3 else torch.channels_last


def loader_workers(requested: int | None, threads: int, device: torch.device) -> int:
    """Batch-making processes: ``training.num_workers``, or when it is null the job's CPUs minus the one
    that trains, on a GPU; on the CPU, where a batch costs a few percent of a step, one worker when the
    job has more than one CPU. The job's CPUs: ``threads``, capped by ``SLURM_CPUS_PER_TASK`` inside a
    SLURM job (Snakemake itself may run in a larger allocation)."""
    if requested is not None:
        return int(requested)
    cpus = min(int(threads), int(os.environ.get("SLURM_CPUS_PER_TASK") or threads))
    if device.type != "cuda":
        return min(cpus - 1, 1)
    return max(cpus - 1, 0)


def batch_loader(batches: TrainingBatches, start: int, workers: int, prefetch_factor: int,
                 pin_memory: bool) -> torch.utils.data.DataLoader:
    """Batches ``start, start + 1, ...`` of ``batches`` in order, made by ``workers`` processes (0: in this one).

    Workers are forked where the platform can (Linux), so they read the
    training volumes from this process's memory instead of a copy each.
    """
    context = None
    if workers and sys.platform.startswith("linux"):  # fork is unsafe on macOS; elsewhere the default (spawn)
        context = multiprocessing.get_context("fork")
    return torch.utils.data.DataLoader(
        batches, batch_size=None, sampler=range(start, len(batches)), num_workers=workers,
        prefetch_factor=prefetch_factor if workers else None, pin_memory=pin_memory,
        multiprocessing_context=context,
    )


def same_run(saved: dict, training: dict) -> bool:
    """Whether a resume file's training settings continue into ``training`` (only the settings in
    ``config.EXECUTION_KEYS`` may differ between attempts)."""
    return {k: v for k, v in saved.items() if k not in EXECUTION_KEYS} == {
        k: v for k, v in training.items() if k not in EXECUTION_KEYS
    }


def training_data_digest(volumes: list[TrainingVolume]) -> str:
    """SHA-256 (hex) of the training volumes in order: each one's shapes, dtypes, channels and label.

    A resume file records it, so that training resumes only on the data it began with (each
    volume's foreground index is drawn from its label with a seed of its position, so the
    labels and the order cover it)."""
    digest = hashlib.sha256()
    for volume in volumes:
        for array in (volume.channels, volume.label):
            array = np.ascontiguousarray(array)
            digest.update(f"{array.shape}{array.dtype.str}".encode())
            digest.update(array)
    return digest.hexdigest()


def learning_rate_at(iteration: int, cfg: dict) -> float:
    """Constant, or nnU-Net's polynomial decay ``lr * (1 - it/total) ** 0.9``."""
    lr = float(cfg["learning_rate"])
    if cfg["lr_decay"] == "poly":
        return lr * (1.0 - iteration / cfg["iterations"]) ** 0.9
    return lr


def optimizer_step(model, optimizer, scaler, x, y, ds_weights, grad_clip_norm: float,
                   amp_dtype: torch.dtype | None = None, regions=None) -> torch.Tensor:
    """One step: forward (autocast to ``amp_dtype`` on ``x``'s device when given), CE + Dice over every head
    (BCE + Dice per region with ``regions``),
    backward (through ``scaler``, a GradScaler enabled for float16), gradient clipping at
    ``grad_clip_norm``, Adam update. Returns the loss, on the device (no host synchronisation)."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext():
        outputs = model(x)
    loss = deep_supervision_loss(outputs, y, ds_weights, regions)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
    scaler.step(optimizer)
    scaler.update()
    return loss


def load_checkpoint(path, map_location="cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)


def model_from_checkpoint(checkpoint: dict, device="cpu") -> torch.nn.Module:
    model = build_network(**checkpoint["network"])
    model.load_state_dict(checkpoint["model_state"])
    return model.to(device).eval()


def train_model(
    volumes: list[TrainingVolume],
    network: dict,
    training: dict,
    checkpoint_path,
    curve_path,
    fold: int = 0,
    extra: dict | None = None,
    threads: int = 1,
    progress: bool = True,
    regions: list | None = None,
) -> dict:
    """Train one model and write its final checkpoint and loss curve (CSV), atomically.

    ``network``: keyword arguments of :func:`kitscascade.networks.build_network`
    (``kind``, ``patch_size``, ...). ``training``: a stage's ``training``
    config section (see ``config/config.schema.yaml``). ``fold`` enters the
    random streams with ``training.seed``: weight init from ``(seed, fold)``,
    batch ``i`` from ``(seed, fold, i)``. ``threads``: torch threads, and the
    job's CPUs when ``num_workers`` is null. ``extra`` is stored in the
    checkpoint as is (e.g. fold, case ids). ``regions``: region-based training
    (``losses.dice_bce_region_loss``; the network has one output per region),
    stored in the checkpoint; None trains softmax classes.

    The curve has one row per ``log_every`` iterations: the mean loss over
    them, the learning rate, wall seconds since the start and the seconds the
    loop spent waiting for batches in that window. Returns the final
    checkpoint dict.
    """
    # --- setup -------------------------------------------------------------
    if not volumes:
        raise ValueError("train_model: no training volumes")
    torch.set_num_threads(max(1, int(threads)))
    device = select_device(training["device"])
    configure_backend(training, device)
    amp_dtype = autocast_dtype(training["precision"], device, training["cpu_precision"])
    arithmetic = PRECISION_NAMES[amp_dtype]  # what "auto" resolved to on this machine
    layout = memory_format(training, len(network["patch_size"]))
    seed, total = int(training["seed"]), int(training["iterations"])
    torch.manual_seed(int(np.random.SeedSequence([seed, fold]).generate_state(1)[0]))
    model = build_network(**network).to(device, memory_format=layout)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(training["learning_rate"]))
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    history: list[dict] = []
    window = {"loss_sum": 0.0, "count": 0, "wait": 0.0}  # the current log window, carried over a resume
    start, elapsed = 0, 0.0

    resume_path = resume_path_for(checkpoint_path)
    state = load_checkpoint(resume_path, map_location=device) if resume_path.exists() else None
    regions = None if regions is None else [list(r) for r in regions]
    data = training_data_digest(volumes)
    if state is not None and (state["network"] != dict(network) or state.get("fold") != fold
                              or state.get("regions") != regions or not same_run(state["training"], training)
                              or state.get("arithmetic", arithmetic) != arithmetic):
        log.warning("ignoring %s: it was written with a different network/training config or arithmetic", resume_path)
        state = None
    if state is not None and state.get("data") != data:
        why = "it predates the training-data digest" if "data" not in state else "the training volumes changed since"
        log.warning("ignoring %s: it was trained on other data (%s)", resume_path, why)
        state = None
    if state is not None:
        model.load_state_dict(state["model_state"])
        optimizer.load_state_dict(state["optimizer_state"])
        if state["scaler_state"] or not scaler.is_enabled():  # a CPU run's empty state cannot enable one
            scaler.load_state_dict(state["scaler_state"])
        history, start, window, elapsed = state["history"], state["iteration"], state["window"], state["seconds"]
        log.info("resuming %s from iteration %d (%s)", checkpoint_path, start, resume_path)

    def snapshot(iteration: int, final: bool) -> dict:
        state = {
            "model_state": model.state_dict(),
            "network": dict(network),
            "iteration": iteration,
            "fold": fold,
            "training": dict(training),
            "regions": regions,
            "extra": dict(extra or {}),
        }
        if not final:
            state.update(optimizer_state=optimizer.state_dict(), scaler_state=scaler.state_dict(), arithmetic=arithmetic,
                         history=history, window=window, seconds=time.perf_counter() - clock, data=data)
        return state

    # --- loop --------------------------------------------------------------
    workers = loader_workers(training["num_workers"], threads, device)
    batches = TrainingBatches(volumes, tuple(network["patch_size"]), training, seed, fold, total)
    loader = batch_loader(batches, start, workers, int(training["prefetch_factor"]), device.type == "cuda")
    log.info("training on %s (%s), %d loader workers, iterations %d..%d", device,
             arithmetic, workers, start, total)
    model.train()
    every, log_every = int(training["checkpoint_every"]), int(training["log_every"])
    running = torch.tensor(window["loss_sum"], dtype=torch.float32, device=device)
    clock = time.perf_counter() - elapsed
    # a log file gets a progress line every 30 s, a terminal every 2 s
    refresh = 2.0 if sys.stderr.isatty() else 30.0
    bar = tqdm(total=total, initial=start, disable=not progress, mininterval=refresh, desc="train")
    batch_iter = iter(loader)
    for iteration in range(start, total):
        waited = time.perf_counter()
        x, y = next(batch_iter)
        window["wait"] += time.perf_counter() - waited
        x = x.to(device, non_blocking=True).contiguous(memory_format=layout)
        y = y.to(device, non_blocking=True).long()
        lr = learning_rate_at(iteration, training)
        for group in optimizer.param_groups:
            group["lr"] = lr

        loss = optimizer_step(model, optimizer, scaler, x, y, training["deep_supervision_weights"],
                              training["grad_clip_norm"], amp_dtype, regions)
        running += loss.detach()
        window["count"] += 1
        bar.update()

        done = iteration + 1
        if done % log_every == 0 or done == total:
            mean = float(running) / window["count"]  # the one host synchronisation of the window
            history.append({"iteration": done, "loss": mean, "learning_rate": lr,
                            "seconds": time.perf_counter() - clock, "batch_wait_seconds": window["wait"]})
            bar.set_postfix(loss=f"{mean:.4f}", refresh=False)
            running.zero_()
            window = {"loss_sum": 0.0, "count": 0, "wait": 0.0}
        if done % every == 0 and done < total:
            window["loss_sum"] = float(running)
            with io.atomic_path(resume_path) as tmp:
                torch.save(snapshot(done, final=False), tmp)
    bar.close()

    # --- final artifacts -----------------------------------------------------
    final = snapshot(total, final=True)
    io.save_table(pd.DataFrame(history), curve_path)
    with io.atomic_path(checkpoint_path) as tmp:
        torch.save(final, tmp)
    resume_path.unlink(missing_ok=True)
    log.info("trained %d iterations in %.1f s (%.1f s waiting for batches), final loss %.4f", total,
             history[-1]["seconds"], sum(h["batch_wait_seconds"] for h in history), history[-1]["loss"])
    return final
