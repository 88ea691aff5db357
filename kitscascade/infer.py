"""Inference: Gaussian-weighted sliding windows, mirroring TTA, ensembling, post-processing.

Axis order: an input volume is ``(C, Z, Y, X)`` float32 (``C`` input channels,
``Z`` the slice axis); probabilities are ``(num_classes, Z, Y, X)`` float32;
label maps and masks are ``(Z, Y, X)``.

A model is an ``nn.Module`` whose ``forward(x)`` returns a list of logits
tensors ``(B, num_classes, *spatial)``; element 0 is the full-resolution
output, the others are deep-supervision heads and are ignored here. A 3-D model
takes ``(B, C, pz, py, px)``; a 2-D model (``patch_size`` of length 2) takes
``(B, C, py, px)`` and is run slice by slice, as a 3-D window ``(1, py, px)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from contextlib import nullcontext

import cc3d
import numpy as np
import torch
from scipy import ndimage
from torch import nn

from kitscascade.train import (autocast_dtype, configure_backend, cpu_autocast_dtype, load_checkpoint, memory_format,
                               model_from_checkpoint, select_device)


def gaussian_importance_map(patch_size: Sequence[int], sigma_scale: float = 1 / 8) -> np.ndarray:
    """Gaussian weight of each voxel of a patch, for blending overlapping windows.

    Centred in the patch, ``sigma = sigma_scale * patch_size`` per axis,
    normalised to a maximum of 1; exact zeros (underflow for small sigmas) are
    replaced by the smallest non-zero value so every voxel has positive weight
    (as in nnU-Net). Returns float32 of shape ``patch_size``.
    """
    if sigma_scale <= 0 or any(p < 1 for p in patch_size):
        raise ValueError(f"need sigma_scale > 0 and patch sizes >= 1; got {sigma_scale}, {tuple(patch_size)}")
    weights = np.ones((), dtype=np.float64)
    for p in patch_size:
        d = (np.arange(p) - (p - 1) / 2) / (sigma_scale * p)
        weights = np.multiply.outer(weights, np.exp(-0.5 * d**2))
    weights = (weights / weights.max()).astype(np.float32)
    weights[weights == 0] = weights[weights > 0].min()
    return weights


def sliding_window_starts(size: int, patch: int, overlap: float = 0.5) -> list[int]:
    """Start indices of the windows along one axis of length ``size``.

    The target step is ``patch * (1 - overlap)`` (at least 1); the number of
    windows is the fewest that cover ``[0, size)`` with that step, and they are
    spread evenly (nnU-Net), so no step exceeds the target, the first window
    starts at 0 and the last ends flush at ``size``. If ``size <= patch`` there
    is one window at 0 (the caller pads the volume to the patch).
    """
    if size < 1 or patch < 1 or not 0 <= overlap < 1:
        raise ValueError(f"need size >= 1, patch >= 1, 0 <= overlap < 1; got {size}, {patch}, {overlap}")
    if size <= patch:
        return [0]
    n_steps = math.ceil((size - patch) / max(1.0, patch * (1 - overlap))) + 1
    step = (size - patch) / (n_steps - 1)
    return [round(step * i) for i in range(n_steps)]


def padding(shape: Sequence[int], window: Sequence[int]) -> tuple[tuple[int, ...], tuple[slice, ...]]:
    """A volume of ``shape`` as the sliding window sees it: padded (centred) to at least ``window`` per axis.

    Returns the padded shape and the slices of the volume inside it.
    """
    padded = tuple(max(s, w) for s, w in zip(shape, window))
    return padded, tuple(slice((p - s) // 2, (p - s) // 2 + s) for s, p in zip(shape, padded))


def window_boxes(shape: Sequence[int], window: Sequence[int], overlap: float = 0.5,
                 body: np.ndarray | None = None) -> list[tuple[slice, ...]]:
    """The windows of a sweep over a volume of ``shape`` (at least ``window`` on every axis, see
    :func:`padding`), as slices.

    Starts per axis from :func:`sliding_window_starts`, all combinations in C
    order; with a boolean ``body`` mask of ``shape``, only the windows that
    hold at least one body voxel. Raises ``ValueError`` for a shape smaller
    than the window or a mask of another shape.
    """
    if len(shape) != len(window) or any(s < w for s, w in zip(shape, window)):
        raise ValueError(f"shape {tuple(shape)} must be at least the window {tuple(window)} on every axis")
    if body is not None and np.shape(body) != tuple(shape):
        raise ValueError(f"body mask shape {np.shape(body)} does not match {tuple(shape)}")
    starts = (sliding_window_starts(n, w, overlap) for n, w in zip(shape, window))
    boxes = [tuple(slice(s, s + w) for s, w in zip(st, window)) for st in itertools.product(*starts)]
    if body is None:
        return boxes
    return [box for box in boxes if body[box].any()]


def _flip_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """All subsets of ``axes``: the 2**len(axes) mirroring passes (the empty one first)."""
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


def sliding_window_predict(
    models: Sequence[nn.Module],
    volume: np.ndarray,
    patch_size: Sequence[int],
    num_classes: int,
    overlap: float = 0.5,
    batch_size: int = 2,
    mirror_axes: Sequence[int] = (),
    device: str | torch.device = "cpu",
    amp_dtype: torch.dtype | None = None,
    layout: torch.memory_format = torch.contiguous_format,
    body: np.ndarray | None = None,
    activation: str = "softmax",
) -> np.ndarray:
    """Softmax (or per-channel sigmoid) probabilities of an ensemble over a whole volume, window by window.

    ``volume`` is ``(C, Z, Y, X)``; returns float32 ``(num_classes, Z, Y, X)``.
    ``patch_size`` is ``(pz, py, px)`` for 3-D models or ``(py, px)`` for 2-D
    models. A volume smaller than the patch is padded, centred, with each
    channel's minimum (air for CT; 0 for one-hot prior channels), and the
    padding is cropped off the result. Windows (``sliding_window_starts``) go
    through each model ``batch_size`` at a time; each window's prediction is the
    mean softmax of ``output[0]`` over all models (equal weights) and all
    ``2**len(mirror_axes)`` mirrorings, and windows are blended with
    ``gaussian_importance_map`` weights.

    ``mirror_axes`` are spatial axes of the volume (0 = Z, 1 = Y, 2 = X); Z is
    refused for 2-D models (a one-slice window has nothing to flip). Models are
    moved to ``device`` and put in eval mode (in place). The running sums live
    on ``device`` in float32. ``amp_dtype`` (float16 or bfloat16) enables
    autocast on CUDA, and bfloat16 on the CPU too; ``layout`` is the memory
    format of the windows as the models take them (``channels_last`` for 2-D
    models, ``channels_last_3d`` for 3-D ones, when the models were converted
    to it).

    ``activation`` is ``softmax`` over the classes or ``sigmoid`` per channel
    (region-based models, ``stage2.target: regions``); the mean is taken after it.

    ``body``, a boolean ``(Z, Y, X)`` mask of the volume's shape, restricts the
    sweep to the windows that hold at least one body voxel; voxels that no such
    window covers are background (probability 1 for class 0; 0 for every region). Every window
    that covers a body voxel runs either way, so inside the body the result is
    the full sweep's (bit for bit with ``batch_size`` 1; with larger batches
    the windows are grouped differently, which can move a float by rounding).
    An empty ``body`` gives background everywhere.
    """
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 4 or min(volume.shape) < 1:
        raise ValueError(f"volume must be a non-empty (C, Z, Y, X) array, got shape {volume.shape}")
    if len(patch_size) not in (2, 3):
        raise ValueError(f"patch_size must be (py, px) or (pz, py, px), got {tuple(patch_size)}")
    is_2d = len(patch_size) == 2
    window = (1, *patch_size) if is_2d else tuple(patch_size)
    allowed_axes = (1, 2) if is_2d else (0, 1, 2)
    if not set(mirror_axes) <= set(allowed_axes) or len(set(mirror_axes)) != len(mirror_axes):
        raise ValueError(f"mirror_axes must be distinct axes out of {allowed_axes}, got {tuple(mirror_axes)}")
    if not models or num_classes < 1 or batch_size < 1:
        raise ValueError(
            f"need >= 1 model, num_classes >= 1, batch_size >= 1; "
            f"got {len(models)}, {num_classes}, {batch_size}"
        )
    if activation not in ("softmax", "sigmoid"):
        raise ValueError(f"activation must be softmax or sigmoid, got {activation!r}")
    device = torch.device(device)
    shape = volume.shape[1:]
    if body is not None and np.shape(body) != shape:
        raise ValueError(f"body mask shape {np.shape(body)} does not match the volume's {shape}")

    padded_shape, crop = padding(shape, window)
    if padded_shape != shape:
        padded = np.empty((volume.shape[0], *padded_shape), dtype=np.float32)
        padded[:] = volume.min(axis=(1, 2, 3))[:, None, None, None]
        padded[(slice(None), *crop)] = volume
        volume = padded
    image = torch.from_numpy(volume)
    if body is not None:
        padded_body = np.zeros(padded_shape, dtype=bool)
        padded_body[crop] = body
        body = padded_body

    gaussian = torch.from_numpy(gaussian_importance_map(window)).to(device)
    probs = torch.zeros((num_classes, *padded_shape), dtype=torch.float32, device=device)
    weights = torch.zeros(padded_shape, dtype=torch.float32, device=device)
    # tensor dims of a (B, C, Z, Y, X) batch to flip, one tuple per mirroring pass
    flips = [tuple(a + 2 for a in combo) for combo in _flip_combinations(mirror_axes)]
    n_passes = len(models) * len(flips)
    for model in models:
        model.to(device).eval()

    boxes = window_boxes(padded_shape, window, overlap, body)
    use_amp = amp_dtype is not None and (device.type == "cuda" or amp_dtype == torch.bfloat16)
    amp = torch.autocast(device_type=device.type, dtype=amp_dtype) if use_amp else nullcontext()
    with torch.inference_mode(), amp:
        for first in range(0, len(boxes), batch_size):
            batch_boxes = boxes[first : first + batch_size]
            x = torch.stack([image[(slice(None), *box)] for box in batch_boxes]).to(device)
            mean = torch.zeros((len(batch_boxes), num_classes, *window), dtype=torch.float32, device=device)
            for model in models:
                for dims in flips:
                    xf = x.flip(dims) if dims else x
                    logits = model((xf[:, :, 0] if is_2d else xf).contiguous(memory_format=layout))[0]
                    logits = logits.unsqueeze(2) if is_2d else logits
                    if logits.shape[1] != num_classes or logits.shape[2:] != window:
                        raise ValueError(
                            f"model output {tuple(logits.shape)} does not match "
                            f"num_classes={num_classes}, window={window}"
                        )
                    p = logits.float().softmax(dim=1) if activation == "softmax" else logits.float().sigmoid()
                    mean += p.flip(dims) if dims else p
            mean *= gaussian / n_passes
            for box, window_probs in zip(batch_boxes, mean):
                probs[(slice(None), *box)] += window_probs
                weights[box] += gaussian

    if body is not None:  # voxels of no window: background
        uncovered = weights == 0
        weights[uncovered] = 1
        if activation == "softmax":
            probs[0][uncovered] = 1
    probs /= weights
    return np.ascontiguousarray(probs[(slice(None), *crop)].cpu().numpy())


def ensemble_predictor(model_paths, cfg: dict, threads: int):
    """Load the fold models once; return ``predict(volume, num_classes)`` giving their averaged softmax
    (``activation="sigmoid"``: their averaged per-channel sigmoid).

    ``cfg`` is a stage's config section: its ``inference`` settings (overlap,
    batch, mirroring, the CPU's precision) and, from ``training``, the device
    (CUDA when available and asked for, else the CPU with ``threads`` torch
    threads), the precision on a GPU, cuDNN autotuning and the memory format,
    as in training.
    ``volume`` is ``(C, Z, Y, X)``; the result ``(num_classes, Z, Y, X)`` float32;
    ``body`` as in :func:`sliding_window_predict`. ``predict.regions`` lists each
    checkpoint's trained regions (None for class-based models).
    """
    torch.set_num_threads(max(1, int(threads)))
    training, inference = cfg["training"], cfg["inference"]
    device = select_device(training["device"])
    configure_backend(training, device)
    if device.type == "cuda":
        amp_dtype = autocast_dtype(training["precision"], device)
    else:
        amp_dtype = cpu_autocast_dtype(inference["cpu_precision"])
    checkpoints = [load_checkpoint(p, map_location=device) for p in model_paths]
    patch = checkpoints[0]["network"]["patch_size"]
    layout = memory_format(training, len(patch)) if device.type == "cuda" else torch.contiguous_format
    models = [model_from_checkpoint(c, device).to(memory_format=layout) for c in checkpoints]

    def predict(volume: np.ndarray, num_classes: int, body: np.ndarray | None = None,
                activation: str = "softmax") -> np.ndarray:
        return sliding_window_predict(
            models, volume, patch, num_classes, overlap=inference["overlap"], batch_size=inference["batch_size"],
            mirror_axes=tuple(inference["mirror_axes"]), device=device, amp_dtype=amp_dtype, layout=layout,
            body=body, activation=activation,
        )

    # what each model was trained on: its region lists (region-based stage 2) or None (classes)
    predict.regions = [c.get("regions") for c in checkpoints]
    return predict


def drop_components_below_peak(mask: np.ndarray, probability: np.ndarray, min_peak: float,
                               connectivity: int = 26) -> tuple[np.ndarray, int]:
    """Keep the largest connected component of a boolean ``(Z, Y, X)`` mask, and every other one whose
    highest ``probability`` reaches ``min_peak``; returns the mask and the number of components dropped.

    Hysteresis thresholding (Canny 1986; ``skimage.filters.apply_hysteresis_threshold``) seeds each
    kept region with a voxel above a high threshold; here the largest component needs no seed, so
    a scan keeps at least one kidney however unsure the network is. ``probability`` has the mask's
    shape (the foreground probability the mask was thresholded from). Components of equal size are
    ranked as in :func:`keep_largest_components`. Raises ``ValueError`` for shapes that differ.
    """
    mask = np.asarray(mask, dtype=bool)
    if probability.shape != mask.shape:
        raise ValueError(f"probability has shape {probability.shape}, the mask {mask.shape}")
    labels, n = cc3d.connected_components(mask, connectivity=connectivity, return_N=True)
    if n <= 1:
        return labels > 0, 0
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = -1
    inside = labels > 0  # the peaks of the mask's voxels alone: ndimage sorts what it is given
    peaks = ndimage.maximum(probability[inside], labels[inside], np.arange(1, n + 1))
    keep = np.concatenate([[False], np.asarray(peaks) >= min_peak])
    keep[int(np.argmax(sizes))] = True  # argmax: the first of equal sizes (cc3d's scan order)
    return keep[labels], int(n - keep.sum())


def keep_largest_components(mask: np.ndarray, k: int, connectivity: int = 26) -> np.ndarray:
    """Keep the ``k`` largest connected components of a boolean ``(Z, Y, X)`` mask.

    ``connectivity`` is 6, 18 or 26 (faces, +edges, +corners). Components of
    equal size are ranked by their ``cc3d`` label (scan order), so the result is
    deterministic. An empty mask gives an empty mask.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    mask = np.asarray(mask, dtype=bool)
    labels, n = cc3d.connected_components(mask, connectivity=connectivity, return_N=True)
    if n <= k:
        return labels > 0
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    keep = np.zeros(n + 1, dtype=bool)
    keep[np.argsort(-sizes, kind="stable")[:k] + 1] = True
    return keep[labels]


def keep_overlapping_components(label_map: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """``label_map`` with only the 26-connected components of ``label > 0`` that overlap ``seed``.

    ``label_map`` is uint8 ``(Z, Y, X)``, ``seed`` a boolean mask of its
    shape; voxels in a component that touches ``seed`` keep their labels,
    everything else becomes 0 (all 0 when none touches it). Stage 2 uses it
    for a grown ROI: what it predicts there must go on from the kidney it
    grew for, not be another kidney or a false one the larger box reached.
    """
    if label_map.shape != seed.shape:
        raise ValueError(f"seed shape {seed.shape} is not the label map's {label_map.shape}")
    components = cc3d.connected_components(label_map > 0, connectivity=26)
    touching = np.unique(components[seed & (components > 0)])
    return np.where(np.isin(components, touching), label_map, 0).astype(np.uint8)


def postprocess_kidney_tumor(label_map: np.ndarray) -> np.ndarray:
    """Stage-2 rule: keep the largest connected component of ``label > 0``.

    ``label_map`` is uint8 ``(Z, Y, X)`` in {0 background, 1 kidney, 2 tumor};
    kidney and tumor voxels inside the largest foreground component (26-connected)
    keep their labels, everything else becomes 0.
    """
    if label_map.ndim != 3:
        raise ValueError(f"label_map must be (Z, Y, X), got shape {label_map.shape}")
    keep = keep_largest_components(label_map > 0, 1)
    return np.where(keep, label_map, 0).astype(np.uint8)
