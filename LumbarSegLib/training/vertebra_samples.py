"""Training samples of stage 3: one vertebra's crop on the 1.25 mm grid, its centre, and its binary mask.

Sources, each a list of vertebra instances (a label map, a VerSe code, a centre in mm):

* **real** - the labelled real CTs (``find_cases``), thoracic vertebrae included; a bone-only CT is given
  a body first (:func:`real_views.load_source`);
* **label maps** - real vertebra masks without a CT (``shared/data/masks``): the CT is synthesised on the
  crop from the labels (:func:`synthesize_ct`, SynthSeg's idea with CT's own tissue ranges).

Every crop is drawn with its centre jittered by up to ``JITTER_MM``, a rotation of up to 15 deg, a scale of
+-10 %, mirrored left-right on half of the draws (:data:`MIRROR_SHARE`), then re-imaged with thick slices
(:func:`thick_slices`: axial, sagittal or coronal, 1-6 mm, the slice profile's blur, subsampled and brought back
to the grid) and intensity jitter. The target is never re-imaged: the network learns the vertebra as it is, from
the scan as it was stored.

A held-out subject leaves every source: its CT and its own masks (``subject_of``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..inference.vertebra_net import VertebraNetConfig
from ..inference.vertebra_stage import OUTSIDE_HU, crop_grid
from .augmentation import rotation_matrix
from .real_views import _smooth_noise

JITTER_MM = 5.0
ROTATE_DEG = (15.0, 8.0, 8.0)  # about x (sagittal tilt), y, z
SCALE = (0.9, 1.1)
THICK_MM = (1.0, 6.0)
THICK_AXES = {"axial": 0.5, "sagittal": 0.3, "coronal": 0.2}  # share of crops given thick slices that way
THICK_FRACTION = 0.8  # share of crops re-imaged with thick slices at all
# A vertebra mirrored left-right is still a plausible vertebra with the same code, so each real or label-map
# shape counts twice; its asymmetries (scoliosis, a one-sided osteophyte) then occur on either side.
MIRROR_SHARE = 0.5
MIRROR_LR = np.diag([-1.0, 1.0, 1.0])  # LPS x is the patient's left-right
VERTEBRA_CODES = tuple(range(1, 26)) + (28,)  # VerSe C1-L6 and T13; the sacrum (26) is context, not a target
_SUBJECT = re.compile(r"(verse\d+|s\d{4}|sample\d+|label-\d+)")


def subject_of(name: str) -> str | None:
    """The subject id in a case id or a mask folder name (verse005 in both sub-verse005 and masks/verse005)."""
    m = _SUBJECT.search(name.lower())
    return m.group(1) if m else None


@dataclass
class Instance:
    source: "Source"
    code: int
    centre_mm: np.ndarray  # LPS, centroid of the vertebra's voxels


@dataclass
class Source:
    name: str
    kind: str  # "real" or "labelmap"
    labels: sitk.Image  # VerSe codes
    ct: sitk.Image | None = None  # float32 HU, on the labels' grid; None: synthesised per crop


def vertebra_centres(labels: sitk.Image) -> dict[int, np.ndarray]:
    """VerSe code -> centroid (LPS mm) of every vertebra in the label map."""
    arr = sitk.GetArrayViewFromImage(labels)
    codes = [int(c) for c in np.unique(arr) if int(c) in VERTEBRA_CODES]
    if not codes:
        return {}
    idx = ndimage.center_of_mass(np.ones(arr.shape, np.uint8), arr, codes)
    return {c: np.asarray(labels.TransformContinuousIndexToPhysicalPoint([float(v) for v in i[::-1]]))
            for c, i in zip(codes, idx)}


MIN_INSTANCE_ML = 5.0  # a sliver of a vertebra at the scan's edge has no centre worth training on


def whole_enough_centres(labels: sitk.Image) -> dict[int, np.ndarray]:
    """:func:`vertebra_centres` of the vertebrae of at least MIN_INSTANCE_ML (what is trained on and scored)."""
    arr = sitk.GetArrayViewFromImage(labels)
    voxel_ml = float(np.prod(labels.GetSpacing())) / 1000.0
    counts = np.bincount(arr.ravel(), minlength=max(VERTEBRA_CODES) + 1)
    return {c: p for c, p in vertebra_centres(labels).items() if counts[c] * voxel_ml >= MIN_INSTANCE_ML}


def _instances(src: Source) -> list[Instance]:
    return [Instance(src, c, p) for c, p in whole_enough_centres(src.labels).items()]


def load_real_sources(real_dirs, leave_out=(), keep=None) -> list[Source]:
    """The labelled real CTs under ``real_dirs``, without the subjects in ``leave_out`` (and, given ``keep``,
    only the cases whose id it accepts)."""
    from . import real_views
    from .data import find_cases

    held = {subject_of(s) or s for s in leave_out}
    out = []
    for d in real_dirs:
        if not Path(d).is_dir():
            continue
        for case in find_cases(d):
            if subject_of(case.case_id) in held or case.case_id in leave_out or (keep and not keep(case.case_id)):
                continue
            ct, seg = real_views.load_source(str(case.ct), str(case.seg))
            out.append(Source(case.case_id, "real", seg, ct))
    return out


def load_labelmap_sources(masks_root, leave_out=()) -> list[Source]:
    """Real vertebra label maps without CT (VerSe / TotalSegmentator layouts, codes mapped to VerSe)."""
    from ..phantoms.shapes import _map_codes

    held = {subject_of(s) or s for s in leave_out}
    root = Path(masks_root)
    if not root.is_dir():
        return []
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if subject_of(folder.name) in held:
            continue
        files = sorted(folder.glob("*.nii*"))
        merged = None
        for f in files:  # one map per folder; per-vertebra binary files (L1_seg ...) merged into one
            img = sitk.DICOMOrient(sitk.ReadImage(str(f)), "LPS")
            arr = _map_codes(f, sitk.GetArrayFromImage(img)).astype(np.uint8)
            lab = sitk.GetImageFromArray(arr)
            lab.CopyInformation(img)
            if merged is None:
                merged = lab
            else:
                lab = sitk.Resample(lab, merged, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
                merged = sitk.Maximum(merged, lab)
        if merged is not None:
            out.append(Source(f"masks/{folder.name}", "labelmap", merged))
    return out


class KindPool:
    """Items (of any sort) grouped by their source's kind, drawn with the weights given per kind: the part of
    a training sampler that every sampler here shares."""

    def __init__(self, items_by_kind: dict[str, list], weights: dict[str, float], what: str):
        self.by_kind = {k: v for k, v in items_by_kind.items() if v}
        self.kinds = [k for k in weights if self.by_kind.get(k) and weights[k] > 0]
        if not self.kinds:
            raise ValueError(f"no {what} to train on: no source of the kinds " + ", ".join(weights))
        p = np.array([weights[k] for k in self.kinds], float)
        self.kind_p = p / p.sum()

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.by_kind.items()}

    def pick(self, rng: np.random.Generator):
        """A kind by its weight, then one of its items uniformly."""
        kind = self.kinds[int(rng.choice(len(self.kinds), p=self.kind_p))]
        return self.by_kind[kind][int(rng.integers(len(self.by_kind[kind])))]


def resample_turned(src: Source, ref: sitk.Image, pivot_mm, rot: np.ndarray, scale: float, spacing_mm: float,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(CT HU, VerSe codes), (z, y, x) on the grid ``ref``, of ``src`` turned by ``rot`` (a mirror included)
    and resized by ``scale`` about ``pivot_mm``: output point p -> source point c + scale * R (p - c). A
    label-map source's CT is synthesised on the grid (:func:`synthesize_ct`)."""
    tf = sitk.AffineTransform(3)
    tf.SetMatrix((rot * scale).ravel().tolist())
    tf.SetCenter([float(v) for v in pivot_mm])
    codes = sitk.GetArrayFromImage(sitk.Resample(src.labels, ref, tf, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))
    if src.ct is not None:
        ct = sitk.GetArrayFromImage(sitk.Resample(src.ct, ref, tf, sitk.sitkLinear, OUTSIDE_HU, sitk.sitkFloat32))
    else:
        ct = synthesize_ct(codes, spacing_mm, rng)
    return ct, codes


def reimage(ct: np.ndarray, spacing_mm: float, rng: np.random.Generator, info: dict) -> np.ndarray:
    """The crop as another scanner would give it: thick slices on :data:`THICK_FRACTION` of crops (the axis
    and thickness go into ``info["thick"]``), then intensity jitter. Float32."""
    if rng.random() < THICK_FRACTION:
        axis_name = str(rng.choice(list(THICK_AXES), p=list(THICK_AXES.values())))
        thickness = float(rng.uniform(*THICK_MM))
        ct = thick_slices(ct, {"axial": 0, "coronal": 1, "sagittal": 2}[axis_name], thickness, spacing_mm, rng)
        info["thick"] = (axis_name, round(thickness, 2))
    return intensity_jitter(ct, rng).astype(np.float32)


class VertebraSampler:
    """Draws training crops from real and label-map sources with the weights given per kind."""

    def __init__(self, sources: list[Source], config: VertebraNetConfig, weights: dict[str, float] | None = None,
                 seed: int = 0):
        self.config = config
        self.rng = np.random.default_rng(seed)
        by_kind: dict[str, list[Instance]] = {}
        for src in sources:
            by_kind.setdefault(src.kind, []).extend(_instances(src))
        self.pool = KindPool(by_kind, weights or {"real": 0.6, "labelmap": 0.4}, "vertebra")

    def counts(self) -> dict[str, int]:
        return self.pool.counts()

    def draw(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
        """(ct HU crop (z, y, x) float32, centre in crop voxels (z, y, x), target uint8, info)."""
        rng = self.rng
        inst = self.pool.pick(rng)
        jitter = rng.uniform(-JITTER_MM, JITTER_MM, 3)
        rot = rotation_matrix(np.deg2rad([rng.uniform(-a, a) for a in ROTATE_DEG]))
        mirrored = bool(rng.random() < MIRROR_SHARE)
        if mirrored:
            rot = rot @ MIRROR_LR
        scale = rng.uniform(*SCALE)
        ref = crop_grid(inst.centre_mm + jitter, self.config)
        # The vertebra turned and resized about its centre c, so the crop's middle (the heatmap's peak) lands up
        # to sqrt(3) x JITTER_MM from it.
        ct, lab = resample_turned(inst.source, ref, inst.centre_mm, rot, scale, self.config.spacing_mm, rng)
        info = {"source": inst.source.name, "code": inst.code, "mirrored": mirrored}
        ct = reimage(ct, self.config.spacing_mm, rng, info)
        # The crop and its heatmap are centred on the jittered point, as at inference on a found centre.
        centre_vox = (np.asarray(self.config.crop_zyx, float) - 1) / 2
        target = (lab == inst.code).astype(np.uint8)
        return ct, centre_vox.astype(np.float32), target, info


def thick_slices(ct: np.ndarray, axis: int, thickness_mm: float, spacing_mm: float,
                 rng: np.random.Generator) -> np.ndarray:
    """The crop as a scan of ``thickness_mm`` slices across ``axis`` (0 z, 1 y, 2 x) would show it, back on its
    grid: the slice profile's blur (FWHM = thickness), samples every ``thickness`` at a random phase, linear
    interpolation between them (what resampling a stored thick-slice scan to 1.25 mm does)."""
    if thickness_mm <= spacing_mm * 1.05:
        return ct
    sigma_vox = math.sqrt(thickness_mm ** 2 - spacing_mm ** 2) / 2.355 / spacing_mm
    blurred = ndimage.gaussian_filter1d(ct, sigma_vox, axis=axis, mode="nearest")
    n = ct.shape[axis]
    step = thickness_mm / spacing_mm
    pos = np.arange(rng.uniform(0, step) - step, n + step, step)  # slice centres, covering the crop
    samples = _interp_axis(blurred, pos, axis)
    # Back to the grid: each voxel between its two neighbouring slices.
    where = (np.arange(n) - pos[0]) / step
    return _interp_axis(samples, where, axis)


def _interp_axis(a: np.ndarray, pos: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``a`` at fractional indices ``pos`` along ``axis`` (clamped at the ends)."""
    n = a.shape[axis]
    pos = np.clip(pos, 0, n - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    w = (pos - lo).astype(np.float32)
    shape = [1, 1, 1]
    shape[axis] = len(pos)
    w = w.reshape(shape)
    return np.take(a, lo, axis=axis) * (1 - w) + np.take(a, hi, axis=axis) * w


def intensity_jitter(ct: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scanner and reconstruction differences: HU scale and offset, a little in-plane blur, noise."""
    out = ct * rng.uniform(0.9, 1.1) + rng.uniform(-30, 30)
    if rng.random() < 0.3:
        out = ndimage.gaussian_filter(out, rng.uniform(0.2, 0.8))
    if rng.random() < 0.7:
        out = out + rng.normal(0, rng.uniform(2, 30), out.shape).astype(np.float32)
    return out.astype(np.float32)


def synthesize_ct(labels: np.ndarray, spacing_mm: float, rng: np.random.Generator) -> np.ndarray:
    """A CT drawn from a crop of vertebra labels: cortex and cancellous bone, discs between the bodies, the
    spinal canal, muscle and fat around them, each with intensities drawn within CT's physiological ranges,
    then blurred (0.5-1.5 mm) with noise (5-40 HU)."""
    bone = labels > 0
    shell_mm = rng.uniform(1.0, 2.5)
    inner = ndimage.binary_erosion(bone, iterations=max(1, int(round(shell_mm / spacing_mm))))
    cortex = bone & ~inner
    # Discs: what closes the gaps between bodies along the spine (z), minus bone.
    reach = max(1, int(round(rng.uniform(8, 14) / spacing_mm)))
    disc = ndimage.binary_closing(bone, structure=np.ones((reach, 1, 1), bool)) & ~bone
    # The canal: holes of the bone ring in each axial slice.
    canal = np.zeros_like(bone)
    for z in range(bone.shape[0]):
        canal[z] = ndimage.binary_fill_holes(bone[z] | disc[z]) & ~bone[z] & ~disc[z]
    shape = labels.shape
    tex = _smooth_noise(shape, rng, rng.uniform(2.0, 5.0))
    soft = np.where(tex > rng.uniform(-0.8, 0.8), rng.uniform(30, 65), rng.uniform(-130, -70)).astype(np.float32)
    near = ndimage.distance_transform_edt(~bone, sampling=spacing_mm) < rng.uniform(10, 30)
    soft[near] = rng.uniform(35, 65)  # paraspinal muscle and psoas hug the spine
    soft += 8.0 * tex
    out = soft
    out[disc] = rng.uniform(60, 110)
    out[canal] = rng.uniform(0, 40)
    marrow = rng.uniform(100, 350)
    out[inner] = marrow + rng.uniform(15, 50) * _smooth_noise(shape, rng, 1.0)[inner]
    out[cortex] = rng.uniform(450, 1200) + rng.uniform(30, 120) * tex[cortex]
    out = ndimage.gaussian_filter(out, rng.uniform(0.5, 1.5) / spacing_mm)
    out += rng.normal(0, rng.uniform(5, 40), shape).astype(np.float32)
    return out.astype(np.float32)
