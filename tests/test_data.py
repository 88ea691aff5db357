import numpy as np
import pytest

from kitscascade.config import defaults
from kitscascade.data import TrainingBatches, TrainingVolume, augment, extract_patch, perturb_prior, sample_batch

AUGMENTATION = defaults()["stage2"]["training"]["augmentation"]
PERTURBATION = defaults()["stage2"]["training"]["prior_perturbation"]


def volume(shape=(10, 40, 40)):
    label = np.zeros(shape, np.uint8)
    label[4:6, 30:34, 30:34] = 1
    channels = np.stack([np.random.default_rng(0).normal(size=shape), label]).astype(np.float32)
    return TrainingVolume.from_arrays(channels, label, max_foreground=1000)


def test_extract_patch_pads_with_zeros_at_borders():
    arr = np.arange(4 * 5 * 6).reshape(4, 5, 6) + 1
    patch = extract_patch(arr, (0, 0, 0), (2, 2, 2))
    assert patch.shape == (2, 2, 2)
    assert patch[0].sum() == 0 and patch[1, 1, 1] == arr[0, 0, 0]
    np.testing.assert_array_equal(extract_patch(arr, (2, 2, 3), (4, 5, 6)), arr)


def test_foreground_oversampling():
    rng = np.random.default_rng(0)
    x, y = sample_batch([volume()], (4, 8, 8), batch_size=4, foreground_fraction=0.5, rng=rng)
    assert x.shape == (4, 2, 4, 8, 8) and y.shape == (4, 4, 8, 8)
    assert x.dtype == np.float32 and y.dtype == np.uint8
    assert y[0].any() and y[1].any()  # the first half is centred on foreground
    # channel 1 carries the label here, so input and target stay aligned through sampling
    np.testing.assert_array_equal(x[:, 1] > 0.5, y > 0)


def test_2d_patches_are_single_slices():
    x, y = sample_batch([volume()], (8, 8), 3, 1.0, np.random.default_rng(1))
    assert x.shape == (3, 2, 8, 8) and y.shape == (3, 8, 8) and y.any(axis=(1, 2)).all()


PROBABILITIES = [k for k in AUGMENTATION if k.endswith("_probability")]


def test_augmentation_keeps_alignment_and_shape():
    rng = np.random.default_rng(2)
    aug = {**AUGMENTATION, **{k: 1.0 for k in PROBABILITIES}, "flip_axes": [0, 1, 2]}
    label = np.zeros((6, 16, 16), np.uint8)
    label[2:4, 4:12, 6:10] = 1
    channels = np.stack([label * 1.0, label * 1.0]).astype(np.float32)
    for _ in range(5):
        x, y = augment(channels, label, aug, rng)
        assert x.shape == channels.shape and y.shape == label.shape
        assert x.dtype == np.float32 and y.dtype == np.uint8
        np.testing.assert_array_equal(x[1] > 0.5, y > 0)  # the prior channel moves with the label
        assert set(np.unique(y)) <= {0, 1}


def test_augmentation_with_every_probability_zero_is_the_identity():
    rng = np.random.default_rng(3)
    aug = {**AUGMENTATION, **{k: 0.0 for k in PROBABILITIES}, "flip_axes": []}
    channels = rng.normal(size=(2, 6, 16, 16)).astype(np.float32)
    label = (channels[1] > 0).astype(np.uint8)
    x, y = augment(channels, label, aug, rng)
    np.testing.assert_array_equal(x, channels)
    np.testing.assert_array_equal(y, label)


@pytest.mark.parametrize("key", PROBABILITIES)
def test_each_transform_acts_alone_and_intensity_ones_touch_only_the_ct(key):
    rng = np.random.default_rng(4)
    aug = {**AUGMENTATION, **{k: 0.0 for k in PROBABILITIES}, "flip_axes": [], key: 1.0}
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in (8, 16, 16)), indexing="ij")
    ct = (np.sin(3 * x + 2 * y) + np.cos(4 * z) + 0.1 * rng.normal(size=x.shape)).astype(np.float32)
    label = (x**2 + y**2 < 0.3).astype(np.uint8)
    channels = np.stack([ct, label.astype(np.float32)])
    out, out_label = augment(channels, label, aug, rng)
    assert not np.allclose(out[0], ct, atol=1e-4), f"{key}: the CT did not change"
    if key in ("rotation_probability", "scaling_probability"):
        np.testing.assert_array_equal(out[1] > 0.5, out_label > 0)
    else:
        np.testing.assert_array_equal(out[1], channels[1])
        np.testing.assert_array_equal(out_label, label)


def test_2d_patches_are_augmented_in_plane():
    rng = np.random.default_rng(5)
    aug = {**AUGMENTATION, **{k: 1.0 for k in PROBABILITIES}, "flip_axes": [0, 1, 2]}
    label = np.zeros((1, 16, 16), np.uint8)
    label[0, 4:12, 6:10] = 1
    channels = np.stack([label * 1.0, label * 1.0]).astype(np.float32)
    for _ in range(3):
        x, y = augment(channels, label, aug, rng)
        assert x.shape == channels.shape and y.shape == label.shape
        np.testing.assert_array_equal(x[1] > 0.5, y > 0)


def test_sampling_is_deterministic():
    a = sample_batch([volume()], (4, 8, 8), 2, 0.5, np.random.default_rng(5), AUGMENTATION)
    b = sample_batch([volume()], (4, 8, 8), 2, 0.5, np.random.default_rng(5), AUGMENTATION)
    np.testing.assert_array_equal(a[0], b[0])


def empty_volume(shape=(10, 40, 40)):
    """An ROI without foreground (a kidney stage 1 marked falsely): the prior channel is set, the label not."""
    channels = np.stack([np.full(shape, 7.0), np.ones(shape)]).astype(np.float32)
    return TrainingVolume.from_arrays(channels, np.zeros(shape, np.uint8), max_foreground=1000)


def test_negative_volumes_get_the_share_of_patches_asked_for():
    volumes = [volume(), empty_volume()]

    def share_of_empty(fraction, foreground_fraction=0.5, n=400):
        rng = np.random.default_rng(0)
        x = np.concatenate([sample_batch(volumes, (4, 8, 8), 2, foreground_fraction, rng,
                                         negative_volume_fraction=fraction)[0] for _ in range(n // 2)])
        return (x[:, 0] == 7.0).all(axis=(1, 2, 3)).reshape(-1, 2).mean(axis=0)  # per position in the batch

    assert share_of_empty(1.0).tolist() == [0.0, 1.0]  # the foreground patch never, the other always
    assert share_of_empty(0.0).tolist() == [0.0, 0.0]
    assert 0.15 < share_of_empty(0.3)[1] < 0.45 and share_of_empty(0.3)[0] == 0.0
    assert share_of_empty(1.0, foreground_fraction=0.0).tolist() == [1.0, 1.0]
    unset = share_of_empty(None)  # uniform over the two volumes: a foreground patch from the empty one too
    assert 0.35 < unset[0] < 0.65 and 0.35 < unset[1] < 0.65


def test_negative_volume_fraction_changes_nothing_where_all_or_no_volumes_have_foreground():
    for volumes in ([volume(), volume((12, 40, 40))], [empty_volume(), empty_volume((12, 40, 40))]):
        a = sample_batch(volumes, (4, 8, 8), 2, 0.5, np.random.default_rng(5), AUGMENTATION)
        b = sample_batch(volumes, (4, 8, 8), 2, 0.5, np.random.default_rng(5), AUGMENTATION,
                         negative_volume_fraction=0.5)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_training_batches_read_negative_volume_fraction_or_its_absence():
    """The workflow leaves the key out at null (config.without_execution): absent samples as null does."""
    training = {k: v for k, v in defaults()["stage2"]["training"].items() if k != "negative_volume_fraction"}
    volumes = [volume(), empty_volume()]

    def batch(settings, i=3):
        return TrainingBatches(volumes, (4, 8, 8), settings, seed=0, fold=1, iterations=5)[i]

    for i in range(5):
        expected = sample_batch(volumes, (4, 8, 8), 2, training["foreground_fraction"],
                                np.random.default_rng([0, 1, i]), training["augmentation"],
                                training["prior_perturbation"])
        for settings in (training, {**training, "negative_volume_fraction": None}):
            np.testing.assert_array_equal(batch(settings, i)[0], expected[0])
    plain = {**AUGMENTATION, **{k: 0.0 for k in PROBABILITIES}, "flip_axes": []}  # the empty volume's CT stays 7
    from_empty = [(batch({**training, "augmentation": plain, "negative_volume_fraction": f}, i)[0][:, 0] == 7.0)
                  .all(axis=(1, 2, 3)) for f in (0.0, 1.0) for i in range(5)]
    assert not any(b.any() for b in from_empty[:5]) and all(b.tolist() == [False, True] for b in from_empty[5:])


def test_perturb_prior():
    prior = np.zeros((5, 9, 9), np.float32)
    prior[1:4, 3:6, 3:6] = 1
    rng = np.random.default_rng(0)
    assert not perturb_prior(prior, {**PERTURBATION, "drop_probability": 1.0}, rng).any()
    changed = perturb_prior(prior, {**PERTURBATION, "drop_probability": 0.0, "probability": 1.0,
                                    "max_iterations": 1}, rng)
    assert changed.sum() != prior.sum() and changed.dtype == prior.dtype
    never = {**PERTURBATION, "probability": 0.0, "drop_probability": 0.0}
    np.testing.assert_array_equal(perturb_prior(prior, never, rng), prior)


def test_foreground_classes_are_sampled_equally():
    label = np.zeros((10, 40, 40), np.uint8)
    label[2:8, 5:35, 5:35] = 1  # a big kidney
    label[4:6, 18:20, 18:20] = 2  # a tiny tumor: 8 voxels of 5408
    vol = TrainingVolume.from_arrays(label[None].astype(np.float32), label, max_foreground=20000)
    rng = np.random.default_rng(0)
    hits = sum(sample_batch([vol], (1, 1, 1), 1, 1.0, rng)[1].item() == 2 for _ in range(400))
    assert 150 < hits < 250  # about half of the foreground patches are centred on tumor
