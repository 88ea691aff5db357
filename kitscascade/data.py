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

import functools
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
    """nnU-Net-style augmentation of one patch with MONAI's array transforms, every draw from ``rng``.

    ``channels`` is ``(C, Z, Y, X)`` float32 (channel 0 the normalised CT, a
    further channel the stage-2 prior), ``label`` ``(Z, Y, X)`` uint8; a
    one-slice patch (2-D networks) is augmented in-plane only. Returns new
    contiguous arrays of the same shapes and dtypes. In order, each with its
    own probability (``aug`` keys, see the config schema; defaults follow
    nnU-Net's ``nnUNetTrainer.get_training_transforms``, with the exceptions the
    schema lists: narrower out-of-plane rotation, noise sd rather than variance
    up to 0.1, no inverted gamma):

    - rotation (``rotation_probability``; angles uniform in
      ``+-rotation_deg[a]`` about patch axis ``a``, 0 = the slice axis) and
      isotropic scaling (``scaling_probability``; factor uniform in ``scale``),
      as one resampling of the patch about its centre (``monai.transforms.Affine``:
      linear for the image channels, nearest for the prior and the labels,
      border padding);
    - on the CT channel only: Gaussian noise (``noise_probability``, sd uniform
      in ``[0, noise_std]``), Gaussian blur (``blur_probability``, sigma uniform
      in ``blur_sigma`` voxels per axis), brightness (``brightness_probability``,
      multiplication by a factor in ``1 +- brightness``), contrast
      (``contrast_probability``, ``1 +- contrast`` about the patch mean, range
      kept), simulated low resolution (``low_resolution_probability``,
      nearest-neighbour down- and linear upsampling by a zoom in
      ``low_resolution``) and gamma (``gamma_probability``, exponent in
      ``gamma`` on the patch rescaled to [0, 1], mean and sd kept);
    - mirroring along each of ``flip_axes`` with probability 0.5.

    MONAI's random transforms are seeded from ``rng``, so a patch depends only
    on ``rng``'s state (the batches' determinism, ``TrainingBatches``).
    """
    import torch
    from monai.data import set_track_meta
    from monai.transforms import Affine

    set_track_meta(False)  # plain tensors: no metadata bookkeeping per patch
    flat = label.shape[0] == 1  # a 2-D network's one-slice patch
    if flat:
        channels, label = channels[:, 0], label[0]
    dims = label.ndim
    rotate = rng.random() < aug["rotation_probability"]
    scale = rng.random() < aug["scaling_probability"]
    if rotate or scale:
        limits = aug["rotation_deg"][:1] if flat else aug["rotation_deg"]
        angles = [float(np.deg2rad(rng.uniform(-r, r))) if rotate else 0.0 for r in limits]
        factor = float(rng.uniform(*aug["scale"])) if scale else 1.0
        params = dict(rotate_params=angles[0] if flat else angles, scale_params=[factor] * dims,
                      padding_mode="border", image_only=True)
        image = Affine(mode="bilinear", **params)(torch.from_numpy(np.ascontiguousarray(channels[:1])))
        rest = [Affine(mode="nearest", **params)(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)))
                for a in (channels[1:], label[None])]
        channels = np.concatenate([image.numpy(), rest[0].numpy()]) if channels.shape[0] > 1 else image.numpy()
        label = np.rint(rest[1].numpy()[0]).astype(np.uint8)
    channels = np.array(channels, dtype=np.float32)  # contiguous copy, never a view of the volume
    ct = _intensity_transforms(_freeze(aug), dims)
    ct.set_random_state(seed=int(rng.integers(2**32)))
    channels[0] = np.asarray(ct(torch.from_numpy(channels[:1])))[0]
    for axis in aug["flip_axes"]:
        if flat and axis == 0:
            continue
        if rng.random() < 0.5:
            a = axis - 1 if flat else axis
            channels, label = np.flip(channels, axis=a + 1), np.flip(label, axis=a)
    channels, label = np.ascontiguousarray(channels), np.ascontiguousarray(label)
    if flat:
        channels, label = channels[:, None], label[None]
    return channels, label


def _freeze(aug: dict) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in aug.items()))


@functools.lru_cache(maxsize=8)
def _intensity_transforms(frozen: tuple, dims: int):
    """MONAI's random intensity transforms of ``augment`` for one ``(1, *spatial)`` CT channel."""
    from monai import transforms as mt

    aug = dict(frozen)
    sigma = tuple(aug["blur_sigma"])
    return mt.Compose([
        mt.RandGaussianNoise(prob=aug["noise_probability"], mean=0.0, std=aug["noise_std"], sample_std=True),
        mt.RandGaussianSmooth(sigma_x=sigma, sigma_y=sigma, sigma_z=sigma, prob=aug["blur_probability"]),
        mt.RandScaleIntensity(factors=aug["brightness"], prob=aug["brightness_probability"]),
        mt.RandScaleIntensityFixedMean(factors=aug["contrast"], preserve_range=True,
                                       prob=aug["contrast_probability"]),
        mt.RandSimulateLowResolution(zoom_range=tuple(aug["low_resolution"]),
                                     upsample_mode="trilinear" if dims == 3 else "bilinear",
                                     prob=aug["low_resolution_probability"]),
        mt.RandAdjustContrast(gamma=tuple(aug["gamma"]), retain_stats=True, prob=aug["gamma_probability"]),
    ])


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
    negative_volume_fraction: float | None = None,
):
    """A batch ``(B, C, *patch)`` float32 and labels ``(B, *patch)`` uint8 (the training loop casts them
    to int64 on the device: an eighth of the bytes to copy).

    The first ``round(foreground_fraction * batch_size)`` patches are centred
    on a foreground voxel where their volume has one (oversampling: kidney and
    tumor are a small part of a CT), else at random.
    ``prior_perturbation`` corrupts channel 1 when given.

    Each patch's volume is drawn uniformly from ``volumes``, unless
    ``negative_volume_fraction`` is set and some volumes hold no foreground
    voxel while others do (in stage 2: the ROIs of kidneys that stage 1
    marked falsely). Then a foreground-centred patch comes from a volume with
    foreground, and any other patch from a volume without with probability
    ``negative_volume_fraction``, else from one with foreground (so 0 never
    draws a volume without foreground, unlike null).
    """
    size = window_3d(patch_size)
    n_fg = int(round(foreground_fraction * batch_size))
    pools = None
    if negative_volume_fraction is not None:
        empty = [v for v in volumes if not v.foreground]
        if empty and len(empty) < len(volumes):
            pools = (empty, [v for v in volumes if v.foreground])
    xs, ys = [], []
    for b in range(batch_size):
        if pools is None:
            volume = volumes[rng.integers(len(volumes))]
        else:
            negative = b >= n_fg and rng.random() < negative_volume_fraction
            pool = pools[0] if negative else pools[1]
            volume = pool[rng.integers(len(pool))]
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
    ``foreground_fraction``, ``augmentation``, ``prior_perturbation``, and ``negative_volume_fraction``,
    which may be absent: ``config.without_execution`` leaves it out at null).
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
                            t["augmentation"], t["prior_perturbation"], t.get("negative_volume_fraction"))
