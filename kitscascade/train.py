"""The training loop, shared by both stages: setup -> sample batch -> step -> log -> checkpoint.

Stage 1 (the localizer) and stage 2 (the kidney/tumor network) differ only in
the network config, the training volumes and a few config keys; they call
the same :func:`train_model`.

Checkpoints describe themselves (weights, network config, patch size,
normalisation, iteration) and load with ``torch.load(..., weights_only=True)``.
While training, a resume file next to the final checkpoint is rewritten every
``checkpoint_every`` iterations (with optimizer and RNG states); a restarted
job (killed, or requeued by SLURM) continues from it and ends with the same
weights it would have had without the interruption (on CPU).
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from kitscascade import io
from kitscascade.data import TrainingVolume, sample_batch
from kitscascade.losses import deep_supervision_loss
from kitscascade.networks import build_network

log = logging.getLogger(__name__)


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


def same_run(saved: dict, training: dict) -> bool:
    """Whether a resume file's training settings continue into ``training`` (the checkpoint
    interval and the device may change between attempts; nothing else may)."""
    ignore = {"checkpoint_every", "device"}
    return {k: v for k, v in saved.items() if k not in ignore} == {
        k: v for k, v in training.items() if k not in ignore
    }


def learning_rate_at(iteration: int, cfg: dict) -> float:
    """Constant, or nnU-Net's polynomial decay ``lr * (1 - it/total) ** 0.9``."""
    lr = float(cfg["learning_rate"])
    if cfg["lr_decay"] == "poly":
        return lr * (1.0 - iteration / cfg["iterations"]) ** 0.9
    return lr


def optimizer_step(model, optimizer, scaler, x, y, ds_weights, grad_clip_norm: float,
                   use_amp: bool = False) -> torch.Tensor:
    """One step: forward (float16 autocast on CUDA), CE + Dice over every head, backward,
    gradient clipping at ``grad_clip_norm``, Adam update. Returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.float16) if use_amp else nullcontext():
        outputs = model(x)
    loss = deep_supervision_loss(outputs, y, ds_weights)
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
    extra: dict | None = None,
    threads: int = 1,
    progress: bool = True,
) -> dict:
    """Train one model and write its final checkpoint and loss curve (CSV), atomically.

    ``network``: keyword arguments of :func:`kitscascade.networks.build_network`
    (``kind``, ``patch_size``, ...). ``training``: the stage's training config
    (iterations, batch_size, learning_rate, lr_decay, foreground_fraction,
    augmentation, prior_perturbation, deep_supervision_weights,
    checkpoint_every, seed, device). ``extra`` is stored in the checkpoint
    as is (e.g. normalisation statistics, fold, case ids).
    Returns the final checkpoint dict.
    """
    # --- setup -------------------------------------------------------------
    if not volumes:
        raise ValueError("train_model: no training volumes")
    torch.set_num_threads(max(1, int(threads)))
    device = select_device(training["device"])
    use_amp = device.type == "cuda"
    torch.manual_seed(training["seed"])
    rng = np.random.default_rng(training["seed"])
    model = build_network(**network).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(training["learning_rate"]))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    history: list[dict] = []
    start = 0

    resume_path = resume_path_for(checkpoint_path)
    state = load_checkpoint(resume_path, map_location=device) if resume_path.exists() else None
    if state is not None and (state["network"] != dict(network) or not same_run(state["training"], training)):
        log.warning("ignoring %s: it was written with a different network/training config", resume_path)
        state = None
    if state is not None:
        model.load_state_dict(state["model_state"])
        optimizer.load_state_dict(state["optimizer_state"])
        scaler.load_state_dict(state["scaler_state"])
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        history, start = state["history"], state["iteration"]
        log.info("resuming %s from iteration %d (%s)", checkpoint_path, start, resume_path)

    def snapshot(iteration: int, final: bool) -> dict:
        state = {
            "model_state": model.state_dict(),
            "network": dict(network),
            "iteration": iteration,
            "training": dict(training),
            "extra": dict(extra or {}),
        }
        if not final:
            state.update(
                optimizer_state=optimizer.state_dict(),
                scaler_state=scaler.state_dict(),
                numpy_rng=rng.bit_generator.state,
                torch_rng=torch.get_rng_state(),
                history=history,
            )
        return state

    # --- loop --------------------------------------------------------------
    model.train()
    total = int(training["iterations"])
    every = int(training["checkpoint_every"])
    clock = time.perf_counter() - (history[-1]["seconds"] if history else 0.0)
    # a log file gets a progress line every 30 s, a terminal every 2 s
    refresh = 2.0 if sys.stderr.isatty() else 30.0
    bar = tqdm(range(start, total), initial=start, total=total, disable=not progress, mininterval=refresh, desc="train")
    for iteration in bar:
        x, y = sample_batch(
            volumes,
            network["patch_size"],
            int(training["batch_size"]),
            float(training["foreground_fraction"]),
            rng,
            training["augmentation"],
            training["prior_perturbation"],
        )
        x = torch.from_numpy(x).to(device, non_blocking=True)
        y = torch.from_numpy(y).to(device, non_blocking=True)
        lr = learning_rate_at(iteration, training)
        for group in optimizer.param_groups:
            group["lr"] = lr

        loss = optimizer_step(model, optimizer, scaler, x, y, training["deep_supervision_weights"],
                              training["grad_clip_norm"], use_amp)

        history.append(
            {"iteration": iteration + 1, "loss": float(loss.detach()), "learning_rate": lr,
             "seconds": time.perf_counter() - clock}
        )
        bar.set_postfix(loss=f"{np.mean([h['loss'] for h in history[-20:]]):.4f}")
        if (iteration + 1) % every == 0 and iteration + 1 < total:
            with io.atomic_path(resume_path) as tmp:
                torch.save(snapshot(iteration + 1, final=False), tmp)

    # --- final artifacts -----------------------------------------------------
    final = snapshot(total, final=True)
    io.save_table(pd.DataFrame(history), curve_path)
    with io.atomic_path(checkpoint_path) as tmp:
        torch.save(final, tmp)
    resume_path.unlink(missing_ok=True)
    log.info("trained %d iterations in %.1f s, final loss %.4f", total, history[-1]["seconds"], history[-1]["loss"])
    return final
