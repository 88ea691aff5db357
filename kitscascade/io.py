"""KiTS19-layout input/output: reading and validating cases, atomic writes.

Array axis order everywhere in this package is the one nibabel gives for
KiTS19 files: ``(slices, rows, cols)``. Spacing is always in mm, in the same
axis order, and always derived from the affine's column norms.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import yaml

CASE_ID_PATTERN = re.compile(r"^case_\d{5}$")
IMAGING_NAME = "imaging.nii.gz"
SEGMENTATION_NAME = "segmentation.nii.gz"
VALID_LABELS = (0, 1, 2)


class CaseError(ValueError):
    """A case on disk is not what the pipeline expects (one-line message)."""


@dataclass
class Case:
    """One loaded case: image in HU, optional label, and its geometry."""

    case_id: str
    image: np.ndarray  # float32 HU, (slices, rows, cols)
    affine: np.ndarray  # 4x4 voxel -> world (mm)
    label: np.ndarray | None = None  # uint8 in {0, 1, 2}
    header: nib.Nifti1Header | None = field(default=None, repr=False)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return spacing_from_affine(self.affine)

    @property
    def labeled(self) -> bool:
        return self.label is not None


# --------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm per array axis: the norms of the affine's first 3 columns."""
    affine = np.asarray(affine, dtype=np.float64)
    return tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))


def kits19_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """The affine KiTS19 files carry for ``spacing = (slice, px_row, px_col)`` in mm.

    ``[[0,0,-px,0],[0,-px,0,0],[-slice,0,0,0],[0,0,0,1]]`` (see FACTS.md).
    """
    s, r, c = (float(v) for v in spacing)
    return np.array(
        [[0.0, 0.0, -c, 0.0], [0.0, -r, 0.0, 0.0], [-s, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    )


# --------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    A killed job leaves at most a ``.tmp`` file behind, never a half-written
    artifact under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_nifti(array: np.ndarray, affine: np.ndarray, path, header=None) -> None:
    """Write ``array`` with ``affine`` (and optionally a template header) atomically."""
    if header is not None:
        header = header.copy()
        header.set_data_dtype(array.dtype)
    img = nib.Nifti1Image(array, affine, header=header)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, tmp)


def copy_file(src, dst) -> None:
    """Copy a file under another name (e.g. the challenge's prediction_XXXXX.nii.gz), atomically."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def save_yaml(obj, path) -> None:
    """Atomic YAML write of plain data (keys kept in order)."""
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(obj, sort_keys=False, default_flow_style=None))


def save_json(obj, path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def load_json(path):
    return json.loads(Path(path).read_text())


def save_npz(path, **arrays) -> None:
    """Atomic, uncompressed ``.npz`` whose bytes depend only on the arrays (fixed zip timestamps),
    so a rerun with the same inputs writes a byte-identical file; ``np.load`` reads it."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def load_npz(path) -> dict:
    """Every array of an ``.npz`` file, read into memory."""
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def save_table(frame, path) -> None:
    """Atomic CSV write of a pandas DataFrame."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --------------------------------------------------------------------------
# reading and validation
# --------------------------------------------------------------------------


def check_case_id(case_id: str) -> str:
    if not CASE_ID_PATTERN.match(case_id):
        raise CaseError(f"{case_id}: malformed case id, expected 'case_' followed by 5 digits")
    return case_id


def list_cases(data_dir) -> list[str]:
    """Case ids (sorted) of a KiTS19-layout folder: every ``case_XXXXX`` with an imaging file.

    Raises ``CaseError`` for a missing folder, an empty one, folders that look
    like cases but are malformed (``case_1``), a case folder without imaging,
    or two folders with the same id up to case and spaces (``CASE_00001``).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise CaseError(f"{data_dir}: data_dir is not a folder")
    entries = [e for e in sorted(data_dir.iterdir()) if e.is_dir() and e.name.lower().startswith("case")]
    seen: dict[str, Path] = {}
    for entry in entries:  # duplicates first: 'CASE_00001' next to 'case_00001' is a copy, not a typo
        key = entry.name.strip().lower()
        if key in seen:
            raise CaseError(f"{entry}: duplicate case id {entry.name!r} (also {seen[key].name!r})")
        seen[key] = entry
    for entry in entries:
        if not CASE_ID_PATTERN.match(entry.name):
            raise CaseError(f"{entry}: malformed case id {entry.name!r}, expected 'case_' followed by 5 digits")
        if not (entry / IMAGING_NAME).exists():
            raise CaseError(f"{entry}: {entry.name} has no {IMAGING_NAME}")
    if not entries:
        raise CaseError(f"{data_dir}: no case_XXXXX folders with {IMAGING_NAME} found")
    return [e.name for e in entries]


def has_segmentation(data_dir, case_id: str) -> bool:
    return (Path(data_dir) / case_id / SEGMENTATION_NAME).exists()


def case_files(data_dir, case_id: str) -> tuple[Path, Path | None]:
    """The imaging file of ``data_dir/case_id`` and its segmentation (None when it has none)."""
    folder = Path(data_dir) / case_id
    segmentation = folder / SEGMENTATION_NAME
    return folder / IMAGING_NAME, segmentation if segmentation.exists() else None


def load_nifti(path, case_id: str, what: str) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Open a NIfTI file and fully read its data, turning every failure into a ``CaseError``."""
    path = Path(path)
    try:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for broken files
        raise CaseError(f"{case_id}: cannot read {what} {path}: {type(exc).__name__}: {exc}") from None
    if data.ndim != 3:
        raise CaseError(f"{case_id}: {what} {path} has {data.ndim} dimensions, expected 3-D data")
    return img, data


def read_case(imaging_path, segmentation_path=None, case_id: str | None = None) -> Case:
    """Read and validate one case: its imaging and, when a path is given, its segmentation.

    ``case_id`` names the case in errors (default: the imaging file's folder).
    Raises ``CaseError`` (one line naming the case) for an unreadable file,
    non-3-D or non-finite data, or a segmentation whose shape, affine or
    label values do not fit the imaging.
    """
    case_id = case_id or Path(imaging_path).parent.name
    img, image = load_nifti(imaging_path, case_id, "imaging")
    image = np.asarray(image, dtype=np.float32)
    if not np.isfinite(image).all():
        n_bad = int((~np.isfinite(image)).sum())
        raise CaseError(f"{case_id}: imaging has {n_bad} NaN/inf voxels, expected finite HU values")
    case = Case(case_id=case_id, image=image, affine=img.affine.copy(), header=img.header)
    if segmentation_path is not None:
        seg, label = load_nifti(segmentation_path, case_id, "segmentation")
        if label.shape != image.shape:
            raise CaseError(
                f"{case_id}: segmentation shape {label.shape} differs from imaging shape {image.shape}"
            )
        if not np.allclose(seg.affine, img.affine, atol=1e-3):
            raise CaseError(f"{case_id}: segmentation affine differs from imaging affine")
        case.label = validate_labels(label, case_id)
    return case


def dataset_files(data_dir) -> dict[str, tuple[Path, Path | None]]:
    """Every case of a KiTS19-layout folder: case id -> (imaging, segmentation or None)."""
    return {case_id: case_files(data_dir, case_id) for case_id in list_cases(data_dir)}


def read_case_folder(data_dir, case_id: str, with_label: bool = True) -> Case:
    """:func:`read_case` of ``data_dir/case_id`` in the KiTS19 layout (the label when present and asked for)."""
    imaging, segmentation = case_files(data_dir, case_id)
    return read_case(imaging, segmentation if with_label else None, case_id)


def validate_labels(label: np.ndarray, case_id: str) -> np.ndarray:
    """Return ``label`` as uint8, or raise if it holds values outside {0, 1, 2}."""
    if np.issubdtype(label.dtype, np.floating) and not np.array_equal(label, np.round(label)):
        raise CaseError(f"{case_id}: segmentation has non-integer values, expected labels 0, 1, 2")
    values = np.unique(label)
    bad = [v for v in values.tolist() if v not in VALID_LABELS]
    if bad:
        raise CaseError(f"{case_id}: segmentation has labels {bad[:5]} outside {{0, 1, 2}}")
    return label.astype(np.uint8)


def read_prediction(path, shape) -> np.ndarray:
    """A predicted label map, or all background when the file is missing (the KiTS19 rule)."""
    path = Path(path)
    if not path.exists():
        return np.zeros(shape, dtype=np.uint8)
    _, data = load_nifti(path, path.name, "prediction")
    if data.shape != tuple(shape):
        raise CaseError(f"{path}: prediction shape {data.shape} differs from imaging shape {tuple(shape)}")
    return validate_labels(np.asarray(data), path.name)
