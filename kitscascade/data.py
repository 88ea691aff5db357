"""Training patches: sampling with foreground oversampling, augmentation, and batches by iteration.

A training volume is a ``(C, Z, Y, X)`` float32 array of input channels
(channel 0 the normalised CT, channel 1 the stage-1 kidney prior in stage 2)
and a ``(Z, Y, X)`` uint8 label map, both read-only once indexed. Patches are
``(C, *patch)``; for a 2-D network the patch is ``(py, px)`` and one slice is
drawn.

:class:`TrainingBatches` makes batch ``i`` of a training run from a random
stream seeded with ``(seed, fold, i)`` only, so any process can make any
batch: the training loop's loader workers (``train.batch_loader``) give the
same batches in the same order whatever their number, and a resumed run
sees the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class TrainingVolume:
    channels: np.ndarray  # (C, Z, Y, X) float32
    label: np.ndarray  # (Z, Y, X) uint8
    foreground: dict[int, np.ndarray]  # class -> (N, 3) voxel coordinates, possibly subsampled

    @classmethod
    def from_arrays(cls, channels: np.ndarray, label: np.ndarray, max_foreground: int, seed: int = 0):
        """Index the voxels of every foreground class (at most ``max_foreground`` per class, drawn with ``seed``).

        The arrays are kept, not copied, when they already are contiguous
        float32 channels and uint8 labels, and are made read-only: the caller's
        own arrays too, then."""
        rng = np.random.default_rng(seed)
        foreground = {}
        for c in np.unique(label).tolist():
            if c == 0:
                continue
            coords = np.argwhere(label == c)
            if len(coords) > max_foreground:
                coords = coords[rng.choice(len(coords), max_foreground, replace=False)]
            foreground[int(c)] = coords
        channels = np.ascontiguousarray(channels, dtype=np.float32)
        label = np.ascontiguousarray(label, dtype=np.uint8)
        # read-only: loader workers share these pages with the training process (fork) and must not copy them
        channels.flags.writeable = label.flags.writeable = False
        return cls(channels, label, foreground)


def window_3d(patch_size) -> tuple[int, int, int]:
    """A 2-D patch (py, px) is a one-slice 3-D window (1, py, px)."""
    patch_size = tuple(int(p) for p in patch_size)
    return (1, *patch_size) if len(patch_size) == 2 else patch_size


def extract_patch(array: np.ndarray, center, size) -> np.ndarray:
    """The ``size`` window of the last 3 axes of ``array`` centred on ``center``, zero-padded at borders."""
    lead = array.shape[:-3]
    out = np.zeros(lead + tuple(size), dtype=array.dtype)
    src, dst = [], []
    for c, s, n in zip(center, size, array.shape[-3:]):
        start = int(c) - s // 2
        lo, hi = max(start, 0), min(start + s, n)
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[(..., *dst)] = array[(..., *src)]
    return out


def random_center(volume: TrainingVolume, size, rng: np.random.Generator, foreground: bool):
    """A patch centre: on a voxel of a foreground class, or uniform such that the patch stays inside.

    The class is drawn first, uniformly among those present (as nnU-Net does),
    so a small tumor is sampled as often as the kidney around it.
    """
    if foreground and volume.foreground:
        coords = volume.foreground[list(volume.foreground)[rng.integers(len(volume.foreground))]]
        return coords[rng.integers(len(coords))]
    # uniform start in [0, n - s] per axis, so the patch lies inside the volume where it fits
    return [int(rng.integers(s // 2, n - s + s // 2 + 1)) if n > s else n // 2 for n, s in zip(volume.label.shape, size)]


def augment(channels: np.ndarray, label: np.ndarray, aug: dict, rng: np.random.Generator):
    """Random flips, in-plane rotation and scaling, and CT intensity scale/shift.

    ``aug`` keys (see the config schema): ``flip_axes`` (spatial axes of the
    patch, 0 = slices), ``rotation_deg``, ``scale`` ([min, max]),
    ``spatial_probability``, ``intensity_scale``, ``intensity_shift``,
    ``intensity_probability``. Only channel 0 (the CT) gets intensity changes.
    """
    for axis in aug["flip_axes"]:
        if axis < label.ndim and rng.random() < 0.5:
            channels = np.flip(channels, axis=axis + 1)
            label = np.flip(label, axis=axis)
    if rng.random() < aug["spatial_probability"]:
        angle = np.deg2rad(rng.uniform(-1, 1) * aug["rotation_deg"])
        scale = rng.uniform(*aug["scale"])
        channels, label = rotate_scale_inplane(channels, label, angle, scale)
    channels = np.array(channels, dtype=np.float32)  # contiguous copy, never a view of the volume
    if rng.random() < aug["intensity_probability"]:
        channels[0] *= np.float32(1.0 + rng.uniform(-1, 1) * aug["intensity_scale"])
        channels[0] += np.float32(rng.uniform(-1, 1) * aug["intensity_shift"])
    return channels, np.ascontiguousarray(label)


def rotate_scale_inplane(channels: np.ndarray, label: np.ndarray, angle: float, scale: float):
    """Rotate by ``angle`` (radians) about the slice axis and zoom by ``scale``, about the patch centre."""
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    matrix = np.array([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
    center = (np.array(label.shape) - 1) / 2.0
    offset = center - matrix @ center
    warp = lambda a, order: ndimage.affine_transform(a, matrix, offset, order=order, mode="nearest")  # noqa: E731
    channels = np.stack([warp(c, 1) for c in channels])
    label = warp(label, 0)
    return channels, label


def perturb_prior(prior: np.ndarray, cfg: dict, rng: np.random.Generator) -> np.ndarray:
    """Corrupt a binary spatial prior so stage 2 does not trust it blindly (nnU-Net cascade style).

    With probability ``cfg["probability"]`` the prior is dilated or eroded by
    1..``cfg["max_iterations"]`` voxels; with ``cfg["drop_probability"]`` it is removed.
    """
    if rng.random() < cfg["drop_probability"]:
        return np.zeros_like(prior)
    if rng.random() < cfg["probability"]:
        steps = int(rng.integers(1, cfg["max_iterations"] + 1))
        op = ndimage.binary_dilation if rng.random() < 0.5 else ndimage.binary_erosion
        return op(prior > 0.5, iterations=steps).astype(prior.dtype)
    return prior


def sample_batch(
    volumes: list[TrainingVolume],
    patch_size,
    batch_size: int,
    foreground_fraction: float,
    rng: np.random.Generator,
    augmentation: dict | None = None,
    prior_perturbation: dict | None = None,
):
    """A batch ``(B, C, *patch)`` float32 and labels ``(B, *patch)`` uint8 (the training loop casts them
    to int64 on the device: an eighth of the bytes to copy).

    At least ``round(foreground_fraction * batch_size)`` patches are centred
    on a foreground voxel (oversampling: kidney and tumor are a small part of a CT).
    ``prior_perturbation`` corrupts channel 1 when given.
    """
    size = window_3d(patch_size)
    n_fg = int(round(foreground_fraction * batch_size))
    xs, ys = [], []
    for b in range(batch_size):
        volume = volumes[rng.integers(len(volumes))]
        center = random_center(volume, size, rng, foreground=b < n_fg)
        x = extract_patch(volume.channels, center, size)
        y = extract_patch(volume.label, center, size)
        if prior_perturbation and x.shape[0] > 1:
            x[1] = perturb_prior(x[1], prior_perturbation, rng)
        if augmentation:
            x, y = augment(x, y, augmentation, rng)
        xs.append(x)
        ys.append(y)
    x, y = np.stack(xs), np.stack(ys)
    if len(patch_size) == 2:  # drop the one-slice axis for a 2-D network
        x, y = x[:, :, 0], y[:, 0]
    return x, y


@dataclass
class TrainingBatches:
    """The batches of one training run, by iteration: ``batches[i]`` is ``sample_batch`` with the random
    stream ``numpy.random.default_rng([seed, fold, i])``.

    ``training`` is a stage's ``training`` config section (``batch_size``,
    ``foreground_fraction``, ``augmentation``, ``prior_perturbation``).
    Map-style (``len`` = number of iterations), so ``torch.utils.data.DataLoader``
    can hand iterations to worker processes.
    """

    volumes: list[TrainingVolume]
    patch_size: tuple[int, ...]
    training: dict
    seed: int
    fold: int
    iterations: int

    def __len__(self) -> int:
        return self.iterations

    def __getitem__(self, iteration: int):
        if not 0 <= iteration < self.iterations:
            raise IndexError(f"iteration {iteration} outside 0..{self.iterations - 1}")
        t = self.training
        rng = np.random.default_rng([self.seed, self.fold, int(iteration)])
        return sample_batch(self.volumes, self.patch_size, int(t["batch_size"]), float(t["foreground_fraction"]), rng,
                            t["augmentation"], t["prior_perturbation"])
