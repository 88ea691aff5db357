"""Reading and writing cases: KiTS19 layout, one canonical orientation, label conventions, atomic writes.

Every image and label map is brought, on read, to the orientation of the
KiTS19 files, ``CANONICAL = ("I", "P", "L")``: array axis 0 runs from head to
feet (the slice axis of an axial scan), axis 1 from anterior to posterior,
axis 2 from the patient's right to left. So ``(slices, rows, cols)`` is the
axis order everywhere in this package, whatever the file's: a NIfTI with the
slice axis last and an RAS-like affine (as DICOM converters write them) is
permuted and flipped with ``nibabel.orientations``; an oblique affine goes to
the nearest axis orientation (``io_orientation``; nothing is resampled).
Everything written for a scan is mapped back: same shape, affine and header
(sform/qform and their codes) as its ``imaging.nii.gz``. Spacing is in mm,
in the canonical axis order, from the affine's column norms.

Label values: the data's (``labels`` config: kidney, tumor and, for
KiTS21/23, cyst) are mapped on read to the package's classes ``KIDNEY`` 1,
``TUMOR`` 2, ``CYST`` 3, and back on write.
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
from isal import igzip
from nibabel import orientations

CASE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")
KITS_CASE_PATTERN = re.compile(r"^case_(\d{5})$")  # KiTS-style names get challenge-named copies
IMAGING_NAME = "imaging.nii.gz"
SEGMENTATION_NAME = "segmentation.nii.gz"
CANONICAL = ("I", "P", "L")  # the KiTS19 files' orientation: slices head->feet, rows A->P, cols R->L
KIDNEY, TUMOR, CYST = 1, 2, 3  # the package's classes; 0 is background
CLASS_NAMES = {"kidney": KIDNEY, "tumor": TUMOR, "cyst": CYST}
KITS19_LABELS = {"kidney": 1, "tumor": 2, "cyst": None}  # the data's value of each class (labels config)
INTEGER_TOLERANCE = 1e-3  # label values this close to an integer are read as it (scl_slope rounding)


class CaseError(ValueError):
    """A case on disk is not what the pipeline expects (one-line message)."""


@dataclass(frozen=True)
class Orientation:
    """How a file's voxel array maps onto the canonical one (``CANONICAL``).

    ``ornt`` is the file's orientation as ``nibabel.orientations`` gives it
    (``io_orientation``: per array axis, the world axis and direction it runs
    along; oblique axes take the nearest), ``file_shape`` its 3-D shape.
    """

    ornt: np.ndarray
    file_shape: tuple[int, int, int]

    @classmethod
    def of(cls, affine: np.ndarray, shape) -> "Orientation":
        """The orientation of a file with this affine and shape."""
        return cls(orientations.io_orientation(affine), tuple(int(n) for n in shape[:3]))

    @property
    def axis_codes(self) -> str:
        """The file's orientation as nibabel's axis codes, e.g. ``IPL`` (KiTS19) or ``RAS``."""
        return "".join(orientations.ornt2axcodes(self.ornt))

    @property
    def transform(self) -> np.ndarray:
        """From the file's axes to the canonical ones (a ``nibabel.orientations`` transform)."""
        return orientations.ornt_transform(self.ornt, orientations.axcodes2ornt(CANONICAL))

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        return tuple(self.file_shape[int(axis)] for axis in np.argsort(self.transform[:, 0]))

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        """A file-ordered array in the canonical orientation (a view)."""
        return orientations.apply_orientation(array, self.transform)

    def to_file(self, array: np.ndarray) -> np.ndarray:
        """A canonical array in the file's orientation (a view): the inverse of :meth:`to_canonical`."""
        return orientations.apply_orientation(array, orientations.ornt_transform(
            orientations.axcodes2ornt(CANONICAL), self.ornt))

    def canonical_affine(self, affine: np.ndarray) -> np.ndarray:
        """The voxel-to-world affine of the canonical array."""
        return affine @ orientations.inv_ornt_aff(self.transform, self.file_shape)


@dataclass
class Case:
    """One loaded case in the canonical orientation: image in HU, optional label, and its geometry."""

    case_id: str
    image: np.ndarray  # float32 HU, (slices, rows, cols)
    affine: np.ndarray  # 4x4 voxel -> world (mm) of the canonical array
    label: np.ndarray | None = None  # uint8 classes: 0, KIDNEY, TUMOR, CYST
    header: nib.Nifti1Header | None = field(default=None, repr=False)  # the imaging file's
    orientation: Orientation | None = field(default=None, repr=False)  # the imaging file's

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


# gzip level of the NIfTI files written, compressed by ISA-L (``isal``): on a 138x512x512 label map level 1
# takes 2 ms for 0.07 MB, where nibabel's own gzip level 1 takes 33 ms for 0.19 MB (README, Performance)
GZIP_LEVEL = 1


def write_nifti(img: nib.Nifti1Image, path) -> None:
    """Write an image atomically: nibabel makes the NIfTI bytes; for a ``.gz`` path ISA-L compresses them at
    ``GZIP_LEVEL`` with mtime 0, so the same image gives the same file (on one machine: ISA-L picks its
    code by CPU, and other CPUs may compress to other, equally valid, bytes)."""
    with atomic_path(path) as tmp:
        if str(path).endswith(".gz"):
            Path(tmp).write_bytes(igzip.compress(img.to_bytes(), GZIP_LEVEL, mtime=0))
        else:
            nib.save(img, tmp)


def save_nifti(array: np.ndarray, affine: np.ndarray, path, header=None) -> None:
    """Write ``array`` with ``affine`` (and optionally a template header) atomically (:func:`write_nifti`)."""
    if header is not None:
        header = header.copy()
        header.set_data_dtype(array.dtype)
    img = nib.Nifti1Image(array, affine, header=header)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    write_nifti(img, path)


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
    """``case_id`` if it is a usable case name (letters, digits, ``_``, ``-``, ``.``), else ``CaseError``."""
    if not CASE_NAME_PATTERN.match(case_id) or case_id.startswith("."):
        raise CaseError(f"{case_id!r}: malformed case name, expected letters, digits, '_', '-' and '.' only")
    return case_id


def kits_number(case_id: str) -> str | None:
    """The 5 digits of a KiTS-style name (``case_00042`` -> ``00042``), None for other names."""
    match = KITS_CASE_PATTERN.match(case_id)
    return match.group(1) if match else None


def list_cases(data_dir) -> list[str]:
    """Case names (sorted) of a KiTS19-layout folder: every sub-folder, named as ``check_case_id`` allows,
    holding an ``imaging.nii.gz``. Hidden folders (``.name``) are skipped.

    Raises ``CaseError`` for a missing folder, one without cases, a folder
    without imaging, a malformed name, or two folders with the same name up to
    upper/lower case and surrounding spaces (``CASE_00001`` beside ``case_00001``).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise CaseError(f"{data_dir}: data_dir is not a folder")
    entries = [e for e in sorted(data_dir.iterdir()) if e.is_dir() and not e.name.startswith(".")]
    seen: dict[str, Path] = {}
    for entry in entries:  # duplicates first: 'CASE_00001' next to 'case_00001' is a copy, not a typo
        key = entry.name.strip().lower()
        if key in seen:
            raise CaseError(f"{entry}: duplicate case name {entry.name!r} (also {seen[key].name!r})")
        seen[key] = entry
    for entry in entries:
        if not CASE_NAME_PATTERN.match(entry.name):
            raise CaseError(f"{entry}: malformed case name {entry.name!r}, expected letters, digits, '_', '-' "
                            "and '.' only")
        if not (entry / IMAGING_NAME).exists():
            raise CaseError(f"{entry}: {entry.name} has no {IMAGING_NAME}")
    if not entries:
        raise CaseError(f"{data_dir}: no case folders with {IMAGING_NAME} found")
    return [e.name for e in entries]


def has_segmentation(data_dir, case_id: str) -> bool:
    return (Path(data_dir) / case_id / SEGMENTATION_NAME).exists()


def case_files(data_dir, case_id: str) -> tuple[Path, Path | None]:
    """The imaging file of ``data_dir/case_id`` and its segmentation (None when it has none)."""
    folder = Path(data_dir) / case_id
    segmentation = folder / SEGMENTATION_NAME
    return folder / IMAGING_NAME, segmentation if segmentation.exists() else None


def dataset_files(data_dir) -> dict[str, tuple[Path, Path | None]]:
    """Every case of a KiTS19-layout folder: case id -> (imaging, segmentation or None)."""
    return {case_id: case_files(data_dir, case_id) for case_id in list_cases(data_dir)}


# --------------------------------------------------------------------------
# reading, with the checks at the boundary
# --------------------------------------------------------------------------


def open_nifti(path, case_id: str, what: str) -> nib.Nifti1Image:
    """Open a NIfTI file's header (the data is not read), turning every failure into a ``CaseError``."""
    path = Path(path)
    try:
        return nib.load(path)
    except Exception as exc:  # nibabel raises many types for broken files
        raise CaseError(f"{case_id}: cannot read {what} {path}: {type(exc).__name__}: {exc}") from None


def checked_geometry(img, case_id: str, what: str) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The affine and 3-D shape of an opened NIfTI, or a one-line ``CaseError`` naming the case.

    Checked here, before any work: 3-D data (a trailing axis of length 1 is
    dropped; true 4-D data is refused), a finite affine with positive spacing
    that is not singular, and where the affine comes from the header's
    pixdim (no sform), positive finite pixdim.
    """
    shape = tuple(int(n) for n in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise CaseError(f"{case_id}: {what} has shape {shape}, expected 3-D data (a 4th axis only of length 1)")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.isfinite(affine).all():
        raise CaseError(f"{case_id}: {what} has a non-finite affine, expected finite voxel-to-mm numbers")
    header = img.header
    if int(header["sform_code"]) == 0:  # the affine is built from pixdim (and the quaternion)
        zooms = np.asarray(_raw_header(img)["pixdim"][1:4], dtype=np.float64)
        if not (np.isfinite(zooms).all() and (zooms > 0).all()):
            raise CaseError(f"{case_id}: {what} has spacing (pixdim) {zooms.tolist()} mm, expected 3 positive "
                            "numbers")
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if not (spacing > 0).all():
        raise CaseError(f"{case_id}: {what} has spacing {spacing.round(4).tolist()} mm in its affine, expected "
                        "3 positive numbers")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-6 * float(np.prod(spacing)):
        raise CaseError(f"{case_id}: {what} has a singular affine (its voxel axes are not independent)")
    return affine, shape


def _raw_header(img) -> nib.Nifti1Header:
    """The header as the file holds it: nibabel's own check turns a negative pixdim positive and a zero
    one into 1 mm, silently changing the geometry; we refuse those instead."""
    if img.get_filename() is None:
        return img.header
    with nib.openers.ImageOpener(img.get_filename()) as stream:
        return type(img.header).from_fileobj(stream, check=False)


def check_complete(img, case_id: str, what: str) -> None:
    """Refuse a file shorter than its header says (a truncated download), without decompressing it:
    a gzip file's last 4 bytes hold its uncompressed size (modulo 2**32); a plain file's size is read."""
    path = Path(img.get_filename())
    expected = int(img.dataobj.offset) + int(np.prod(img.shape)) * img.get_data_dtype().itemsize
    if path.suffix == ".gz":
        with path.open("rb") as stream:
            stream.seek(-4, os.SEEK_END)
            complete = int.from_bytes(stream.read(4), "little") == expected % 2**32
    else:
        complete = path.stat().st_size >= expected
    if not complete:
        raise CaseError(f"{case_id}: {what} {path} is shorter than its header says (truncated?)")


def read_data(img: nib.Nifti1Image) -> np.ndarray:
    """The data of an image opened from a file, scaled as its header says, in the file's axis order.

    nibabel reads it (its array proxy: offset, dtype, slope and intercept);
    a gzip file is decompressed by ISA-L (``isal``), about twice as fast as
    Python's ``gzip`` module (0.39 s against 0.74 s for a 138x512x512
    float32 scan, README, Performance), and read to its end, so that its CRC
    is checked (nibabel stops after the data and would not notice damage).
    Raises what the decoder raises for a damaged file (``OSError``,
    ``EOFError``, ``zlib``/``isal`` errors); :func:`load_nifti` turns it into
    a ``CaseError``.
    """
    proxy, path = img.dataobj, img.get_filename()
    if path is None or not str(path).endswith(".gz"):
        return np.asanyarray(proxy)
    with igzip.open(path, "rb") as stream:
        spec = (proxy.shape, proxy.dtype, proxy.offset, proxy.slope, proxy.inter)
        data = np.asanyarray(nib.arrayproxy.ArrayProxy(stream, spec, order=proxy.order))
        while stream.read(1 << 20):  # to the end, where the gzip CRC is checked: a damaged stream raises
            pass
    return data


def load_nifti(path, case_id: str, what: str) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Open and check a NIfTI file (:func:`checked_geometry`) and read its 3-D data (:func:`read_data`), in
    the file's order."""
    img = open_nifti(path, case_id, what)
    _, shape = checked_geometry(img, case_id, what)
    try:
        data = read_data(img)
    except Exception as exc:
        raise CaseError(f"{case_id}: cannot read {what} {path}: {type(exc).__name__}: {exc}") from None
    return img, data.reshape(shape)


def read_case(imaging_path, segmentation_path=None, case_id: str | None = None, labels: dict = KITS19_LABELS,
              ) -> Case:
    """Read and check one case, in the canonical orientation: its imaging and, with a path, its segmentation.

    ``case_id`` names the case in errors (default: the imaging file's folder);
    ``labels`` (the ``labels`` config) gives the segmentation's values of
    kidney, tumor and cyst. Raises ``CaseError`` (one line naming the case)
    for an unreadable file, a bad header (:func:`checked_geometry`),
    non-finite HU values, or a segmentation whose shape or affine differ from
    the imaging's or whose values are not declared labels.
    """
    case_id = case_id or Path(imaging_path).parent.name
    img, image = load_nifti(imaging_path, case_id, "imaging")
    orientation = Orientation.of(img.affine, image.shape)
    image = np.asarray(image, dtype=np.float32)
    if not np.isfinite(image).all():
        n_bad = int((~np.isfinite(image)).sum())
        raise CaseError(f"{case_id}: imaging has {n_bad} NaN/inf voxels, expected finite HU values")
    case = Case(case_id=case_id, image=orientation.to_canonical(image), affine=orientation.canonical_affine(img.affine),
                header=img.header, orientation=orientation)
    if segmentation_path is not None:
        seg, label = load_nifti(segmentation_path, case_id, "segmentation")
        check_same_grid(seg.affine, label.shape, img.affine, image.shape, case_id, "segmentation")
        case.label = orientation.to_canonical(to_classes(label, case_id, labels))
    return case


def check_same_grid(affine, shape, reference_affine, reference_shape, case_id: str, what: str) -> None:
    """A label file must lie on its imaging's voxel grid: same shape and affine (1e-3 mm)."""
    if tuple(shape) != tuple(reference_shape):
        raise CaseError(f"{case_id}: {what} shape {tuple(shape)} differs from imaging shape {tuple(reference_shape)}")
    if not np.allclose(affine, reference_affine, atol=1e-3):
        raise CaseError(f"{case_id}: {what} affine differs from imaging affine")


def read_case_folder(data_dir, case_id: str, with_label: bool = True, labels: dict = KITS19_LABELS) -> Case:
    """:func:`read_case` of ``data_dir/case_id`` in the KiTS19 layout (the label when present and asked for)."""
    imaging, segmentation = case_files(data_dir, case_id)
    return read_case(imaging, segmentation if with_label else None, case_id, labels)


def to_classes(label: np.ndarray, case_id: str, labels: dict = KITS19_LABELS, what: str = "segmentation"
               ) -> np.ndarray:
    """The data's label values as the package's classes (uint8: 0, ``KIDNEY``, ``TUMOR``, ``CYST``).

    Values within ``INTEGER_TOLERANCE`` of an integer are rounded (a header
    ``scl_slope`` of 1.0000001 reads 2 as 2.00000024); anything else, or a
    value that ``labels`` does not declare, is a ``CaseError`` naming the case.
    """
    data = integer_labels(label, case_id, what)
    declared = declared_values(np.unique(data), case_id, labels, what)
    if all(k == v for k, v in declared.items()):
        return data.astype(np.uint8, copy=False)
    table = np.zeros(max(declared) + 1, dtype=np.uint8)
    for value, cls in declared.items():
        table[value] = cls
    return table[data.astype(np.intp)]


def integer_labels(label: np.ndarray, case_id: str, what: str = "segmentation") -> np.ndarray:
    """``label`` with float values rounded when all lie within ``INTEGER_TOLERANCE`` of an integer."""
    data = np.asarray(label)
    if np.issubdtype(data.dtype, np.floating):
        rounded = np.round(data)
        if not np.isfinite(data).all() or np.abs(data - rounded).max(initial=0) > INTEGER_TOLERANCE:
            raise CaseError(f"{case_id}: {what} has non-integer values, expected integer labels")
        data = rounded
    return data


def declared_values(values, case_id: str, labels: dict = KITS19_LABELS, what: str = "segmentation") -> dict:
    """The data value -> class map of ``labels`` (0 is background), checked against the ``values`` present."""
    declared = {0: 0, **{int(v): CLASS_NAMES[name] for name, v in labels.items() if v is not None}}
    bad = [int(v) for v in np.asarray(values).tolist() if v not in declared]
    if bad:
        allowed = ", ".join(str(v) for v in sorted(declared))
        names = ", ".join(f"{name} {v}" for name, v in labels.items() if v is not None)
        raise CaseError(f"{case_id}: {what} has labels {bad[:5]} outside {{{allowed}}} (config labels: {names})")
    return declared


def to_values(classes: np.ndarray, labels: dict = KITS19_LABELS) -> np.ndarray:
    """The package's classes as the data's label values (the inverse of :func:`to_classes`)."""
    values = {0: 0, **{CLASS_NAMES[name]: int(v) for name, v in labels.items() if v is not None}}
    if all(k == v for k, v in values.items()):
        return classes.astype(np.uint8, copy=False)
    dtype = np.uint8 if max(values.values()) < 256 else np.uint16
    table = np.zeros(max(values) + 1, dtype=dtype)
    for cls, value in values.items():
        table[cls] = value
    return table[classes]


def read_label(path, case_id: str, labels: dict = KITS19_LABELS, what: str = "segmentation") -> np.ndarray:
    """A label file on its own (without reading its imaging) as canonical classes."""
    img, data = load_nifti(path, case_id, what)
    return Orientation.of(img.affine, data.shape).to_canonical(to_classes(data, case_id, labels, what))


def read_aligned(path, case: Case, what: str) -> np.ndarray:
    """A label-like file written for ``case`` (a stage-1 mask, a prediction) in the canonical orientation.

    Raises ``CaseError`` if it does not lie on the case's imaging grid.
    """
    img, data = load_nifti(path, case.case_id, what)
    check_same_grid(img.affine, data.shape, case.header.get_best_affine(), case.orientation.file_shape,
                    case.case_id, what)
    return case.orientation.to_canonical(data)


def read_prediction(path, case: Case, labels: dict = KITS19_LABELS) -> np.ndarray:
    """A predicted label map as classes, canonical, or all background when the file is missing (the KiTS19 rule)."""
    path = Path(path)
    if not path.exists():
        return np.zeros(case.image.shape, dtype=np.uint8)
    return to_classes(read_aligned(path, case, "prediction"), case.case_id, labels, "prediction")


def save_for_scan(array: np.ndarray, imaging_path, out_path) -> None:
    """Write a canonical array for the scan ``imaging_path``: back in its orientation, with its shape,
    affine and header (sform/qform and their codes), as ``array``'s dtype, unscaled. Atomic."""
    img = open_nifti(imaging_path, Path(imaging_path).parent.name, "imaging")
    _, shape = checked_geometry(img, Path(imaging_path).parent.name, "imaging")
    data = np.ascontiguousarray(Orientation.of(img.affine, shape).to_file(array))
    if data.shape != shape:
        raise ValueError(f"{out_path}: array of canonical shape {array.shape} does not fit {imaging_path} {shape}")
    header = img.header.copy()
    header.set_data_shape(shape)
    header.set_data_dtype(data.dtype)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"] = header["cal_max"] = 0  # the CT's display window would hide a label map
    header.set_intent("none")
    header["descrip"] = b"kitscascade"
    header.extensions.clear()
    write_nifti(nib.Nifti1Image(data, None, header=header), out_path)
