"""Training losses: cross-entropy + soft Dice (paper section 3) and deep supervision.

Shapes: ``logits`` is ``(B, C, *spatial)`` (any dtype; computed in float32 so
it is safe under autocast), ``target`` is an integer label map
``(B, *spatial)`` with values in ``0..C-1`` (0 = background).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _check_logits_target(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.ndim < 3 or target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"expected logits (B, C, *spatial) and target (B, *spatial), "
            f"got logits {tuple(logits.shape)} and target {tuple(target.shape)}"
        )
    if target.dtype != torch.long:
        raise ValueError(
            f"target must be an integer label map of dtype torch.long, got {target.dtype}"
        )


def soft_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    eps: float = 1e-5,
    include_background: bool = False,
) -> torch.Tensor:
    """Batch soft Dice loss, ``1 - mean_c dice_c``.

    ``dice_c = (2 * sum(p_c * t_c) + eps) / (sum(p_c) + sum(t_c) + eps)`` with
    ``p = softmax(logits)`` over channels, ``t`` the one-hot target, and the
    sums running over the batch and all voxels together (one Dice per class
    for the whole batch). The mean is over classes ``1..C-1`` unless
    ``include_background``. Returns a float32 scalar in ``[0, 1]``.
    """
    _check_logits_target(logits, target)
    num_classes = logits.shape[1]
    first = 0 if include_background else 1
    if num_classes <= first:
        raise ValueError(
            f"soft_dice_loss needs at least one foreground channel, got C={num_classes}"
        )
    probs = torch.softmax(logits.float(), dim=1)
    one_hot = F.one_hot(target, num_classes).movedim(-1, 1).to(probs.dtype)
    dims = (0, *range(2, logits.ndim))
    intersection = (probs * one_hot).sum(dims)
    denominator = probs.sum(dims) + one_hot.sum(dims)
    dice = (2 * intersection + eps) / (denominator + eps)
    return 1 - dice[first:].mean()


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus soft Dice (foreground classes), as in the paper; float32 scalar."""
    _check_logits_target(logits, target)
    return F.cross_entropy(logits.float(), target) + soft_dice_loss(logits, target)


def region_targets(target: torch.Tensor, regions: Sequence[Sequence[int]]) -> torch.Tensor:
    """Binary region maps ``(B, R, *spatial)`` float32 from a label map ``(B, *spatial)``: channel ``r``
    is 1 where the label is one of the classes in ``regions[r]``."""
    return torch.stack([torch.isin(target, torch.tensor(list(r), device=target.device)) for r in regions],
                       dim=1).float()


def dice_bce_region_loss(logits: torch.Tensor, target: torch.Tensor, regions: Sequence[Sequence[int]],
                         eps: float = 1e-5) -> torch.Tensor:
    """Region-based loss (nnU-Net's for KiTS, Isensee et al. 2021, arXiv:2110.03352): binary
    cross-entropy on the logits plus ``1 - mean_r dice_r`` of ``sigmoid(logits)``, per region.

    ``logits`` is ``(B, R, *spatial)``, one channel per region; ``target`` a
    label map ``(B, *spatial)``, long; ``regions[r]`` the classes region ``r``
    holds (e.g. ``[(1, 2), (2,)]``: kidney+tumor, tumor). Soft Dice as in
    :func:`soft_dice_loss`, batch-wide per region. Returns a float32 scalar.
    """
    if logits.ndim < 3 or target.shape != logits.shape[:1] + logits.shape[2:] or logits.shape[1] != len(regions):
        raise ValueError(f"expected logits (B, {len(regions)}, *spatial) for {len(regions)} regions and target "
                         f"(B, *spatial), got logits {tuple(logits.shape)} and target {tuple(target.shape)}")
    truth = region_targets(target, regions)
    logits = logits.float()
    probs = torch.sigmoid(logits)
    dims = (0, *range(2, logits.ndim))
    dice = (2 * (probs * truth).sum(dims) + eps) / (probs.sum(dims) + truth.sum(dims) + eps)
    return F.binary_cross_entropy_with_logits(logits, truth) + 1 - dice.mean()


def deep_supervision_weights(n: int, scheme: str = "halving") -> list[float]:
    """Loss weights of ``n`` heads, ordered finest (main output) first, summing to 1.

    ``"halving"``: proportional to ``1 / 2**i`` (nnU-Net's weighting, without
    nnU-Net's zeroing of the coarsest head), e.g. ``n=3`` gives
    ``[4/7, 2/7, 1/7]``. ``"uniform"``: all ``1 / n``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if scheme == "halving":
        raw = [0.5**i for i in range(n)]
    elif scheme == "uniform":
        raw = [1.0] * n
    else:
        raise ValueError(
            f"unknown deep-supervision scheme {scheme!r}; valid: ['halving', 'uniform']"
        )
    return [w / sum(raw) for w in raw]


def deep_supervision_loss(
    outputs: Sequence[torch.Tensor],
    target: torch.Tensor,
    weights: Sequence[float] | None = None,
    regions: Sequence[Sequence[int]] | None = None,
) -> torch.Tensor:
    """Weighted sum of :func:`dice_ce_loss` (with ``regions``: :func:`dice_bce_region_loss`) over heads
    that are all at full resolution.

    Args:
        outputs: logits ``(B, C, *spatial)`` per head, main output first (the
            list a network's ``forward`` returns).
        target: label map ``(B, *spatial)``, long.
        weights: one weight per head; default ``deep_supervision_weights(len(outputs))``.
        regions: classes per output channel for region-based training; None for softmax classes.
    """
    if len(outputs) == 0:
        raise ValueError(
            "outputs must hold at least one logits tensor, got an empty sequence"
        )
    if weights is None:
        weights = deep_supervision_weights(len(outputs))
    if len(weights) != len(outputs):
        raise ValueError(
            f"got {len(weights)} weights {list(weights)} for {len(outputs)} outputs"
        )
    if regions is not None:
        return sum(w * dice_bce_region_loss(logits, target, regions) for w, logits in zip(weights, outputs))
    return sum(w * dice_ce_loss(logits, target) for w, logits in zip(weights, outputs))
