import numpy as np
import pytest

from kitscascade import io
from kitscascade.fingerprint import collect_statistics

TRAIN = ["case_00000", "case_00001", "case_00003"]


def test_statistics_equal_direct_numpy(tiny_dataset):
    ids = io.list_cases(tiny_dataset)
    summary, table = collect_statistics(io.dataset_files(tiny_dataset), TRAIN, (0.05, 99.5), 10**6, 0)
    cases = [io.read_case_folder(tiny_dataset, c) for c in TRAIN]
    fg = np.concatenate([c.image[c.label > 0] for c in cases]).astype(np.float64)
    stats = summary["foreground"]
    assert stats["mean"] == pytest.approx(fg.mean(), rel=1e-9)
    assert stats["std"] == pytest.approx(fg.std(), rel=1e-6)
    assert stats["lower"] == pytest.approx(np.percentile(fg, 0.05), rel=1e-6)
    assert stats["upper"] == pytest.approx(np.percentile(fg, 99.5), rel=1e-6)
    assert stats["n_voxels"] == fg.size == 3 * 24
    # geometry for all five cases (the unlabeled one too), from the affine
    assert summary["median_spacing"] == pytest.approx([5.0, 0.8, 0.8])
    assert summary["median_shape"] == [6, 10, 12]
    assert list(table["case_id"]) == ids
    assert table.set_index("case_id").loc["case_00004", "spacing_z_mm"] == pytest.approx(7.0)
    assert table["training"].sum() == 3


def test_validation_cases_do_not_leak_into_intensity_stats(tiny_dataset):
    files = io.dataset_files(tiny_dataset)
    a, _ = collect_statistics(files, ["case_00000"], (0.05, 99.5), 10**6, 0)
    b, _ = collect_statistics(files, ["case_00002"], (0.05, 99.5), 10**6, 0)
    assert b["foreground"]["mean"] > a["foreground"]["mean"] + 15  # case 2 is 20 HU brighter


def test_sampling_bounds_the_percentile_pool(tiny_dataset):
    summary, _ = collect_statistics(io.dataset_files(tiny_dataset), TRAIN, (0.05, 99.5), 5, 0)
    assert summary["foreground"]["n_sampled"] == 15
    assert summary["foreground"]["n_voxels"] == 72  # mean/std stay exact


def test_unlabeled_training_case_is_an_error(tiny_dataset):
    with pytest.raises(io.CaseError, match="case_00004: training case has no segmentation"):
        collect_statistics(io.dataset_files(tiny_dataset), ["case_00004"], (0.05, 99.5), 10**6, 0)
