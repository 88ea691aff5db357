"""Unit tests for kitscascade.infer: windows, Gaussian blending, TTA, ensembling, post-processing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from kitscascade.infer import (
    drop_components_below_peak,
    gaussian_importance_map,
    keep_largest_components,
    keep_overlapping_components,
    postprocess_kidney_tumor,
    sliding_window_predict,
    sliding_window_starts,
    window_boxes,
)
from kitscascade.roi import body_mask


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


class ConstantModel(nn.Module):
    """Returns the same logits at every voxel; checks it gets 2-D or 3-D input as told."""

    def __init__(self, logits: tuple[float, ...], spatial_dims: int = 3) -> None:
        super().__init__()
        self.logits = torch.tensor(logits, dtype=torch.float32)
        self.spatial_dims = spatial_dims

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        assert x.ndim == 2 + self.spatial_dims
        shape = (x.shape[0], len(self.logits), *x.shape[2:])
        out = self.logits.view(1, -1, *[1] * self.spatial_dims).expand(shape)
        return [out, out[..., ::2]]  # second entry: a deep-supervision head, to be ignored


class RampModel(nn.Module):
    """Logits (input, 0.5 * x index): not equivariant under flipping the last (X) axis."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        ramp = 0.5 * torch.arange(x.shape[-1], dtype=torch.float32).expand_as(x[:, 0])
        return [torch.stack([x[:, 0], ramp], dim=1)]


class ListOutput(nn.Module):
    """Wraps a plain network so that forward returns a list, as our models do."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.net(x)]


def test_gaussian_importance_map() -> None:
    g = gaussian_importance_map((4, 16, 10))
    assert g.shape == (4, 16, 10) and g.dtype == np.float32
    assert g.max() == pytest.approx(1.0)
    assert (g > 0).all()
    for axis in range(3):
        np.testing.assert_array_equal(g, np.flip(g, axis))
    assert g[2, 8, 5] > g[2, 8, 0]  # centre outweighs the border
    tiny = gaussian_importance_map((64,), sigma_scale=1 / 200)  # underflows to 0 without the floor
    assert (tiny > 0).all()


def test_sliding_window_starts() -> None:
    assert sliding_window_starts(10, 4) == [0, 2, 4, 6]
    assert sliding_window_starts(3, 4) == [0]
    assert sliding_window_starts(4, 4) == [0]
    assert sliding_window_starts(5, 1) == [0, 1, 2, 3, 4]  # 2-D slice axis: step never below 1
    for size, patch, overlap in [(37, 16, 0.5), (29, 16, 0.5), (11, 4, 0.5), (100, 32, 0.25), (7, 4, 0.0)]:
        starts = sliding_window_starts(size, patch, overlap)
        assert starts[0] == 0 and starts[-1] == size - patch
        steps = np.diff(starts)
        assert (steps >= 1).all() and (steps <= max(1, patch * (1 - overlap))).all()
        covered = np.zeros(size, dtype=bool)
        for s in starts:
            covered[s : s + patch] = True
        assert covered.all()
    with pytest.raises(ValueError):
        sliding_window_starts(10, 4, overlap=1.0)


@pytest.mark.parametrize("patch_size, dims", [((4, 16, 16), 3), ((16, 16), 2)])
def test_constant_model_gives_constant_probabilities(patch_size: tuple[int, ...], dims: int) -> None:
    volume = np.random.default_rng(0).normal(size=(1, 7, 37, 29)).astype(np.float32)
    model = ConstantModel((0.0, math.log(3.0)), dims)
    probs = sliding_window_predict([model], volume, patch_size, num_classes=2)
    assert probs.shape == (2, 7, 37, 29) and probs.dtype == np.float32
    np.testing.assert_allclose(probs[0], 0.25, atol=1e-5)
    np.testing.assert_allclose(probs[1], 0.75, atol=1e-5)


def test_pointwise_model_is_independent_of_windowing() -> None:
    conv = nn.Conv3d(2, 3, kernel_size=1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, -0.5]]).view(3, 2, 1, 1, 1))
        conv.bias.copy_(torch.tensor([0.0, 0.2, -0.1]))
    volume = np.random.default_rng(1).normal(size=(2, 3, 37, 29)).astype(np.float32)  # Z < patch: padded
    probs = sliding_window_predict([ListOutput(conv)], volume, (4, 16, 16), num_classes=3, overlap=0.5)
    with torch.no_grad():
        expected = conv(torch.from_numpy(volume)[None]).softmax(dim=1)[0].numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)


@pytest.mark.parametrize("patch_size", [(2, 8, 12), (8, 12)])
def test_mirroring_averages_the_flipped_pass(patch_size: tuple[int, ...]) -> None:
    volume = np.random.default_rng(2).normal(size=(1, 2, 8, 12)).astype(np.float32)  # one window (per slice)
    v, x = volume[0], np.arange(12, dtype=np.float32)

    def sigmoid(t: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-t))

    plain = sliding_window_predict([RampModel()], volume, patch_size, num_classes=2)
    np.testing.assert_allclose(plain[1], sigmoid(0.5 * x - v), atol=1e-5)
    mirrored = sliding_window_predict([RampModel()], volume, patch_size, num_classes=2, mirror_axes=(2,))
    # the flipped pass sees ramp 0.5 * x at flipped position x, i.e. 0.5 * (11 - x) once flipped back
    expected = 0.5 * (sigmoid(0.5 * x - v) + sigmoid(0.5 * (11 - x) - v))
    np.testing.assert_allclose(mirrored[1], expected, atol=1e-5)
    np.testing.assert_allclose(mirrored.sum(axis=0), 1.0, atol=1e-5)


def test_batch_size_does_not_change_the_result() -> None:
    net = ListOutput(nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 2, 1)))
    volume = np.random.default_rng(3).normal(size=(1, 9, 20, 23)).astype(np.float32)
    kwargs = dict(patch_size=(4, 8, 8), num_classes=2, mirror_axes=(0, 2))
    one = sliding_window_predict([net], volume, batch_size=1, **kwargs)
    three = sliding_window_predict([net], volume, batch_size=3, **kwargs)
    np.testing.assert_allclose(one, three, atol=1e-6)


class CountingModel(nn.Module):
    """A small convolutional network that counts the windows it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 3, 1))
        self.windows = 0

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.windows += x.shape[0]
        return [self.net(x)]


def body_phantom(shape=(12, 40, 44)) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like volume in HU: a body ellipse (soft tissue, one lung-like air hole) off-centre in air, and a
    small bright object (the table) apart from it; and the body mask the test expects."""
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    body = ((y - 14) / 11) ** 2 + ((x - 15) / 12) ** 2 <= 1
    image = np.full(shape, -1000.0, np.float32)
    image[np.broadcast_to(body, shape)] = 40.0
    image[4:7, 12:16, 12:16] = -850.0  # air inside the body
    image[:, 36:38, 30:42] = 100.0  # the table: a separate, smaller component
    expected = np.broadcast_to(body, shape).copy()
    expected[4:7, 12:16, 12:16] = False
    return image, expected


def test_body_mask_is_the_largest_component_above_the_threshold() -> None:
    image, expected = body_phantom()
    np.testing.assert_array_equal(body_mask(image, -500), expected)
    for padding in (-1024, -2048, -3024):  # scanner padding outside the field of view
        padded = image.copy()
        padded[:, :, :3] = padding
        np.testing.assert_array_equal(body_mask(padded, -500), expected & (np.arange(44) >= 3))
    assert not body_mask(np.full((3, 4, 5), -1000.0), -500).any()
    with pytest.raises(ValueError, match="Z, Y, X"):
        body_mask(image[0], -500)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_body_windows_give_the_full_sweep_inside_the_body(batch_size: int) -> None:
    """Only windows touching the body run; inside the body the probabilities are the full sweep's (bit for bit
    one window at a time), voxels of no window that ran are background."""
    image, _ = body_phantom()
    body = body_mask(image, -500)
    volume = (image / 1000)[None]
    model = CountingModel()
    kwargs = dict(patch_size=(4, 12, 12), num_classes=3, overlap=0.5, batch_size=batch_size, mirror_axes=(2,))
    full = sliding_window_predict([model], volume, **kwargs)
    windows_full, model.windows = model.windows, 0
    inside = sliding_window_predict([model], volume, body=body, **kwargs)
    boxes = window_boxes(volume.shape[1:], (4, 12, 12), 0.5)
    kept = window_boxes(volume.shape[1:], (4, 12, 12), 0.5, body)
    assert windows_full == 2 * len(boxes) and model.windows == 2 * len(kept)  # two mirroring passes each
    assert 0 < len(kept) < len(boxes)
    if batch_size == 1:
        np.testing.assert_array_equal(inside[:, body], full[:, body])
    else:
        np.testing.assert_allclose(inside[:, body], full[:, body], atol=1e-6)
    covered = np.zeros(body.shape, bool)
    for box in kept:
        covered[box] = True
    assert (~covered).any() and (inside[0, ~covered] == 1).all() and (inside[1:, ~covered] == 0).all()
    np.testing.assert_allclose(inside.sum(axis=0), 1.0, atol=1e-5)
    empty = sliding_window_predict([model], volume, body=np.zeros_like(body), **kwargs)
    assert (empty[0] == 1).all()
    with pytest.raises(ValueError, match="body mask shape"):
        sliding_window_predict([model], volume, body=body[1:], **kwargs)


def test_body_windows_of_a_volume_smaller_than_the_patch() -> None:
    """The body mask is padded with the volume (never body), and the padding cropped off again: on a
    volume smaller than the patch along Z and Y, with the body in one corner of a long X axis."""
    image = np.full((3, 9, 60), -1000.0, np.float32)
    image[:, 1:5, 2:9] = 40.0
    body = body_mask(image, -500)
    model = CountingModel()
    kwargs = dict(patch_size=(4, 12, 12), num_classes=3, batch_size=1)
    full = sliding_window_predict([model], (image / 1000)[None], **kwargs)
    windows_full, model.windows = model.windows, 0
    inside = sliding_window_predict([model], (image / 1000)[None], body=body, **kwargs)
    # X windows start every 6 voxels: those at 0 and 6 touch the body (X 2..8), the 7 others do not
    assert inside.shape == full.shape and (model.windows, windows_full) == (2, 9)
    np.testing.assert_array_equal(inside[:, body], full[:, body])
    assert (inside[0, :, :, 18:] == 1).all() and (inside[0, :, :, :18] < 1).all()


def test_ensemble_is_the_mean_softmax() -> None:
    volume = np.zeros((1, 5, 10, 10), dtype=np.float32)
    models = [ConstantModel((0.0, 0.0)), ConstantModel((0.0, math.log(3.0)))]
    probs = sliding_window_predict(models, volume, (4, 8, 8), num_classes=2)
    np.testing.assert_allclose(probs[0], (0.5 + 0.25) / 2, atol=1e-5)
    np.testing.assert_allclose(probs[1], (0.5 + 0.75) / 2, atol=1e-5)


def test_ensemble_of_region_models_is_the_mean_sigmoid() -> None:
    volume = np.zeros((1, 5, 10, 10), dtype=np.float32)
    models = [ConstantModel((0.0, 2.0)), ConstantModel((math.log(3.0), -2.0))]
    probs = sliding_window_predict(models, volume, (4, 8, 8), num_classes=2, activation="sigmoid")
    np.testing.assert_allclose(probs[0], (0.5 + 0.75) / 2, atol=1e-5)
    np.testing.assert_allclose(probs[1], 0.5, atol=1e-5)  # sigmoid(2) + sigmoid(-2) = 1
    image, _ = body_phantom()
    body = body_mask(image, -500)
    inside = sliding_window_predict(models, (image / 1000)[None], (4, 12, 12), num_classes=2, body=body,
                                    activation="sigmoid")
    assert (inside[:, ~body].min() == 0) and np.allclose(inside[0, body], 0.625, atol=1e-5)  # no region outside
    with pytest.raises(ValueError, match="activation"):
        sliding_window_predict(models, volume, (4, 8, 8), num_classes=2, activation="relu")


def test_sliding_window_predict_rejects_bad_arguments() -> None:
    volume = np.zeros((1, 4, 8, 8), dtype=np.float32)
    model = [ConstantModel((0.0, 0.0))]
    with pytest.raises(ValueError, match="patch_size"):
        sliding_window_predict(model, volume, (2, 4, 4, 4), num_classes=2)
    with pytest.raises(ValueError, match="mirror_axes"):
        sliding_window_predict(model, volume, (8, 8), num_classes=2, mirror_axes=(0,))
    with pytest.raises(ValueError, match="volume"):
        sliding_window_predict(model, volume[0], (4, 8, 8), num_classes=2)
    with pytest.raises(ValueError, match="num_classes=3"):
        sliding_window_predict(model, volume, (4, 8, 8), num_classes=3)


def three_blobs() -> np.ndarray:
    mask = np.zeros((10, 20, 20), dtype=bool)
    mask[0, 0:2, 0:5] = True  # 10 voxels
    mask[3:5, 5:10, 5:10] = True  # 50 voxels
    mask[7:9, 12:15, 12:17] = True  # 30 voxels
    return mask


def test_keep_largest_components() -> None:
    mask = three_blobs()
    two = keep_largest_components(mask, 2)
    assert two.sum() == 80 and two[3:5, 5:10, 5:10].all() and two[7:9, 12:15, 12:17].all()
    one = keep_largest_components(mask, 1)
    assert one.sum() == 50 and one[3:5, 5:10, 5:10].all()
    np.testing.assert_array_equal(keep_largest_components(mask, 5), mask)
    assert not keep_largest_components(np.zeros((3, 3, 3), dtype=bool), 1).any()
    with pytest.raises(ValueError):
        keep_largest_components(mask, 0)


def test_keep_largest_components_connectivity_and_ties() -> None:
    mask = np.zeros((3, 3, 3), dtype=bool)
    mask[0, 0, 0] = mask[1, 1, 1] = True  # touching only at a corner
    assert keep_largest_components(mask, 1).sum() == 2
    six = keep_largest_components(mask, 1, connectivity=6)  # two 1-voxel components: first in scan order wins
    assert six.sum() == 1 and six[0, 0, 0]


@pytest.mark.parametrize(("peaks", "min_peak", "kept"), [
    ((0.95, 0.999, 0.99), 0.99, (50, 30, 10)),  # the largest needs no peak; the others reach it exactly or above
    ((0.95, 0.999, 0.98), 0.99, (50, 30)),
    ((0.95, 0.7, 0.98), 0.99, (50,)),  # none of the others: the largest alone
    ((0.6, 0.7, 0.98), 0.5, (50, 30, 10)),
])
def test_drop_components_below_peak(peaks, min_peak, kept) -> None:
    """Hysteresis on components: besides the largest, a component stays only if its probability reaches
    ``min_peak`` somewhere; the peak is the component's maximum, not its mean."""
    mask = three_blobs()
    probability = np.where(mask, 0.55, 0.0)
    blobs = {50: (slice(3, 5), slice(5, 10), slice(5, 10)), 30: (slice(7, 9), slice(12, 15), slice(12, 17)),
             10: (slice(0, 1), slice(0, 2), slice(0, 5))}
    for (size, box), peak in zip(blobs.items(), peaks):
        probability[box][0, 0, 0] = peak  # one voxel per component
    out, dropped = drop_components_below_peak(mask, probability, min_peak)
    expected = np.zeros_like(mask)
    for size in kept:
        expected[blobs[size]] = True
    np.testing.assert_array_equal(out, expected)
    assert dropped == 3 - len(kept)


def test_drop_components_below_peak_edge_cases() -> None:
    empty = np.zeros((3, 3, 3), dtype=bool)
    out, dropped = drop_components_below_peak(empty, np.zeros((3, 3, 3)), 0.9)
    assert not out.any() and dropped == 0
    one = empty.copy()
    one[1, 1, 1] = True  # a lone component is the largest: kept below the peak
    out, dropped = drop_components_below_peak(one, np.full((3, 3, 3), 0.6), 0.9)
    np.testing.assert_array_equal(out, one)
    assert dropped == 0
    tie = empty.copy()
    tie[0, 0, 0] = tie[2, 2, 2] = True  # two 1-voxel components: the first in scan order is the largest
    out, dropped = drop_components_below_peak(tie, np.full((3, 3, 3), 0.6), 0.9)
    assert out.sum() == 1 and out[0, 0, 0] and dropped == 1
    with pytest.raises(ValueError, match="shape"):
        drop_components_below_peak(one, np.zeros((3, 3, 4)), 0.9)


def test_postprocess_kidney_tumor_keeps_labels_in_largest_component() -> None:
    labels = np.zeros((6, 12, 12), dtype=np.uint8)
    labels[0:2, 0:2, 0:5] = 1  # kidney 20 voxels
    labels[0:2, 2:4, 0:5] = 2  # tumor 20 voxels, touching it: one 40-voxel component
    labels[4:6, 6:9, 6:11] = 1  # a lone kidney blob of 30 voxels, larger than either label alone
    labels[5, 0, 11] = 2  # a stray tumor voxel
    out = postprocess_kidney_tumor(labels)
    expected = labels.copy()
    expected[4:6, 6:9, 6:11] = 0
    expected[5, 0, 11] = 0
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


def test_keep_overlapping_components_keeps_what_goes_on_from_the_seed() -> None:
    """A grown ROI keeps the components that overlap its previous prediction, with their labels, and
    drops another kidney the larger box reached, however large."""
    labels = np.zeros((6, 12, 12), dtype=np.uint8)
    labels[0:2, 0:2, 0:5] = 1
    labels[0:2, 2:4, 0:5] = 2  # the kidney and its tumor, one component
    labels[3:6, 5:12, 5:12] = 1  # another, larger kidney
    labels[5, 0, 0] = 2  # a stray voxel
    seed = np.zeros(labels.shape, bool)
    seed[0, 3, 4] = True  # inside the tumor only
    expected = np.zeros_like(labels)
    expected[0:2, 0:4, 0:5] = labels[0:2, 0:4, 0:5]
    out = keep_overlapping_components(labels, seed)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)
    seed[4, 6, 6] = True  # a seed in two components keeps both
    both = labels.copy()
    both[5, 0, 0] = 0
    np.testing.assert_array_equal(keep_overlapping_components(labels, seed), both)
    assert not keep_overlapping_components(labels, np.zeros(labels.shape, bool)).any()
    with pytest.raises(ValueError, match="seed shape"):
        keep_overlapping_components(labels, seed[:3])


@pytest.mark.parametrize("patch, layout", [((4, 8, 8), torch.channels_last_3d), ((8, 8), torch.channels_last)])
def test_channels_last_windows_give_the_same_probabilities(patch, layout):
    """``layout`` is the models' memory format: channels_last_3d for 3-D, channels_last for 2-D networks."""
    from kitscascade.networks import build_network

    torch.manual_seed(0)
    model = build_network("unet", in_channels=1, num_classes=2, patch_size=list(patch), base_features=2,
                          max_features=4, min_size=4).eval()
    volume = np.random.default_rng(0).normal(size=(1, 6, 12, 12)).astype(np.float32)
    plain = sliding_window_predict([model], volume, patch, 2)
    converted = sliding_window_predict([model.to(memory_format=layout)], volume, patch, 2, layout=layout)
    np.testing.assert_allclose(converted, plain, atol=1e-5)


def test_bf16_on_the_cpu_autocasts_the_windows() -> None:
    """bfloat16 on the CPU runs the convolutions in bfloat16 (the probabilities move by its rounding only) and
    still sums the windows in float32."""
    net = ListOutput(nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 3, 1)))
    volume = np.random.default_rng(4).normal(size=(1, 9, 20, 23)).astype(np.float32)
    kwargs = dict(patch_size=(4, 8, 8), num_classes=3)
    fp32 = sliding_window_predict([net], volume, **kwargs)
    bf16 = sliding_window_predict([net], volume, amp_dtype=torch.bfloat16, **kwargs)
    assert bf16.dtype == np.float32 and not np.array_equal(bf16, fp32)
    np.testing.assert_allclose(bf16, fp32, atol=2e-2)
    np.testing.assert_allclose(bf16.sum(axis=0), 1.0, atol=1e-5)


def test_window_boxes_refuse_what_the_sweep_never_gives_them() -> None:
    assert len(window_boxes((8, 12, 12), (4, 12, 12), 0.5)) == 3
    with pytest.raises(ValueError, match=r"shape \(3, 12, 12\) must be at least the window \(4, 12, 12\)"):
        window_boxes((3, 12, 12), (4, 12, 12))
    with pytest.raises(ValueError, match=r"body mask shape \(8, 12\) does not match \(8, 12, 12\)"):
        window_boxes((8, 12, 12), (4, 12, 12), body=np.ones((8, 12), bool))
