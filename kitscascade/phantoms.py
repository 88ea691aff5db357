"""CT-like abdominal phantoms in the exact KiTS19 layout: the pipeline's default data set.

Each phantom is a contrast-enhanced abdominal CT with its kidney/tumor label map,
small enough to train and evaluate the whole cascade on a CPU in minutes yet not
separable by thresholding: the spleen has the HU of renal medulla, the liver
overlaps the tumor range, kidneys touch liver, spleen, psoas and renal vessels,
and tumors are heterogeneous and partly outside the kidney.

Orientation follows ``io.kits19_affine``. Arrays are ``(slices, rows, cols)``:
the slice index grows towards the feet, the row index from anterior to
posterior, the col index from the patient's right to the patient's left, so
``image[z]`` shown with rows vertical is the usual radiological axial view
(anterior at the top, the patient's right on the viewer's left). Internally,
positions are mm from the volume centre as ``(z, y, x)``: z towards the feet,
y towards the back, x towards the patient's left. All sizes are in mm, so the
anatomy is the same whatever the voxel grid.

Contents and intensities (HU, before blur and noise; ranges are uniform draws
per case, ``[A]`` / ``[B]`` where the two families of ``FAMILIES`` differ):
air -1000; subcutaneous and retroperitoneal/perirenal fat -120..-80; abdominal
wall, paraspinal and psoas muscles 40..60; bowel (wall 40..80, content 0..40,
gas -1000) in the anterior abdomen; vertebral bodies (cortex 700, cancellous
250..350, discs 90), posterior elements and ribs 500..700; IVC 70..130; renal
veins 120..180; pancreas 100..140; spleen 105..130; liver [A] 60..100,
[B] 80..120 (in the venous phase liver and pancreas +30, spleen +25, veins and
IVC as the aorta). Contrast phase, arterial or venous with probability 1/2 each:
aorta and renal arteries [A] 250..350 / 150..200, [B] 200..300 / 140..190;
renal cortex [A] 150..200 / 140..180, [B] 170..230 / 150..190; medullary
pyramids [A] 80..120 / 120..160, [B] 90..140 / 135..175 (corticomedullary
contrast in the arterial phase, little in the venous one); the renal sinus is
unlabeled (fat -80, pelvis 10).

Kidneys: semi-axes [A] 48..60 x 18..24 x 26..32 mm, [B] 44..56 x 20..26 x
24..30 mm. Of two-kidney cases 90 % are normal, 5 % horseshoe (lower and closer
to the spine, lower poles turned in, joined by a 7..11 mm parenchymal isthmus
in front of the aorta, labelled kidney), 5 % with one pelvic kidney (lowered by
45..70 mm, 15 % smaller); single kidneys are pelvic with probability 0.1. Each
kidney has, with probability 0.35, 1..3 benign cortical cysts (water -5..20 HU,
3..15 mm radius), labelled kidney as in KiTS19.

Tumors: 1, 2 or 3 with probability 0.6 / 0.25 / 0.15, each in a randomly chosen
kidney. Per tumor: volume log-uniform in 0.5..500 ml (nominal: the sphere of
that volume sets the radius, 4.9..49 mm); HU = cortex x (1 + c) with c in
[A] -0.75..0.15, [B] -0.6..0.3 (hypodense below the medulla, through iso- to
hyperdense); a smooth texture of 5..15 HU; from 5 ml, with probability 0.5, an
irregular fluid/necrotic core of 0..30 HU over 30..70 % of the radius; with
probability 0.15, 2..6 calcifications of 300..800 HU, 1..2.5 mm; the centre at
0.55..1.2 times the kidney's radius in a random direction away from the hilum
(deep ones endophytic, the rest exophytic); outline lobulation 0.05..0.4. Shape
model [A] one lumpy ellipsoid (semi-axes radius x 0.85..1.15), [B] a union of
2..5 spherical lobes around the centre. Where a tumor bulges out of the kidney
a 2..6 mm rim of perirenal fat separates it from its neighbours.

Acquisition: Gaussian partial-volume blur (sigma per axis
sqrt((0.35 spacing)^2 + 0.6^2) mm, [B] times 1.5), noise of sd [A] 8..25 HU
white, [B] 6..20 HU correlated in-plane (Gaussian grain of 1.2 mm), clipping to
[-1024, 3071]. Slice spacing per case: the nominal one times 0.75..1.25 (five
steps, ``SLICE_FACTORS``), pixel spacing times 1 +- 0.08.

Labels (uint8): 0 background, 1 kidney (parenchyma, cysts, a horseshoe's
isthmus; the hilar notch with the sinus is background), 2 tumor (overrides
kidney), drawn from the shapes before blur. Every phantom is drawn with at
least one tumor; small, deep ones may lie wholly inside the kidney, and with a
short scan a pelvic kidney's tumor can lie outside the volume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from kitscascade.io import (
    IMAGING_NAME,
    SEGMENTATION_NAME,
    kits19_affine,
    kits_number,
    save_json,
    save_nifti,
)

Box = tuple[slice, slice, slice]
AIR_HU = -1000.0
HU_RANGE = (-1024.0, 3071.0)
SINGLE_KIDNEY_PROBABILITY = 0.15  # when make_phantom draws the number of kidneys itself
SLICE_FACTORS = (0.75, 0.875, 1.0, 1.125, 1.25)  # per-case slice spacing: nominal times one of these
PIXEL_JITTER = 0.08  # per-case pixel spacing: nominal times U(1 - j, 1 + j)


@dataclass(frozen=True)
class _Kidney:
    """Pose and size of one kidney (an ellipsoid with a medial hilar notch)."""

    center: tuple[float, float, float]  # mm, (z, y, x)
    semi: tuple[float, float, float]  # semi-axes in mm along rot's columns: long, thickness, width
    rot: np.ndarray  # 3x3 float32, columns = kidney axes in (z, y, x)
    side: int  # +1 patient's left, -1 patient's right


@dataclass(frozen=True)
class _Layout:
    """Positions shared by several structures (mm, in-plane relative to the body centre)."""

    body: tuple[float, float, float]  # semi-axes x, y and superellipse exponent
    fat: float  # subcutaneous fat thickness
    wall: float  # muscular wall thickness
    spine: tuple[float, float, float]  # vertebral body centre y, semi-axes y, x
    aorta: tuple[float, float, float]  # centre y, x, radius
    ivc: tuple[float, float, float, float]  # centre y, x, semi-axes y, x
    kidneys: tuple[_Kidney, ...]
    kidney_z: tuple[float, float]  # z of the left and right kidney centres (also when absent)
    arrangement: str  # normal, horseshoe (two kidneys joined by an isthmus) or pelvic (one kidney lowered)


class _Canvas:
    """The phantom being painted: HU image, label map and mm coordinates of each axis."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float], offset_yx):
        self.spacing = spacing
        self.image = np.full(shape, AIR_HU, dtype=np.float32)
        self.label = np.zeros(shape, dtype=np.uint8)
        centre = [0.0, *offset_yx]  # the body centre is off the volume centre in-plane
        self.axes = [
            ((np.arange(n, dtype=np.float32) - (n - 1) / 2) * np.float32(s) - np.float32(c))
            for n, s, c in zip(shape, spacing, centre)
        ]
        self.y2d, self.x2d = self.axes[1][:, None], self.axes[2][None, :]

    def box(self, center, half) -> Box | None:
        """Index box of the voxels within ``center +- half`` (mm, per axis); None if empty."""
        out = []
        for axis, c, h, s in zip(self.axes, center, half, self.spacing):
            lo = int(np.clip(np.ceil((c - h - axis[0]) / s), 0, axis.size))
            hi = int(np.clip(np.floor((c + h - axis[0]) / s) + 1, 0, axis.size))
            if lo >= hi:
                return None
            out.append(slice(lo, hi))
        return tuple(out)

    def offsets(self, box: Box, center) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Open-grid mm offsets ``(dz, dy, dx)`` of the box's voxels from ``center``."""
        dz, dy, dx = (self.axes[i][box[i]] - np.float32(center[i]) for i in range(3))
        return dz[:, None, None], dy[None, :, None], dx[None, None, :]

    def ellipse(self, cy: float, cx: float, ry: float, rx: float, power: float = 2.0) -> np.ndarray:
        """In-plane (rows, cols) mask of a (super)ellipse centred at ``(cy, cx)`` mm."""
        return np.abs((self.y2d - cy) / ry) ** power + np.abs((self.x2d - cx) / rx) ** power <= 1


# --------------------------------------------------------------------------
# geometry helpers
# --------------------------------------------------------------------------


def _rotation(about_z: float, about_y: float, about_x: float) -> np.ndarray:
    """Rotation matrix acting on (z, y, x) vectors, float32; angles in radians.

    ``about_z`` turns within the axial plane, ``about_y`` within the coronal plane,
    ``about_x`` within the sagittal plane; applied in that order from the left.
    """
    cz, sz, cy, sy, cx, sx = (f(a) for a in (about_z, about_y, about_x) for f in (math.cos, math.sin))
    in_plane = np.array([[1, 0, 0], [0, cz, -sz], [0, sz, cz]])
    coronal = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    sagittal = np.array([[cx, -sx, 0], [sx, cx, 0], [0, 0, 1]])
    return (in_plane @ coronal @ sagittal).astype(np.float32)


def _local(d, semi, rot: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Local coordinates (mm along ``rot``'s columns) and normalised ellipsoid radius of the offsets ``d``
    (``_Canvas.offsets``) from an ellipsoid's centre."""
    local = [rot[0, k] * d[0] + rot[1, k] * d[1] + rot[2, k] * d[2] for k in range(3)]
    rho = np.sqrt(sum((u / np.float32(a)) ** 2 for u, a in zip(local, semi)))
    return local, rho


def _ellipsoid(canvas: _Canvas, center, semi, rot: np.ndarray):
    """Box, local coordinates (mm along ``rot``'s columns) and normalised radius of an ellipsoid;
    None when it is outside the volume."""
    half = np.sqrt(((rot * np.asarray(semi, dtype=np.float32)) ** 2).sum(axis=1))
    box = canvas.box(center, half)
    if box is None:
        return None
    return (box, *_local(canvas.offsets(box, center), semi, rot))


def _lumps(rng: np.random.Generator, amplitude: float) -> list[tuple[np.ndarray, int, float, float]]:
    """Three random low-order waves (direction, order, phase, weight) for ``_lumpy_surface``."""
    waves = []
    for _ in range(3):
        n = rng.normal(size=3)
        order, phase = int(rng.integers(1, 4)), rng.uniform(0, 2 * np.pi)
        waves.append((n / np.linalg.norm(n), order, phase, amplitude / 3))
    return waves


def _lumpy_surface(lumps, local, semi, rho: np.ndarray) -> np.ndarray:
    """Surface level of a star-shaped lumpy ellipsoid: the shape is ``rho <= level``.

    ``level = 1 + f(direction)``, with ``f`` the sum of the ``lumps`` waves over the
    direction from the centre, so the shape stays one blob; grown versions
    (``rho <= c * level``) keep the same lumps.
    """
    direction = [u / np.float32(a) / np.maximum(rho, np.float32(1e-6)) for u, a in zip(local, semi)]
    level = np.ones_like(rho)
    for n, k, phase, weight in lumps:
        proj = sum(np.float32(c) * u for c, u in zip(n, direction))
        level += np.float32(weight) * np.cos(np.float32(k * np.pi) * proj + np.float32(phase))
    return level


def _smooth_noise(rng: np.random.Generator, shape, spacing, scale_mm: float) -> np.ndarray:
    """Random float32 field of ``shape`` (sd ~0.6..1) with blobs about ``scale_mm`` mm wide.

    Cubic-spline upsampling of white noise on a coarse grid. The tensor-product
    spline is separable, so it is three small matrix products (fast even for
    big boxes) rather than a 64-tap 3-D interpolation.
    """
    coarse = [max(2, math.ceil(n * s / scale_mm) + 1) for n, s in zip(shape, spacing)]
    field = rng.standard_normal(coarse, dtype=np.float32)
    # (n, c) interpolation weights per axis: the spline through each unit impulse
    mz, my, mx = (
        ndimage.zoom(np.eye(c, dtype=np.float32), (n / c, 1), order=3, mode="mirror", grid_mode=True)
        for n, c in zip(shape, coarse)
    )
    field = (mz @ field.reshape(coarse[0], -1)).reshape(shape[0], coarse[1], coarse[2])
    field = my @ field  # (slices, rows, coarse cols)
    # one 2-D product for the big last step: numpy's stacked matmul is far slower here
    return (field.reshape(-1, coarse[2]) @ mx.T).reshape(shape)


def _tube(canvas: _Canvas, a, b, radius: float, hu: float, label: int | None = None) -> None:
    """Paint a cylinder of ``radius`` mm between points ``a`` and ``b`` (mm, (z, y, x)), labelled ``label``
    when given."""
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    box = canvas.box((a + b) / 2, np.abs(b - a) / 2 + radius)
    if box is None:
        return
    d = canvas.offsets(box, a)
    ab = b - a
    t = np.clip(sum(d[i] * ab[i] for i in range(3)) / max(float(ab @ ab), 1e-6), 0, 1)
    dist2 = sum((d[i] - t * ab[i]) ** 2 for i in range(3))
    inside = dist2 <= radius**2
    canvas.image[box][inside] = hu
    if label is not None:
        canvas.label[box][inside] = label


# --------------------------------------------------------------------------
# families and per-case draws
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """The distributions a phantom family draws from (ranges ``(lo, hi)`` are uniform draws; HU per
    contrast phase). Families differ in shape models, intensities, noise and blur, so a network trained
    on one and tested on the other shows whether it learned tumors or one generator's rules
    (``benchmarks/generalization.py``)."""

    name: str
    tumor_model: str  # "lumpy": one star-shaped lumpy ellipsoid; "lobes": a union of 2-5 spherical lobes
    kidney_semi: tuple[tuple[float, float], ...]  # kidney semi-axes (long, thickness, width), mm
    cortex_hu: dict  # phase -> range
    medulla_hu: dict  # phase -> range
    aorta_hu: dict  # phase -> range
    liver_hu: tuple[float, float]
    tumor_contrast: tuple[float, float]  # tumor HU = cortex HU * (1 + c)
    noise_hu: tuple[float, float]  # sd of the noise
    noise_grain_mm: float  # 0: white noise; else in-plane Gaussian-correlated noise of this sigma
    blur_factor: float  # times the partial-volume blur sigma


FAMILIES = {
    "A": Family(
        name="A", tumor_model="lumpy", kidney_semi=((48, 60), (18, 24), (26, 32)),
        cortex_hu={"arterial": (150, 200), "venous": (140, 180)},
        medulla_hu={"arterial": (80, 120), "venous": (120, 160)},
        aorta_hu={"arterial": (250, 350), "venous": (150, 200)},
        liver_hu=(60, 100), tumor_contrast=(-0.75, 0.15), noise_hu=(8, 25), noise_grain_mm=0.0, blur_factor=1.0),
    "B": Family(
        name="B", tumor_model="lobes", kidney_semi=((44, 56), (20, 26), (24, 30)),
        cortex_hu={"arterial": (170, 230), "venous": (150, 190)},
        medulla_hu={"arterial": (90, 140), "venous": (135, 175)},
        aorta_hu={"arterial": (200, 300), "venous": (140, 190)},
        liver_hu=(80, 120), tumor_contrast=(-0.6, 0.3), noise_hu=(6, 20), noise_grain_mm=1.2, blur_factor=1.5),
}
TUMOR_ML = (0.5, 500.0)  # log-uniform tumor volume (nominal: the ellipsoid's or the lobes' sphere)
TUMOR_COUNT_P = (0.6, 0.25, 0.15)  # one, two or three tumors
ARRANGEMENT_P = {"normal": 0.9, "horseshoe": 0.05, "pelvic": 0.05}  # of two-kidney cases; single: pelvic 0.1
CYST_P = 0.35  # per kidney: 1-3 benign cysts (labelled kidney, as in KiTS19)


@dataclass(frozen=True)
class _Tumor:
    """One tumor's draws (see the module docstring)."""

    volume_ml: float
    contrast: float  # HU relative to the cortex: tumor = cortex * (1 + contrast)
    depth: float  # centre at this fraction of the kidney radius in its direction (< 0.75 endophytic)
    lobulation: float  # lump amplitude of the surface
    necrosis: bool  # a cystic/necrotic part (only from 5 ml)
    calcifications: int  # bright specks inside


def _draw_tumor(rng: np.random.Generator, family: Family) -> _Tumor:
    volume = float(np.exp(rng.uniform(np.log(TUMOR_ML[0]), np.log(TUMOR_ML[1]))))
    return _Tumor(
        volume_ml=volume,
        contrast=float(rng.uniform(*family.tumor_contrast)),
        depth=float(rng.uniform(0.55, 1.2)),
        lobulation=float(rng.uniform(0.05, 0.4)),
        necrosis=bool(volume >= 5 and rng.random() < 0.5),
        calcifications=int(rng.integers(2, 7)) if rng.random() < 0.15 else 0,
    )


# --------------------------------------------------------------------------
# anatomy
# --------------------------------------------------------------------------


def _sample_layout(rng: np.random.Generator, n_kidneys: int, family: Family, arrangement: str | None = None) -> _Layout:
    """Body size, spine, great vessels and kidney poses (kidneys beside the spine at L1-L3; a horseshoe
    pair lower and closer, lower poles turned in; a pelvic kidney lowered by 45-70 mm, smaller)."""
    ax, ay, power = rng.uniform(140, 170), rng.uniform(100, 125), rng.uniform(2.0, 2.6)
    fat, wall = rng.uniform(10, 30), rng.uniform(7, 11)
    spine_ry, spine_rx = rng.uniform(16, 20), rng.uniform(20, 24)
    spine_y = ay - fat - wall - rng.uniform(55, 65)
    front = spine_y - spine_ry
    aorta_r = rng.uniform(9, 13)
    aorta = (front - aorta_r - rng.uniform(1, 5), rng.uniform(5, 15), aorta_r)
    ivc = (front - rng.uniform(8, 16), -rng.uniform(22, 32), rng.uniform(8, 11), rng.uniform(11, 15))
    z_left = rng.uniform(-15, 0)
    z_right = z_left + rng.uniform(5, 20)  # the liver pushes the right kidney down
    sides = [-1, 1] if n_kidneys == 2 else [int(rng.choice([-1, 1]))]
    if n_kidneys == 2:
        drawn = str(rng.choice(list(ARRANGEMENT_P), p=list(ARRANGEMENT_P.values())))
    else:
        drawn = "pelvic" if rng.random() < 2 * ARRANGEMENT_P["pelvic"] else "normal"
    arrangement = arrangement or drawn
    pelvic_side = int(rng.choice(sides))
    kidneys = []
    for side in sides:
        semi = tuple(rng.uniform(*r) for r in family.kidney_semi)
        tilt = -side * np.deg2rad(rng.uniform(8, 20))  # upper pole medial
        center = [z_left if side > 0 else z_right, spine_y + rng.uniform(-5, 10), side * (spine_rx + rng.uniform(45, 60))]
        if arrangement == "horseshoe":
            tilt = -tilt  # lower poles medial, towards the isthmus
            center[0] += rng.uniform(15, 30)
            center[2] = side * (spine_rx + rng.uniform(30, 40))
        elif arrangement == "pelvic" and side == pelvic_side:
            semi = tuple(0.85 * a for a in semi)
            center[0] += rng.uniform(45, 70)
            center[1] -= rng.uniform(0, 15)
            center[2] = side * (spine_rx + rng.uniform(20, 35))
        rot = _rotation(
            -side * np.deg2rad(rng.uniform(20, 40)),  # hilum turned anteromedially
            tilt,
            -np.deg2rad(rng.uniform(5, 15)),  # upper pole posterior
        )
        kidneys.append(_Kidney(tuple(center), semi, rot, side))
    return _Layout(
        body=(ax, ay, power),
        fat=fat,
        wall=wall,
        spine=(spine_y, spine_ry, spine_rx),
        aorta=aorta,
        ivc=ivc,
        kidneys=tuple(kidneys),
        kidney_z=(z_left, z_right),
        arrangement=arrangement,
    )


def _paint_body(canvas: _Canvas, rng: np.random.Generator, lay: _Layout) -> np.ndarray:
    """Body outline, subcutaneous fat, muscular wall; returns the in-plane abdominal cavity mask."""
    ax, ay, power = lay.body
    inner = lay.fat + lay.wall
    np.copyto(canvas.image, np.float32(rng.uniform(-120, -90)), where=canvas.ellipse(0, 0, ay, ax, power))
    np.copyto(
        canvas.image,
        np.float32(rng.uniform(40, 60)),
        where=canvas.ellipse(0, 0, ay - lay.fat, ax - lay.fat, power),
    )
    cavity = canvas.ellipse(0, 0, ay - inner, ax - inner, power)
    np.copyto(canvas.image, np.float32(rng.uniform(-110, -80)), where=cavity)
    return cavity


def _paint_bowel(canvas: _Canvas, rng, texture, lay: _Layout, cavity: np.ndarray) -> None:
    """Bowel loops in front of the spine: thresholded smooth noise (wall, content, gas)."""
    scale = rng.uniform(20, 30)
    wall_hu, content_hu = np.float32(rng.uniform(40, 80)), np.float32(rng.uniform(0, 40))
    rows = np.flatnonzero(cavity.any(axis=1) & (canvas.axes[1] < lay.spine[0]))
    cols = np.flatnonzero(cavity.any(axis=0))
    if rows.size == 0:
        return
    box = (slice(None), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    sub = canvas.image[box]
    loops = _smooth_noise(texture, sub.shape, canvas.spacing, scale)
    gas = _smooth_noise(texture, sub.shape, canvas.spacing, 12.0) > 1.0
    inside = cavity[box[1], box[2]] & (canvas.y2d[box[1]] < lay.spine[0])
    bowel = (loops > 0.15) & inside
    values = np.where(loops > 0.4, content_hu, wall_hu)
    values[gas & (loops > 0.5)] = AIR_HU
    sub[bowel] = values[bowel]


def _paint_perirenal_fat(canvas: _Canvas, rng: np.random.Generator, lay: _Layout, cavity: np.ndarray) -> None:
    """Fat around each kidney (inside Gerota's fascia), clearing bowel from the renal fossa."""
    hu = np.float32(rng.uniform(-110, -80))
    for k in lay.kidneys:
        semi = tuple(a + 14 for a in k.semi)
        found = _ellipsoid(canvas, k.center, semi, k.rot)
        if found is not None:
            box, _, rho = found
            canvas.image[box][(rho <= 1) & cavity[box[1], box[2]]] = hu


def _paint_spine_and_muscles(canvas: _Canvas, rng: np.random.Generator, lay: _Layout) -> None:
    """Paraspinal and psoas muscles, vertebral bodies with discs, posterior elements."""
    y, ry, rx = lay.spine
    canal_y = y + ry + 9
    muscle = np.float32(rng.uniform(40, 60))
    for side in (-1, 1):
        np.copyto(canvas.image, muscle, where=canvas.ellipse(canal_y + 16, side * 30, 20, 24))
    # psoas: grows from thin above the kidneys to thick below them
    z = canvas.axes[0][:, None, None]
    scale = np.clip(0.35 + (z - (float(np.mean(lay.kidney_z)) - 50)) / 120, 0.35, 1.0)
    psoas_ry, psoas_rx = rng.uniform(14, 18), rng.uniform(16, 22)
    for side in (-1, 1):
        center = (0.0, y - 2, side * (rx + 0.8 * psoas_rx))
        box = canvas.box(center, (np.inf, psoas_ry, psoas_rx))
        if box is not None:
            _, dy, dx = canvas.offsets(box, center)
            inside = (dy / (psoas_ry * scale)) ** 2 + (dx / (psoas_rx * scale)) ** 2 <= 1
            canvas.image[box][inside] = muscle
    # vertebral bodies: cortical rim, cancellous core, a disc every ~35 mm
    body = canvas.ellipse(y, 0, ry, rx)
    rim = body & ~canvas.ellipse(y, 0, ry - 2.5, rx - 2.5)
    period = rng.uniform(32, 38)
    disc = ((canvas.axes[0] - rng.uniform(0, period)) % period) < 9
    iy, ix = np.nonzero(body)
    bone = np.where(rim[iy, ix], np.float32(700), np.float32(rng.uniform(250, 350)))
    canvas.image[:, iy, ix] = np.where(disc[:, None], np.float32(90), bone[None, :])
    posterior = canvas.ellipse(canal_y, 0, 14, 14) | canvas.ellipse(canal_y + 22, 0, 14, 4)
    for side in (-1, 1):
        posterior |= canvas.ellipse(canal_y - 2, side * 22, 5, 14)
    np.copyto(canvas.image, np.float32(rng.uniform(500, 700)), where=posterior)
    np.copyto(canvas.image, np.float32(15), where=canvas.ellipse(canal_y, 0, 8, 8))


def _paint_ribs(canvas: _Canvas, rng: np.random.Generator, lay: _Layout) -> None:
    """Ribs in the posterolateral wall down to the kidneys' level.

    Each rib descends as it runs forward, so an axial slice cuts it into a short arc.
    """
    ax, ay, power = lay.body
    outer, inner = lay.fat + 1, lay.fat + lay.wall + 2
    band = canvas.ellipse(0, 0, ay - outer, ax - outer, power)
    band &= ~canvas.ellipse(0, 0, ay - inner, ax - inner, power)
    around = np.arctan2(np.abs(canvas.x2d) / ax, canvas.y2d / ay)  # 0 behind the spine, pi in front
    band &= (around > 0.15 * np.pi) & (around < 0.7 * np.pi)
    iy, ix = np.nonzero(band)
    arc = around[iy, ix] * np.float32(0.5 * (ax + ay))  # mm along the wall from the back
    period, phase = rng.uniform(26, 32), rng.uniform(0, 1)
    z = canvas.axes[0][:, None]
    wave = np.cos(2 * np.pi * ((z - 0.3 * arc[None, :]) / period + phase))
    rib = (wave > 0.6) & (z < float(np.mean(lay.kidney_z)) + rng.uniform(0, 20))
    values = canvas.image[:, iy, ix]
    values[rib] = np.float32(rng.uniform(500, 700))
    canvas.image[:, iy, ix] = values


def _paint_vessels(canvas: _Canvas, rng: np.random.Generator, lay: _Layout, aorta_hu: float, venous: bool) -> None:
    """Renal arteries and veins to the hilum, then the aorta (``aorta_hu``) and IVC (all along z); in the
    venous phase the veins and the IVC enhance like the aorta."""
    ay_, ax_, ar = lay.aorta
    iy_, ix_, iry, irx = lay.ivc
    aorta_hu, vein_hu = np.float32(aorta_hu), np.float32(rng.uniform(120, 180))
    ivc_hu = np.float32(rng.uniform(70, 130))
    if venous:
        vein_hu = ivc_hu = aorta_hu
    for k in lay.kidneys:
        hilum = np.asarray(k.center) + k.rot @ np.array([0, 0, -k.side * 0.6 * k.semi[2]])
        _tube(canvas, hilum, (k.center[0] - 5, ay_, ax_), 3.0, aorta_hu)
        _tube(canvas, hilum, (k.center[0] + 5, iy_, ix_), 5.0, vein_hu)
    np.copyto(canvas.image, aorta_hu, where=canvas.ellipse(ay_, ax_, ar, ar))
    np.copyto(canvas.image, ivc_hu, where=canvas.ellipse(iy_, ix_, iry, irx))


def _paint_pancreas(canvas: _Canvas, rng: np.random.Generator, lay: _Layout, venous_gain: float) -> None:
    """Pancreas, enhancing like renal medulla.

    Head by the IVC, body over the aorta, tail towards the spleen in front of the left kidney.
    """
    z = float(np.mean(lay.kidney_z))
    ivc_y, ivc_x, *_ = lay.ivc
    aorta_y, aorta_x, aorta_r = lay.aorta
    head = (z + rng.uniform(0, 15), ivc_y - rng.uniform(20, 30), ivc_x + rng.uniform(-5, 5))
    body = (z - rng.uniform(5, 20), aorta_y - aorta_r - rng.uniform(15, 25), aorta_x)
    tail = (lay.kidney_z[0] - rng.uniform(25, 40), lay.spine[0] - rng.uniform(20, 35), rng.uniform(75, 95))
    radius, hu = rng.uniform(8, 12), np.float32(rng.uniform(100, 140) + venous_gain)
    _tube(canvas, head, body, radius, hu)
    _tube(canvas, body, tail, radius * 0.8, hu)


def _paint_organ(canvas: _Canvas, rng, texture, center, semi, rot, hu: float, cavity: np.ndarray) -> None:
    """A lumpy ellipsoidal solid organ with a smooth 6 HU texture, kept inside the cavity."""
    lumps = _lumps(rng, 0.12)
    found = _ellipsoid(canvas, center, semi, rot)
    if found is None:
        return
    box, local, rho = found
    organ = (rho <= _lumpy_surface(lumps, local, semi, rho)) & cavity[box[1], box[2]]
    values = np.float32(hu) + 6 * _smooth_noise(texture, rho.shape, canvas.spacing, 15.0)
    canvas.image[box][organ] = values[organ]


def _paint_liver_and_spleen(canvas: _Canvas, rng, texture, lay: _Layout, cavity: np.ndarray, liver_hu,
                            spleen_gain: float) -> None:
    """Liver on the patient's right above the right kidney, spleen on the left above the left one."""
    z_left, z_right = lay.kidney_z
    liver_center = (z_right - rng.uniform(60, 80), -rng.uniform(10, 30), -rng.uniform(55, 75))
    liver_semi = (rng.uniform(85, 105), rng.uniform(70, 85), rng.uniform(75, 90))
    liver_rot = _rotation(np.deg2rad(rng.uniform(-10, 10)), np.deg2rad(rng.uniform(-10, 10)), 0.0)
    _paint_organ(canvas, rng, texture, liver_center, liver_semi, liver_rot, rng.uniform(*liver_hu), cavity)
    spleen_center = (z_left - rng.uniform(40, 60), rng.uniform(20, 40), rng.uniform(80, 100))
    spleen_semi = (rng.uniform(45, 60), rng.uniform(45, 60), rng.uniform(20, 30))
    spleen_rot = _rotation(np.deg2rad(rng.uniform(-50, -30)), 0.0, 0.0)
    _paint_organ(canvas, rng, texture, spleen_center, spleen_semi, spleen_rot, rng.uniform(105, 130) + spleen_gain, cavity)


def _paint_kidney(canvas: _Canvas, rng, texture, k: _Kidney, cortex_hu: float, medulla_hu: float) -> None:
    """Kidney parenchyma (label 1): cortex, pyramids (darker in the arterial phase), unlabeled hilar sinus."""
    pyramid_axes = rng.normal(size=(rng.integers(8, 12), 3))
    pyramid_axes[:, 2] = k.side * np.abs(pyramid_axes[:, 2])  # spread over the lateral side of the sinus
    pyramid_axes /= np.linalg.norm(pyramid_axes, axis=1, keepdims=True)
    cortex_mm = rng.uniform(4, 7)
    medulla_hu, cortex_hu = np.float32(medulla_hu), np.float32(cortex_hu)
    found = _ellipsoid(canvas, k.center, k.semi, k.rot)
    if found is None:
        return
    box, (lz, ly, lx), rho = found
    az, ay, ax = (np.float32(a) for a in k.semi)
    sinus = (lz / (0.45 * az)) ** 2 + (ly / (0.55 * ay)) ** 2 + ((lx + k.side * 0.9 * ax) / (0.55 * ax)) ** 2
    inside = rho <= 1
    parts, n_parts = ndimage.label(inside & (sinus > 1))
    # the notch can leave voxel-thin slivers at its rim; they become sinus
    kidney = parts == (np.argmax(np.bincount(parts.ravel())[1:]) + 1 if n_parts else -1)
    # depth below the surface (mm), first order: (1 - rho) / |grad rho|
    grad = np.sqrt((lz / az**2) ** 2 + (ly / ay**2) ** 2 + (lx / ax**2) ** 2)
    depth = (1 - rho) * rho / np.maximum(grad, np.float32(1e-6))
    # medullary pyramids: cones pointing at the sinus, separated by cortical columns
    toward = [lz / az, ly / ay, (lx + k.side * 0.4 * ax) / ax]
    norm = np.maximum(np.sqrt(sum(u**2 for u in toward)), np.float32(1e-6))
    pyramids = np.zeros(rho.shape, dtype=bool)
    for axis in pyramid_axes.astype(np.float32):
        pyramids |= sum(c * u for c, u in zip(axis, toward)) > np.float32(0.88) * norm
    medulla = pyramids & (depth > cortex_mm) & (norm > 0.3)
    values = np.where(medulla, medulla_hu, cortex_hu)
    values += 4 * _smooth_noise(texture, rho.shape, canvas.spacing, 8.0)
    sinus_voxels = inside & ~kidney
    values[sinus_voxels] = np.where(sinus < 0.35, np.float32(10), np.float32(-80))[sinus_voxels]
    canvas.image[box][inside] = values[inside]
    canvas.label[box][kidney] = 1


def _lower_pole(k: _Kidney) -> np.ndarray:
    """mm position of a kidney's lower pole (its long axis points towards the feet)."""
    axis = k.rot[:, 0] if k.rot[0, 0] > 0 else -k.rot[:, 0]
    return np.asarray(k.center) + 0.8 * k.semi[0] * axis


def _paint_isthmus(canvas: _Canvas, rng, lay: _Layout, cortex_hu: float) -> None:
    """A horseshoe kidney's isthmus (label 1): parenchyma from each lower pole forward, then across the
    midline in front of the aorta (clear of it by 3..8 mm)."""
    a, b = (_lower_pole(k) for k in lay.kidneys)
    aorta_y, aorta_x, aorta_r = lay.aorta
    radius = rng.uniform(7, 11)
    z = (a[0] + b[0]) / 2 + rng.uniform(0, 10)
    y = aorta_y - aorta_r - radius - rng.uniform(3, 8)
    for end in (a, b):
        corner = (z, y, 1.1 * end[2])  # straight forward beside the aorta, then across in front of it
        _tube(canvas, end, corner, radius, cortex_hu, label=1)
        _tube(canvas, corner, (z, y, aorta_x), radius, cortex_hu, label=1)


def _surface_point(rng, k: _Kidney, depth: float) -> np.ndarray:
    """A point at ``depth`` times the kidney's radius in a random direction away from the hilum (mm)."""
    direction = rng.normal(size=3)
    if -k.side * direction[2] > 0.2 * np.linalg.norm(direction):  # keep away from the hilum
        direction[2] = -direction[2]
    on_surface = direction / np.linalg.norm(direction / np.asarray(k.semi))
    return np.asarray(k.center) + k.rot @ (on_surface * depth)


def _paint_cysts(canvas: _Canvas, rng, k: _Kidney) -> None:
    """1-3 benign cortical cysts (water, -5..20 HU, 3-15 mm radius), labelled kidney as in KiTS19.

    Every draw comes before the grid is looked at, so a cyst outside the volume changes no later draw."""
    for _ in range(int(rng.integers(1, 4))):
        center, radius = _surface_point(rng, k, rng.uniform(0.7, 1.0)), rng.uniform(3, 15)
        hu = np.float32(rng.uniform(-5, 20))
        found = _ellipsoid(canvas, center, (radius,) * 3, np.eye(3, dtype=np.float32))
        if found is not None:
            box, _, rho = found
            cyst = rho <= 1
            canvas.image[box][cyst] = hu
            canvas.label[box][cyst] = 1


def _paint_tumor(canvas: _Canvas, rng, texture, k: _Kidney, t: _Tumor, family: Family, cortex_hu: float) -> None:
    """One tumor (label 2) of ``t``'s volume, centred at ``t.depth`` of the kidney radius.

    Shape: the family's model, lobulated by ``t.lobulation``. Intensity:
    ``cortex_hu * (1 + t.contrast)`` with a smooth texture of 5..15 HU; with
    ``t.necrosis`` an irregular core of 0..30 HU (fluid, necrosis) over
    30-70 % of the radius; ``t.calcifications`` specks of 300..800 HU, 1-2.5 mm,
    around the centre (sd 0.3 radius); a 2..6 mm rim of perirenal fat where it
    bulges out of the kidney.
    """
    # every draw first: the grid decides only what is painted, so a tumor outside the volume changes no later
    # draw (same seed, same anatomy on any grid)
    radius = (3 * t.volume_ml * 1000 / (4 * np.pi)) ** (1 / 3)
    center = _surface_point(rng, k, t.depth)
    rot = _rotation(*rng.uniform(-np.pi, np.pi, size=3))
    fat_rim = rng.uniform(2, 6)  # mm of perirenal fat between an exophytic tumor and its neighbours
    fat_hu = np.float32(rng.uniform(-110, -80))
    hu, texture_hu = np.float32(cortex_hu * (1 + t.contrast)), rng.uniform(5, 15)
    if family.tumor_model == "lumpy":
        semi = tuple(radius * rng.uniform(0.85, 1.15, size=3))
        lumps = _lumps(rng, t.lobulation)
        reach = 1.15 * (1 + t.lobulation) * (radius + fat_rim)  # the lumpy surface with its fat rim
    else:  # lobes: one of 0.9 radius at the centre, the others 0.6-0.9 radius around it
        n_lobes = int(rng.integers(2, 6))
        offsets = rng.normal(size=(n_lobes, 3))
        offsets *= (t.lobulation + 0.15) * radius / np.linalg.norm(offsets, axis=1, keepdims=True)
        offsets[0] = 0.0
        radii = radius * rng.uniform(0.6, 0.9, size=n_lobes)
        radii[0] = radius * 0.9
        reach = (t.lobulation + 0.15) * radius + 0.9 * (radius + fat_rim)
    core_rho, core_hu = rng.uniform(0.3, 0.7), np.float32(rng.uniform(0, 30))
    specks = [(rot @ (rng.normal(size=3) * 0.3 * radius), rng.uniform(1, 2.5), np.float32(rng.uniform(300, 800)))
              for _ in range(t.calcifications)]  # centres (mm from the tumor's), radii (mm), HU

    box = canvas.box(center, [reach] * 3)
    if box is None:
        return
    d = canvas.offsets(box, center)
    if family.tumor_model == "lumpy":
        local, rho = _local(d, semi, rot)
        level = _lumpy_surface(lumps, local, semi, rho)
    else:  # rho: the smallest normalised distance to a lobe centre
        rho = np.full(canvas.image[box].shape, np.inf, dtype=np.float32)
        for offset, r in zip(offsets @ rot.T, radii):
            dist = np.sqrt(sum((d[i] - np.float32(offset[i])) ** 2 for i in range(3)))
            rho = np.minimum(rho, dist / np.float32(r))
        level = np.ones_like(rho)
    tumor = rho <= level
    rim = (rho <= level * np.float32(1 + fat_rim / radius)) & ~tumor & (canvas.label[box] == 0)
    canvas.image[box][rim] = fat_hu
    values = hu + texture_hu * _smooth_noise(texture, rho.shape, canvas.spacing, max(2.0, min(8.0, radius / 2)))
    if t.necrosis:  # an irregular, soft-edged fluid/necrotic core
        irregular = _smooth_noise(texture, rho.shape, canvas.spacing, max(3.0, radius / 3))
        weight = np.clip((core_rho * level - rho) / 0.15 + 0.5 * irregular, 0, 1)
        values = values * (1 - weight) + core_hu * weight
    for offset, speck_radius, speck_hu in specks:  # painted only where they fall inside the tumor
        values[sum((d[i] - np.float32(offset[i])) ** 2 for i in range(3)) <= speck_radius**2] = speck_hu
    # kidney specks cut off between the tumor's lobes become tumor as well; pieces on the
    # box's faces may go on outside it and are left alone
    parts, n_parts = ndimage.label((canvas.label[box] == 1) & ~tumor)
    if n_parts > 1:
        sizes = np.bincount(parts.ravel())
        speck = sizes < 0.02 * sizes[1:].max()
        speck[0] = False
        for axis in range(3):
            for face in (0, -1):
                speck[np.take(parts, face, axis=axis)] = False
        tumor |= speck[parts]
    canvas.image[box][tumor] = values[tumor]
    canvas.label[box][tumor] = 2


def _acquire(image: np.ndarray, rng: np.random.Generator, spacing, family: Family) -> np.ndarray:
    """Partial-volume blur (Gaussian, per-axis sigma in mm), noise, clipping to the HU range.

    The noise is white, or with ``family.noise_grain_mm`` correlated in-plane
    (each plane's white noise smoothed and rescaled to its sd). Works in place
    and slice by slice, so no full-volume temporaries are made.
    """
    noise_hu = np.float32(rng.uniform(*family.noise_hu))
    sigma_mm = [family.blur_factor * math.hypot(0.35 * s, 0.6) for s in spacing]  # integration + scanner PSF
    # in place is safe: each 1-D pass filters line by line through a buffer
    ndimage.gaussian_filter(image, [m / s for m, s in zip(sigma_mm, spacing)], mode="nearest", output=image)
    grain = [family.noise_grain_mm / s for s in spacing[1:]]
    for plane in image:
        noise = rng.standard_normal(plane.shape, dtype=np.float32)
        if family.noise_grain_mm:
            noise = ndimage.gaussian_filter(noise, grain, mode="wrap")
            noise /= max(float(noise.std()), 1e-6)
        plane += noise * noise_hu
    return np.clip(image, *HU_RANGE, out=image)


def make_phantom(
    seed: int,
    shape: tuple[int, int, int] = (64, 128, 128),
    spacing: tuple[float, float, float] = (4.0, 3.0, 3.0),
    n_kidneys: int | None = None,
    family: str = "A",
    arrangement: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One abdominal CT phantom and its label map, deterministic in ``seed``.

    ``shape`` is ``(slices, rows, cols)`` in voxels and ``spacing`` the voxel size
    in mm in the same order. The anatomy is defined in mm (a body about 30 x 22 cm
    in-plane, kidneys about 11 x 6 x 4 cm around the volume centre) and drawn
    from its own random stream, so a seed gives the same patient on any grid;
    only the texture and noise differ. ``n_kidneys`` is 1 or 2; None draws 1 with
    probability ``SINGLE_KIDNEY_PROBABILITY``. ``family`` is a key of
    ``FAMILIES``. Tumors, cysts, kidney arrangement and contrast phase are drawn
    per case as the module docstring says; ``arrangement`` (normal, horseshoe
    with two kidneys, pelvic) replaces the drawn one. Returns ``(image, label)``: float32
    HU and uint8 in {0, 1, 2}, both of ``shape``; see the module docstring for
    orientation and contents. Raises ``ValueError`` for a bad argument.
    Memory: about 3-4 bytes of temporaries per voxel beyond the 5 bytes of the
    two outputs.
    """
    shape = tuple(int(n) for n in shape)
    spacing = tuple(float(s) for s in spacing)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape {shape}: expected 3 positive voxel counts (slices, rows, cols)")
    if len(spacing) != 3 or not min(spacing) > 0:
        raise ValueError(f"spacing {spacing}: expected 3 positive sizes in mm (slice, row, col)")
    if n_kidneys not in (None, 1, 2):
        raise ValueError(f"n_kidneys {n_kidneys!r}: expected 1, 2 or None")
    if family not in FAMILIES:
        raise ValueError(f"family {family!r}: expected one of {sorted(FAMILIES)}")
    if arrangement not in (None, *ARRANGEMENT_P) or (arrangement == "horseshoe" and n_kidneys != 2):
        raise ValueError(f"arrangement {arrangement!r}: expected None, normal, pelvic, or horseshoe with n_kidneys=2")
    fam = FAMILIES[family]
    # parameters and noise fields come from separate streams, so that the parameters
    # (hence the patient) do not depend on the grid: same seed, same anatomy in mm
    rng, texture = np.random.default_rng(seed).spawn(2)
    if n_kidneys is None:
        n_kidneys = 1 if rng.random() < SINGLE_KIDNEY_PROBABILITY else 2
    lay = _sample_layout(rng, n_kidneys, fam, arrangement)
    phase = "arterial" if rng.random() < 0.5 else "venous"
    cortex_hu, medulla_hu = rng.uniform(*fam.cortex_hu[phase]), rng.uniform(*fam.medulla_hu[phase])
    canvas = _Canvas(shape, spacing, offset_yx=rng.uniform(-10, 10, size=2))
    cavity = _paint_body(canvas, rng, lay)
    _paint_bowel(canvas, rng, texture, lay, cavity)
    _paint_perirenal_fat(canvas, rng, lay, cavity)
    _paint_spine_and_muscles(canvas, rng, lay)
    _paint_ribs(canvas, rng, lay)
    venous = phase == "venous"
    _paint_vessels(canvas, rng, lay, rng.uniform(*fam.aorta_hu[phase]), venous)
    _paint_pancreas(canvas, rng, lay, 30 * venous)
    _paint_liver_and_spleen(canvas, rng, texture, lay, cavity, np.add(fam.liver_hu, 30 * venous), 25 * venous)
    for k in lay.kidneys:
        _paint_kidney(canvas, rng, texture, k, cortex_hu, medulla_hu)
    if lay.arrangement == "horseshoe":
        _paint_isthmus(canvas, rng, lay, cortex_hu)
    for k in lay.kidneys:
        if rng.random() < CYST_P:
            _paint_cysts(canvas, rng, k)
    n_tumors = 1 + int(rng.choice(len(TUMOR_COUNT_P), p=TUMOR_COUNT_P))
    for _ in range(n_tumors):
        kidney = lay.kidneys[rng.integers(len(lay.kidneys))]
        _paint_tumor(canvas, rng, texture, kidney, _draw_tumor(rng, fam), fam, cortex_hu)
    return _acquire(canvas.image, texture, spacing, fam), canvas.label


# --------------------------------------------------------------------------
# data set on disk
# --------------------------------------------------------------------------


def case_spacing(rng: np.random.Generator, spacing: tuple[float, float, float]) -> tuple[float, float, float]:
    """A case's spacing in mm, ``(slice, row, col)``, jittered around the nominal ``spacing``.

    The slice spacing is multiplied by one of ``SLICE_FACTORS`` (scans reconstructed
    at different thicknesses), both pixel spacings by one factor in
    ``1 +- PIXEL_JITTER`` (different fields of view); rounded to 0.001 mm.
    """
    slice_factor = float(rng.choice(SLICE_FACTORS))
    pixel_factor = rng.uniform(1 - PIXEL_JITTER, 1 + PIXEL_JITTER)
    s, r, c = spacing
    return round(s * slice_factor, 3), round(r * pixel_factor, 3), round(c * pixel_factor, 3)


def phantom_number(case_id: str) -> str:
    """The 5 digits of a phantom's KiTS-style name (``case_00042``); they seed its random stream."""
    number = kits_number(case_id)
    if number is None:
        raise ValueError(f"{case_id}: phantoms are named 'case_' followed by 5 digits")
    return number


def case_plan(case_id: str, shape, spacing, seed: int, single_kidney_fraction: float, slice_thickness_mm=None,
              scan_length_mm=None) -> tuple[tuple[int, int, int], tuple[float, float, float], int, int]:
    """What :func:`write_phantoms` makes of one case: ``(shape, spacing in mm, kidneys, phantom seed)``.

    Drawn from the stream seeded with ``(seed, case number)``; see
    :func:`write_phantoms` for the arguments.
    """
    number = int(phantom_number(case_id))
    rng = np.random.default_rng([seed, number])
    spacing_mm = case_spacing(rng, spacing)
    n_kidneys = 1 if rng.random() < single_kidney_fraction else 2
    phantom_seed = int(rng.integers(2**63))
    case_shape = tuple(int(n) for n in shape)
    if slice_thickness_mm:
        spacing_mm = (float(slice_thickness_mm[number % len(slice_thickness_mm)]), *spacing_mm[1:])
    if scan_length_mm:
        case_shape = (max(1, round(rng.uniform(*scan_length_mm) / spacing_mm[0])), *case_shape[1:])
    return case_shape, spacing_mm, n_kidneys, phantom_seed


def write_phantoms(
    files: dict,
    metadata_path,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    seed: int,
    single_kidney_fraction: float,
    slice_thickness_mm=None,
    scan_length_mm=None,
    family: str = "A",
) -> None:
    """Write phantoms to the given files: ``files`` maps case id -> (imaging path, segmentation path or None).

    Imaging is float32 HU, the segmentation (omitted where its path is None)
    uint8, both with ``kits19_affine(case spacing)``; ``metadata_path`` gets
    the KiTS19 ``kits.json``: one record per case with ``case_id``,
    ``voxel_spacing`` (mm, ``[slice, row, col]``), ``captured_slice_thickness``
    and ``captured_pixel_width``.

    Every volume has ``shape`` (slices, rows, cols); its spacing jitters around
    the nominal ``spacing`` (mm) as ``case_spacing`` describes, so the pipeline's
    resampling is exercised. A case depends only on ``seed`` and its case number
    (the random stream is seeded with ``(seed, number)``), not on which other
    cases are written; a fraction ``single_kidney_fraction`` of cases (drawn per
    case) has one kidney. Case ids must be ``case_`` plus 5 digits.

    KiTS-like variety of scan geometry: with ``slice_thickness_mm`` (a list),
    case number ``n`` gets the slice spacing ``slice_thickness_mm[n % len]``
    instead of the jittered nominal one; with ``scan_length_mm`` ``[lo, hi]``
    its slice count is ``round(U(lo, hi) / slice spacing)`` instead of
    ``shape[0]`` (e.g. a 400 mm scan: 80 slices at 5 mm, 500 at 0.8 mm).
    ``family`` is a key of ``FAMILIES`` (``make_phantom``).
    """
    if not 0 <= single_kidney_fraction <= 1:
        raise ValueError(f"single_kidney_fraction {single_kidney_fraction}: expected a number in [0, 1]")
    if family not in FAMILIES:
        raise ValueError(f"phantoms.family {family!r}: expected one of {sorted(FAMILIES)}")
    for case_id in files:
        phantom_number(case_id)
    records = []
    for case_id, (imaging_path, segmentation_path) in files.items():
        case_shape, spacing_mm, n_kidneys, phantom_seed = case_plan(
            case_id, shape, spacing, seed, single_kidney_fraction, slice_thickness_mm, scan_length_mm)
        image, label = make_phantom(phantom_seed, case_shape, spacing_mm, n_kidneys, family)
        affine = kits19_affine(spacing_mm)
        save_nifti(image, affine, imaging_path)
        if segmentation_path is not None:
            save_nifti(label, affine, segmentation_path)
        records.append(
            {
                "case_id": case_id,
                "voxel_spacing": list(spacing_mm),
                "captured_slice_thickness": spacing_mm[0],
                "captured_pixel_width": spacing_mm[1],
            }
        )
    save_json(records, metadata_path)


def write_phantom_dataset(
    out_dir,
    case_ids: list[str],
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    seed: int,
    unlabeled: set[str] = frozenset(),
    single_kidney_fraction: float = 0.15,
    slice_thickness_mm=None,
    scan_length_mm=None,
    family: str = "A",
) -> None:
    """:func:`write_phantoms` into a KiTS19-layout folder: ``out_dir/case_XXXXX/imaging.nii.gz``,
    ``segmentation.nii.gz`` unless the case is in ``unlabeled``, and ``out_dir/kits.json``."""
    unknown = sorted(set(unlabeled) - set(case_ids))
    if unknown:
        raise ValueError(f"unlabeled cases {unknown[:5]} are not among the case ids to write")
    out_dir = Path(out_dir)
    files = {c: (out_dir / c / IMAGING_NAME, None if c in unlabeled else out_dir / c / SEGMENTATION_NAME)
             for c in case_ids}
    write_phantoms(files, out_dir / "kits.json", shape, spacing, seed, single_kidney_fraction, slice_thickness_mm,
                   scan_length_mm, family)
