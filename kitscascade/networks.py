"""Segmentation networks of the cascade (paper sections 2.1 and 2.2).

* :class:`UNet` -- the plain U-Net of stage 1 (kidney localisation) and of the
  "2D/3D U-Net" ablations: two conv-InstanceNorm-LeakyReLU per level, max-pool
  down, transposed-conv up, concatenation skips.
* :class:`ResUNet` -- the stage-2 kidney/tumour network: pre-activation
  residual blocks, strided-conv down, transposed-conv up, additive skips and
  deep supervision.

Tensor axis order: ``(batch, channels, z, y, x)`` in 3-D (z = slices) and
``(batch, channels, y, x)`` in 2-D. Both networks return a list of logits, all
at the input's resolution (see :class:`UNet`).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_TRANSPOSE = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_NORM = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
_MAX_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_INTERPOLATION = {2: "bilinear", 3: "trilinear"}


# --------------------------------------------------------------------------
# argument checks and the pooling schedule
# --------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_positive_int(name: str, value: Any) -> int:
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def _check_patch_size(patch_size: Any) -> tuple[int, ...]:
    if isinstance(patch_size, str | bytes) or not isinstance(patch_size, Sequence):
        raise ValueError(
            f"patch_size must be a sequence of 2 or 3 ints, got {patch_size!r}"
        )
    if len(patch_size) not in (2, 3):
        raise ValueError(
            f"patch_size must have 2 (y, x) or 3 (z, y, x) entries, got {len(patch_size)}: {patch_size!r}"
        )
    return tuple(
        _check_positive_int(f"patch_size[{axis}]", size)
        for axis, size in enumerate(patch_size)
    )


def pool_schedule(
    patch_size: Sequence[int], min_size: int = 8, max_pools: int | None = None
) -> list[tuple[int, ...]]:
    """Pooling kernel of every downsampling step for a 2-D or 3-D patch.

    An axis is halved while its feature map is still ``>= min_size``, i.e. it
    gets the largest ``n`` with ``size >= min_size * 2**(n - 1)`` (capped at
    ``max_pools``); it ends smaller than ``min_size`` unless capped. For
    ``min_size=8`` this gives the paper's (4, 5, 5) pools for an
    (80, 160, 160) patch and (3, 5, 5) for (40, 128, 128).

    Axes with fewer pools than the deepest one use kernel 1 in the *first*
    (high-resolution) steps, where the slice axis is still coarse relative to
    the in-plane axes (nnU-Net's convention), e.g. (80, 160, 160) gives
    ``[(1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2)]``.

    Args:
        patch_size: ``(z, y, x)`` or ``(y, x)`` in voxels.
        min_size: feature-map size (voxels) below which an axis is not pooled.
        max_pools: optional cap on the number of pools per axis.

    Returns:
        One tuple per downsampling step (coarsest last), entries 1 or 2 per axis.

    Raises:
        ValueError: on a malformed argument, or when an axis size is not
            divisible by ``2**pools`` along that axis (the axis, size and
            required divisor are named).
    """
    patch = _check_patch_size(patch_size)
    min_size = _check_positive_int("min_size", min_size)
    if max_pools is not None and (not _is_int(max_pools) or max_pools < 0):
        raise ValueError(f"max_pools must be None or an int >= 0, got {max_pools!r}")
    pools = []
    for axis, size in enumerate(patch):
        n = 0
        while size >= min_size * 2 ** n and (max_pools is None or n < max_pools):
            n += 1
        if size % 2**n:
            raise ValueError(
                f"patch_size[{axis}]={size} is not divisible by {2**n}, the total pooling "
                f"along this axis ({n} halvings while the feature map is >= {min_size}); "
                f"use a multiple of {2**n}"
            )
        pools.append(n)
    steps = max(pools)
    return [
        tuple(2 if step >= steps - n else 1 for n in pools) for step in range(steps)
    ]


def pools_per_axis(schedule: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """Number of halvings per axis of a :func:`pool_schedule` (``()`` if it is empty)."""
    return tuple(sum(kernel == 2 for kernel in axis) for axis in zip(*schedule))


def _network_schedule(
    in_channels: Any,
    num_classes: Any,
    patch_size: Any,
    base_features: Any,
    max_features: Any,
    min_size: Any,
) -> tuple[list[tuple[int, ...]], list[int]]:
    """Check the shared network arguments; return the pool schedule and per-level widths."""
    _check_positive_int("in_channels", in_channels)
    _check_positive_int("num_classes", num_classes)
    base = _check_positive_int("base_features", base_features)
    cap = _check_positive_int("max_features", max_features)
    if cap < base:
        raise ValueError(f"max_features={cap} must be >= base_features={base}")
    schedule = pool_schedule(patch_size, min_size)
    if not schedule:
        raise ValueError(
            f"patch_size={tuple(patch_size)} allows no pooling: every axis is < min_size={min_size}"
        )
    widths = [min(base * 2**level, cap) for level in range(len(schedule) + 1)]
    return schedule, widths


def _check_input(x: torch.Tensor, in_channels: int, divisor: tuple[int, ...]) -> None:
    if x.ndim != len(divisor) + 2 or x.shape[1] != in_channels:
        raise ValueError(
            f"expected input of shape (batch, {in_channels}, {', '.join('*' * len(divisor))}), "
            f"got {tuple(x.shape)}"
        )
    if any(size % d for size, d in zip(x.shape[2:], divisor)):
        raise ValueError(
            f"input spatial shape {tuple(x.shape[2:])} must be divisible by {divisor} per axis"
        )


def _full_resolution_logits(
    features: list[torch.Tensor], heads: nn.ModuleList, size: torch.Size, mode: str
) -> list[torch.Tensor]:
    """Apply head ``i`` to ``features[i]``; upsample every result to ``size``."""
    logits = []
    for feature, head in zip(features, heads):
        out = head(feature)
        if out.shape[2:] != size:
            out = F.interpolate(out, size=size, mode=mode, align_corners=False)
        logits.append(out)
    return logits


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (elements) of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------


def _conv_norm_lrelu_block(
    dims: int, in_channels: int, out_channels: int
) -> nn.Sequential:
    """Two (3^dims conv -> InstanceNorm -> LeakyReLU(0.01)) layers."""
    conv, norm = _CONV[dims], _NORM[dims]
    return nn.Sequential(
        conv(in_channels, out_channels, 3, padding=1),
        norm(out_channels, affine=True),
        nn.LeakyReLU(0.01, inplace=True),
        conv(out_channels, out_channels, 3, padding=1),
        norm(out_channels, affine=True),
        nn.LeakyReLU(0.01, inplace=True),
    )


class PreActivationBlock(nn.Module):
    """Pre-activation block: (norm -> ReLU -> 3^dims conv) twice, plus a shortcut.

    With ``residual=True`` the input is added back: unchanged when the widths
    match, through a 1x1(x1) projection conv when ``out_channels !=
    in_channels`` (the first conv changes the width). With ``residual=False``
    it is a plain block without shortcut.
    """

    def __init__(
        self, dims: int, in_channels: int, out_channels: int, residual: bool
    ) -> None:
        super().__init__()
        conv, norm = _CONV[dims], _NORM[dims]
        self.body = nn.Sequential(
            norm(in_channels, affine=True),
            nn.ReLU(inplace=True),
            conv(in_channels, out_channels, 3, padding=1),
            norm(out_channels, affine=True),
            nn.ReLU(inplace=True),
            conv(out_channels, out_channels, 3, padding=1),
        )
        if not residual:
            self.shortcut = None
        elif in_channels == out_channels:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = conv(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return out if self.shortcut is None else out + self.shortcut(x)


# --------------------------------------------------------------------------
# networks
# --------------------------------------------------------------------------


class UNet(nn.Module):
    """Plain 2-D/3-D U-Net (stage 1 localiser and the U-Net ablations).

    Levels ``0..L`` where ``L = len(pool_schedule(patch_size, min_size))``;
    level ``l`` has ``min(base_features * 2**l, max_features)`` features.
    Encoder level: two 3^dims conv -> InstanceNorm(affine) -> LeakyReLU(0.01),
    then max pooling with the schedule's kernel (1x2x2 or 2x2x2). Decoder
    level: transposed conv (kernel = stride = pool kernel), concatenation with
    the encoder output of that level, two conv-norm-LeakyReLU; a 1x1(x1) conv
    head gives the logits.

    Input: ``(B, in_channels, z, y, x)`` (3-D) or ``(B, in_channels, y, x)``
    (2-D), float. Any spatial shape divisible per axis by ``2**pools`` (see
    :func:`pools_per_axis`) is accepted, so whole volumes as well as patches.

    Output (train and eval alike): a list of logits tensors, each
    ``(B, num_classes, *input_spatial_shape)``. Element 0 comes from the
    full-resolution decoder level; with ``deep_supervision`` the list holds one
    further head per decoder level ``1..L-1`` (finer to coarser), each
    upsampled (bi/trilinear, ``align_corners=False``) to the input size, so it
    has ``L`` elements; without it, exactly one.

    Raises:
        ValueError: naming the bad argument, before anything is built.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        patch_size: Sequence[int],
        base_features: int = 30,
        max_features: int = 320,
        min_size: int = 8,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        schedule, widths = _network_schedule(
            in_channels, num_classes, patch_size, base_features, max_features, min_size
        )
        dims = len(patch_size)
        _check_bool("deep_supervision", deep_supervision)
        self.config = dict(
            in_channels=in_channels,
            num_classes=num_classes,
            patch_size=tuple(patch_size),
            base_features=base_features,
            max_features=max_features,
            min_size=min_size,
            deep_supervision=deep_supervision,
        )
        self.schedule = schedule
        self.divisor = tuple(2**n for n in pools_per_axis(schedule))
        self._mode = _INTERPOLATION[dims]
        levels = range(len(schedule))
        self.encoder = nn.ModuleList(
            _conv_norm_lrelu_block(dims, w_in, w_out)
            for w_in, w_out in zip([in_channels, *widths[:-1]], widths)
        )
        self.pools = nn.ModuleList(
            _MAX_POOL[dims](kernel, kernel) for kernel in schedule
        )
        self.up = nn.ModuleList(
            _CONV_TRANSPOSE[dims](widths[l + 1], widths[l], schedule[l], schedule[l])
            for l in levels
        )
        self.decoder = nn.ModuleList(
            _conv_norm_lrelu_block(dims, 2 * widths[l], widths[l]) for l in levels
        )
        n_heads = len(schedule) if deep_supervision else 1
        self.heads = nn.ModuleList(
            _CONV[dims](widths[l], num_classes, 1) for l in range(n_heads)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        _check_input(x, self.config["in_channels"], self.divisor)
        size = x.shape[2:]
        skips = []
        for level, pool in enumerate(self.pools):
            x = self.encoder[level](x)
            skips.append(x)
            x = pool(x)
        x = self.encoder[-1](x)
        supervised = []  # decoder outputs of levels 1..len(heads)-1, coarse to fine
        for level in reversed(range(len(self.decoder))):
            x = self.decoder[level](torch.cat([self.up[level](x), skips[level]], dim=1))
            if 0 < level < len(self.heads):
                supervised.append(x)
        return _full_resolution_logits(
            [x, *reversed(supervised)], self.heads, size, self._mode
        )


class ResUNet(nn.Module):
    """Residual 2-D/3-D U-Net with deep supervision (stage 2, paper section 2.2).

    Widths ``F_l = min(base_features * 2**l, max_features)`` for levels
    ``0..L``, ``L = len(pool_schedule(patch_size, min_size))``.

    Encoder: a 1x3x3 conv (3x3 in 2-D) ``in_channels -> F_0``; at each level a
    pre-activation block (:class:`PreActivationBlock`, InstanceNorm + ReLU,
    identity shortcut); between levels a 3^dims conv with stride = pool kernel
    (padding 1), ``F_l -> F_{l+1}``.

    Decoder, level ``l = L-1 .. 0``, in the paper's order:

    1. transposed conv (kernel = stride = pool kernel) doubling the spatial
       size and mapping the incoming features to ``F_l``;
    2. ADDITION of the encoder output of level ``l`` (no concatenation);
    3. a pre-activation block whose first conv halves the features,
       ``F_l -> F_l // 2``, with a 1x1(x1) projection conv on the shortcut.

    The decoder thus hands ``F_l // 2`` features to the next level's
    transposed conv, which maps them to ``F_{l-1}`` (the same number unless
    ``max_features`` capped level ``l``), and the full-resolution output has
    ``F_0 // 2`` features (15 for the paper's 30).

    ``residual=False`` (ablation) makes every block plain: no identity, no
    projection; everything else is unchanged.

    Input, output and size limits are those of :class:`UNet`: a list of
    logits at the input resolution, element 0 the main head, then with
    ``deep_supervision`` (the default) one 1x1(x1) head per decoder level
    ``1..L-1``, finer to coarser, bi/trilinearly upsampled (``L`` elements).
    ``in_channels`` is 2 with the spatial prior (CT + stage-1 kidney mask),
    1 without.

    Raises:
        ValueError: naming the bad argument, before anything is built.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int = 3,
        patch_size: Sequence[int],
        base_features: int = 30,
        max_features: int = 320,
        min_size: int = 8,
        residual: bool = True,
        deep_supervision: bool = True,
    ) -> None:
        super().__init__()
        schedule, widths = _network_schedule(
            in_channels, num_classes, patch_size, base_features, max_features, min_size
        )
        if base_features < 2:
            raise ValueError(
                f"base_features must be >= 2 (the decoder halves it), got {base_features}"
            )
        dims = len(patch_size)
        _check_bool("residual", residual)
        _check_bool("deep_supervision", deep_supervision)
        self.config = dict(
            in_channels=in_channels,
            num_classes=num_classes,
            patch_size=tuple(patch_size),
            base_features=base_features,
            max_features=max_features,
            min_size=min_size,
            residual=residual,
            deep_supervision=deep_supervision,
        )
        self.schedule = schedule
        self.divisor = tuple(2**n for n in pools_per_axis(schedule))
        self._mode = _INTERPOLATION[dims]
        conv, levels = _CONV[dims], range(len(schedule))
        stem_kernel = (1, 3, 3) if dims == 3 else (3, 3)
        self.stem = conv(
            in_channels,
            widths[0],
            stem_kernel,
            padding=tuple(k // 2 for k in stem_kernel),
        )
        self.encoder = nn.ModuleList(
            PreActivationBlock(dims, w, w, residual) for w in widths
        )
        self.down = nn.ModuleList(
            conv(widths[l], widths[l + 1], 3, stride=schedule[l], padding=1)
            for l in levels
        )
        incoming = [
            widths[l + 1] // 2 if l + 1 < len(schedule) else widths[-1] for l in levels
        ]
        self.up = nn.ModuleList(
            _CONV_TRANSPOSE[dims](incoming[l], widths[l], schedule[l], schedule[l])
            for l in levels
        )
        self.decoder = nn.ModuleList(
            PreActivationBlock(dims, widths[l], widths[l] // 2, residual)
            for l in levels
        )
        n_heads = len(schedule) if deep_supervision else 1
        self.heads = nn.ModuleList(
            conv(widths[l] // 2, num_classes, 1) for l in range(n_heads)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        _check_input(x, self.config["in_channels"], self.divisor)
        size = x.shape[2:]
        x = self.stem(x)
        skips = []
        for level, down in enumerate(self.down):
            x = self.encoder[level](x)
            skips.append(x)
            x = down(x)
        x = self.encoder[-1](x)
        supervised = []  # decoder outputs of levels 1..len(heads)-1, coarse to fine
        for level in reversed(range(len(self.decoder))):
            x = self.decoder[level](self.up[level](x) + skips[level])
            if 0 < level < len(self.heads):
                supervised.append(x)
        return _full_resolution_logits(
            [x, *reversed(supervised)], self.heads, size, self._mode
        )


_NETWORKS = {"unet": UNet, "resunet": ResUNet}


def build_network(kind: str, **kwargs: Any) -> nn.Module:
    """Build ``UNet`` (``kind="unet"``) or ``ResUNet`` (``"resunet"``) from keyword arguments."""
    if kind not in _NETWORKS:
        raise ValueError(
            f"unknown network kind {kind!r}; valid kinds: {sorted(_NETWORKS)}"
        )
    return _NETWORKS[kind](**kwargs)
