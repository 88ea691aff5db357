"""Memory discipline of the volume-sized steps: float32 results, no full-volume float64 or one-hot copies.

``tracemalloc`` sees every NumPy array allocation, so its peak over a call is
the call's largest simultaneous working set. The bounds are in units of the
input's size; a single float64 copy of the input (the old
``ndimage.zoom`` prefilter) would exceed each of them.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from torch import nn

from kitscascade.infer import sliding_window_predict
from kitscascade.normalize import clip_and_zscore, zscore_within
from kitscascade.resample import resample_labels, resample_probabilities, resample_volume

SHAPE = (64, 256, 256)  # 16 MB in float32


def peak_bytes(function, *args, **kwargs) -> tuple[int, object]:
    """Peak traced allocation (bytes) while ``function(*args, **kwargs)`` runs, and its result."""
    tracemalloc.start()
    try:
        result = function(*args, **kwargs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, result


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    return np.random.default_rng(0).normal(0, 300, size=SHAPE).astype(np.float32)


@pytest.mark.parametrize("layout", ["C", "F"])  # nibabel gives Fortran-ordered arrays
@pytest.mark.parametrize("new_shape", [(64, 128, 128), (32, 128, 128), (128, 128, 128)])
def test_resample_volume_stays_within_its_output_and_a_few_blocks(volume, layout, new_shape):
    vol = np.asarray(volume, order=layout)
    peak, out = peak_bytes(resample_volume, vol, new_shape, order=3)
    assert out.dtype == np.float32 and out.shape == new_shape and out.flags.c_contiguous
    # output + work blocks; a float64 copy of the input alone would be 2x the input
    assert peak < out.nbytes + vol.nbytes, (peak / vol.nbytes, out.nbytes / vol.nbytes)


def test_resample_labels_never_holds_a_float_one_hot_of_the_input():
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[10:50, 60:200, 40:120] = 1
    label[20:30, 100:140, 60:90] = 2
    peak, out = peak_bytes(resample_labels, label, (64, 128, 128), n_classes=3)
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 1, 2}
    # a boolean mask of the input, float32 output-size volumes; a float32 indicator of the input alone is 4x
    assert peak < 4 * label.nbytes, peak / label.nbytes


def test_normalisation_makes_exactly_one_float32_copy(volume):
    peak, out = peak_bytes(clip_and_zscore, volume, -80.0, 300.0, 100.0, 80.0)
    assert out.dtype == np.float32 and peak < 1.05 * volume.nbytes
    peak, out = peak_bytes(zscore_within, volume, -80.0, 300.0)
    assert out.dtype == np.float32 and peak < 1.05 * volume.nbytes
    assert clip_and_zscore(volume.astype(np.int16), -80, 300, 100, 80).dtype == np.float32


def test_probability_outputs_are_float32():
    probs = np.random.default_rng(1).random((2, 8, 16, 16)).astype(np.float32)
    assert resample_probabilities(probs, (8, 32, 32)).dtype == np.float32
    assert resample_volume(probs[0] > 0.5, (4, 8, 8), order=1).dtype == np.float32

    class Doubler(nn.Module):
        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            return [torch.cat([x, 2 * x], dim=1)]

    out = sliding_window_predict([Doubler()], np.ones((1, 12, 20, 20)), (8, 16, 16), num_classes=2)
    assert out.dtype == np.float32 and out.shape == (2, 12, 20, 20)


def test_loader_workers_share_the_training_volumes_instead_of_copying_them():
    """Each forked loader worker's own memory (USS) stays below the size of ONE training volume,
    while the volumes together are four times that (a copy per worker would hold all four)."""
    import psutil

    from kitscascade.config import defaults
    from kitscascade.data import TrainingBatches, TrainingVolume
    from kitscascade.train import batch_loader

    rng = np.random.default_rng(0)
    shape = (128, 256, 512)  # 64 MB of float32 each
    volumes = []
    for _ in range(4):
        label = np.zeros(shape, np.uint8)
        label[40:80, 100:160, 200:300] = 1
        image = rng.standard_normal(size=(1, *shape), dtype=np.float32)
        volumes.append(TrainingVolume.from_arrays(image, label, max_foreground=20000))
    one_volume = volumes[0].channels.nbytes + volumes[0].label.nbytes
    training = defaults()["stage1"]["training"]
    batches = TrainingBatches(volumes, (32, 64, 64), training, seed=0, fold=0, iterations=40)
    batch_iter = iter(batch_loader(batches, start=0, workers=2, prefetch_factor=2, pin_memory=False))
    for _ in range(12):  # every worker has made several batches from several volumes
        next(batch_iter)
    workers = psutil.Process().children()
    assert len(workers) == 2
    own = [w.memory_full_info().uss for w in workers]
    assert max(own) < one_volume, (own, one_volume)
    del batch_iter
