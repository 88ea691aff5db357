import gzip

import nibabel as nib
import numpy as np
import pytest

from kitscascade import io
from tests.conftest import write_case


def test_kits19_affine_spacing_roundtrip(tmp_path):
    spacing = (5.0, 0.919921875, 0.919921875)
    image = np.arange(4 * 6 * 8, dtype=np.float32).reshape(4, 6, 8)
    write_case(tmp_path, "case_00003", image, (image > 100).astype(np.uint8), spacing)
    case = io.read_case_folder(tmp_path, "case_00003")
    assert case.spacing == pytest.approx(spacing)
    assert case.image.shape == (4, 6, 8)  # slice axis first, as nibabel loads KiTS19
    np.testing.assert_array_equal(case.image, image)
    np.testing.assert_allclose(case.affine, io.kits19_affine(spacing))
    # the affine's slice spacing sits in affine[2, 0], the pixel spacing in [1, 1] and [0, 2]
    assert case.affine[2, 0] == -5.0 and case.affine[1, 1] == case.affine[0, 2] == -spacing[1]
    assert nib.load(tmp_path / "case_00003" / io.IMAGING_NAME).header.get_zooms() == pytest.approx(spacing)
    assert case.labeled and case.label.dtype == np.uint8


def test_spacing_comes_from_column_norms_not_diagonal():
    affine = io.kits19_affine((3.0, 0.7, 0.8))
    assert np.diag(affine)[:3].tolist() == [0.0, -0.7, 0.0]
    assert io.spacing_from_affine(affine) == pytest.approx((3.0, 0.7, 0.8))


def test_unlabeled_case(tiny_dataset):
    case = io.read_case_folder(tiny_dataset, "case_00004")
    assert not case.labeled and case.label is None
    assert io.list_cases(tiny_dataset) == [f"case_{i:05d}" for i in range(5)]
    assert not io.has_segmentation(tiny_dataset, "case_00004")


def bad(tmp_path, case_id="case_00007", **kwargs):
    image = kwargs.pop("image", np.zeros((4, 5, 6), np.float32))
    write_case(tmp_path, case_id, image, kwargs.pop("label", None), **kwargs)
    return tmp_path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: bad(d, label=np.full((4, 5, 6), 3, np.uint8)), "labels [3] outside {0, 1, 2}"),
        (lambda d: bad(d, label=np.zeros((4, 5, 7), np.uint8)), "segmentation shape (4, 5, 7) differs"),
        (lambda d: bad(d, image=np.zeros((4, 5), np.float32)), "expected 3-D data"),
        (lambda d: bad(d, image=np.full((4, 5, 6), np.nan, np.float32)), "NaN/inf"),
    ],
)
def test_bad_inputs_name_the_case(tmp_path, make, message):
    data_dir = make(tmp_path)
    with pytest.raises(io.CaseError) as err:
        io.read_case_folder(data_dir, "case_00007")
    assert "case_00007" in str(err.value) and message in str(err.value)
    assert "\n" not in str(err.value)


def test_affine_mismatch(tmp_path):
    bad(tmp_path)
    io.save_nifti(np.zeros((4, 5, 6), np.uint8), io.kits19_affine((1.0, 1.0, 1.0)),
                  tmp_path / "case_00007" / io.SEGMENTATION_NAME)
    with pytest.raises(io.CaseError, match="case_00007: segmentation affine differs"):
        io.read_case_folder(tmp_path, "case_00007")


def test_truncated_file(tmp_path):
    bad(tmp_path, image=np.random.default_rng(0).normal(size=(8, 16, 16)).astype(np.float32))
    path = tmp_path / "case_00007" / io.IMAGING_NAME
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(io.CaseError, match="case_00007: cannot read imaging"):
        io.read_case_folder(tmp_path, "case_00007")


def test_not_gzip_file(tmp_path):
    (tmp_path / "case_00007").mkdir()
    (tmp_path / "case_00007" / io.IMAGING_NAME).write_bytes(gzip.compress(b"not a nifti"))
    with pytest.raises(io.CaseError, match="case_00007: cannot read imaging"):
        io.read_case_folder(tmp_path, "case_00007")


def test_malformed_and_duplicate_case_names(tmp_path):
    bad(tmp_path, case_id="case 1")
    with pytest.raises(io.CaseError, match="malformed case name 'case 1'"):
        io.list_cases(tmp_path)
    other = tmp_path / "other"
    bad(other, case_id="case_00001")
    bad(other, case_id="CASE_00001")
    with pytest.raises(io.CaseError, match="duplicate case name"):
        io.list_cases(other)


def test_missing_data_dir(tmp_path):
    with pytest.raises(io.CaseError, match="data_dir is not a folder"):
        io.list_cases(tmp_path / "nope")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_missing_prediction_is_background(tmp_path):
    bad(tmp_path, image=np.zeros((2, 3, 4), np.float32))
    case = io.read_case_folder(tmp_path, "case_00007")
    pred = io.read_prediction(tmp_path / "nope.nii.gz", case)
    assert pred.shape == (2, 3, 4) and not pred.any()


def test_npz_bytes_depend_only_on_the_arrays(tmp_path):
    import time

    arrays = {"image": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "n": np.array(3)}
    io.save_npz(tmp_path / "a.npz", **arrays)
    time.sleep(2.1)  # zip timestamps have a 2-second resolution: the clock moves on between the writes
    io.save_npz(tmp_path / "b.npz", **arrays)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with np.load(tmp_path / "a.npz") as loaded:
        np.testing.assert_array_equal(loaded["image"], arrays["image"])
        assert int(loaded["n"]) == 3


@pytest.mark.parametrize("name", ["scan.nii.gz", "scan.nii"])
def test_data_is_read_as_nibabel_reads_it(tmp_path, name):
    """``io.read_data`` (ISA-L decoding behind nibabel's array proxy) gives nibabel's own array, scaling
    (slope, intercept), big-endian storage and the data offset of an extension included."""
    data = np.arange(5 * 7 * 9, dtype=">i2").reshape(5, 7, 9) - 100
    img = nib.Nifti1Image(data, io.kits19_affine((3.0, 1.0, 1.0)))
    img.header.set_slope_inter(2.0, -1024.0)
    img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"moves the data offset"))
    nib.save(img, tmp_path / name)
    _, read = io.load_nifti(tmp_path / name, "case_00000", "imaging")
    np.testing.assert_array_equal(read, np.asanyarray(nib.load(tmp_path / name).dataobj))
    np.testing.assert_array_equal(read, data * 2.0 - 1024)


def test_written_files_are_the_same_bytes_and_read_back(tmp_path):
    label = np.zeros((6, 8, 10), np.uint8)
    label[2:4, 3:6, 4:9] = 2
    for name in ("a.nii.gz", "b.nii.gz", "c.nii"):
        io.save_nifti(label, io.kits19_affine((3.0, 1.0, 1.0)), tmp_path / name)
        np.testing.assert_array_equal(np.asanyarray(nib.load(tmp_path / name).dataobj), label)
    assert (tmp_path / "a.nii.gz").read_bytes() == (tmp_path / "b.nii.gz").read_bytes()
    assert gzip.decompress((tmp_path / "a.nii.gz").read_bytes()) == (tmp_path / "c.nii").read_bytes()


def test_a_corrupt_gzip_stream_is_one_line_naming_the_case(tmp_path):
    """A file whose header reads but whose compressed data is damaged (a bad copy)."""
    rng = np.random.default_rng(0)
    io.save_nifti(rng.normal(size=(20, 64, 64)).astype(np.float32), io.kits19_affine((3.0, 1.0, 1.0)),
                  tmp_path / "scan.nii.gz")
    raw = bytearray((tmp_path / "scan.nii.gz").read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 64] = bytes(64)
    (tmp_path / "scan.nii.gz").write_bytes(bytes(raw))
    with pytest.raises(io.CaseError, match=r"^case_00007: cannot read imaging .*scan.nii.gz: ") as error:
        io.load_nifti(tmp_path / "scan.nii.gz", "case_00007", "imaging")
    assert "\n" not in str(error.value)
