"""Training views of real labelled CT: the few real cases re-imaged as the scans users bring.

A real case here is a spine-targeted crop (VerSe) or a bone-only CT. Each *view* re-images it with a new
random acquisition: a rigid tilt of up to +-15 deg (gantry tilt / patient obliquity), a new voxel grid
(in-plane 0.6-1.6 mm, slice spacing 0.5-5 mm with the slice profile's blur along z) and a field of view
drawn from what users scan:

* ``tight``  - a box around 2-5 consecutive labelled vertebrae (spine-targeted reconstructions, partial
  lumbar spines that end in the thoracic spine or the sacrum);
* ``native`` - the case's own extent;
* ``wide``   - the case's slab widened in-plane to a whole body cross-section (250-420 mm), the missing
  tissue synthesised (fat, muscle, skin, air outside an elliptical body) and blended into the real
  tissue at the crop's border, so the localizer sees real vertebrae inside abdominal-size images.

The thick axis is drawn among the three (what hospitals store): axial slices (0.5-5 mm, half of them a
clinical 5 mm abdomen with 0.5-0.8 mm in-plane), sagittal or coronal reconstructions 2-4 mm thick across
them. Every thick axis gets the slice profile's blur.

Labels stay VerSe codes; views are deterministic in (case, index) so caches can be shared between
cross-validation folds (a held-out case's views are simply left out).
"""

from __future__ import annotations

import functools
import hashlib
import math

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .augmentation import rotation_matrix

VIEWS_VERSION = 2  # part of the cache key: bump when a view's content changes
AIR_HU = -1000.0
OUTSIDE = -32000.0  # marks voxels outside the source image after resampling
VIEW_KINDS = {"tight": 0.35, "native": 0.30, "wide": 0.35}
BONE_ONLY_FILL_HU = 0  # value a bone-only CT uses for "not bone"
MAX_VIEW_VOXELS = 24e6
# Which axis is thick: axial (z) slices, sagittal (x: left-right thick), coronal (y: front-back thick).
THICK_AXES = {2: 0.5, 0: 0.3, 1: 0.2}


# ------------------------------------------------------------------------------------------------------
# Bone-only CT -> plausible CT
# ------------------------------------------------------------------------------------------------------

def is_bone_only_file(path: str) -> bool:
    return is_bone_only(sitk.ReadImage(str(path)))


def is_bone_only(ct: sitk.Image) -> bool:
    """A CT whose soft tissue was blanked (every voxel either 0 or bone HU), like real_boneonly/."""
    a = sitk.GetArrayViewFromImage(ct)
    sample = a.ravel()[:: max(1, a.size // 200_000)]
    return bool(sample.min() >= 0 and np.mean(sample == BONE_ONLY_FILL_HU) > 0.5)


def _smooth_noise(shape, rng, sigma_vox, std=1.0) -> np.ndarray:
    """Smooth random field of about unit std (computed on a coarse grid, then upsampled)."""
    factor = max(1, int(sigma_vox // 2))
    small = [max(2, int(math.ceil(s / factor))) for s in shape]
    a = ndimage.gaussian_filter(rng.standard_normal(small).astype(np.float32), max(sigma_vox / factor, 0.5))
    a /= a.std() + 1e-6
    if factor > 1:
        a = ndimage.zoom(a, [s / t for s, t in zip(shape, small)], order=1)
        a = a[: shape[0], : shape[1], : shape[2]]
        pad = [(0, s - t) for s, t in zip(shape, a.shape)]
        a = np.pad(a, pad, mode="edge")
    return (a * std).astype(np.float32)


def fill_soft_tissue(ct: sitk.Image, seg: sitk.Image, rng: np.random.Generator) -> sitk.Image:
    """Give a bone-only CT (canonical LPS) a body: marrow inside bones, muscle/fat inside a hull, air outside.

    The body outline is each slice's convex hull of the bone grown by 25-45 mm (the skeleton fills most of
    the trunk's cross-section at lumbar and thoracic levels); marrow (cancellous bone under the blanking
    threshold) is restored inside labelled vertebrae and inside holes of other bones.
    """
    from scipy.spatial import ConvexHull, QhullError

    a = sitk.GetArrayFromImage(ct).astype(np.float32)  # (z, y, x)
    lab = sitk.GetArrayViewFromImage(seg) > 0
    sp = np.asarray(ct.GetSpacing())[::-1]  # (z, y, x) mm
    bone = a > 150
    # Marrow: cancellous bone (100-250 HU) where the blanking removed it.
    filled = ndimage.binary_fill_holes(bone | lab, structure=np.ones((1, 3, 3), bool)) | lab
    for z in range(a.shape[0]):
        filled[z] = ndimage.binary_fill_holes(filled[z])
    marrow = filled & ~bone
    body = np.zeros_like(bone)
    grow_mm = rng.uniform(25, 45)
    yy, xx = np.mgrid[: a.shape[1], : a.shape[2]]
    pts_all = np.stack([yy.ravel(), xx.ravel()], 1)
    for z in range(a.shape[0]):
        sl = ndimage.binary_dilation(bone[z], iterations=max(1, int(round(grow_mm / sp[1]))))
        ys, xs = np.nonzero(sl)
        if ys.size < 10:
            continue
        try:
            hull = ConvexHull(np.stack([ys, xs], 1))
        except QhullError:
            body[z] = sl
            continue
        eq = hull.equations  # a*y + b*x + c <= 0 inside
        inside = np.all(pts_all @ eq[:, :2].T + eq[:, 2] <= 1e-6, axis=1)
        body[z] = inside.reshape(a.shape[1:])
    # Smooth the outline along z (the hull jumps where ribs start/stop).
    body = ndimage.binary_closing(body, structure=np.ones((5, 1, 1), bool), border_value=0) | body
    near_spine = ndimage.distance_transform_edt(~lab, sampling=sp) < rng.uniform(25, 45)
    texture = _smooth_noise(a.shape, rng, sigma_vox=3.0)
    muscle = near_spine | (texture > 0.6)
    soft = np.where(muscle, 45.0, -95.0) + _smooth_noise(a.shape, rng, 2.0, std=12.0)
    out = np.full(a.shape, AIR_HU, np.float32)
    out[body] = soft[body]
    out[marrow] = rng.uniform(140, 230) + 25.0 * texture[marrow]
    out[bone] = a[bone]
    img = sitk.GetImageFromArray(out)
    img.CopyInformation(ct)
    return img


# ------------------------------------------------------------------------------------------------------
# Views
# ------------------------------------------------------------------------------------------------------

def _domain_corners(image: sitk.Image) -> np.ndarray:
    size = np.asarray(image.GetSize(), float)
    return np.array([image.TransformContinuousIndexToPhysicalPoint(
        [(-0.5, s - 0.5)[b] for s, b in zip(size, bits)]) for bits in np.ndindex(2, 2, 2)])


def _label_boxes(seg: np.ndarray, codes, image: sitk.Image, rot: np.ndarray, center: np.ndarray) -> dict:
    """Per VerSe code: (min, max) of its voxels' physical points mapped into the view frame (mm)."""
    out = {}
    objs = ndimage.find_objects(seg.astype(np.int32))
    for code in codes:
        if code - 1 >= len(objs) or objs[code - 1] is None:
            continue
        sl = objs[code - 1]
        zz, yy, xx = np.nonzero(seg[sl] == code)
        step = max(1, zz.size // 4000)
        idx = np.stack([xx[::step] + sl[2].start, yy[::step] + sl[1].start, zz[::step] + sl[0].start], 1)
        pts = _index_to_physical(image, idx)
        v = (pts - center) @ rot  # view coordinates: x_view = R^T (p - c)
        out[code] = (v.min(0), v.max(0))
    return out


def _index_to_physical(image: sitk.Image, idx: np.ndarray) -> np.ndarray:
    d = np.asarray(image.GetDirection()).reshape(3, 3)
    return np.asarray(image.GetOrigin()) + (idx * np.asarray(image.GetSpacing())) @ d.T


def make_view(ct: sitk.Image, seg: sitk.Image, rng: np.random.Generator, kind: str | None = None,
              lumbar_codes=(20, 21, 22, 23, 24, 25), acquisition: tuple | None = None,
              tilt: bool = True) -> tuple[sitk.Image, sitk.Image, dict]:
    """One random re-imaging of a real case (see the module docstring). Returns (ct int16, seg uint8, info).

    ``acquisition``: a fixed ``(spacing xyz mm, thick axis 0/1/2)`` instead of a drawn one; ``tilt=False``
    keeps the source's axes (both for the fixed re-imagings of the leave-one-out report)."""
    kind = kind or str(rng.choice(list(VIEW_KINDS), p=list(VIEW_KINDS.values())))
    seg_arr = sitk.GetArrayViewFromImage(seg)
    present = [int(c) for c in np.unique(seg_arr) if c]
    lumbar = [c for c in present if c in lumbar_codes]
    if not lumbar:
        raise ValueError("make_view needs a case with at least one labelled lumbar vertebra")
    # Rotation about the lumbar centre: mostly a sagittal tilt (about x), less about y and z.
    zz, yy, xx = np.nonzero(np.isin(seg_arr, lumbar))
    step = max(1, zz.size // 20000)
    center = _index_to_physical(seg, np.stack([xx[::step], yy[::step], zz[::step]], 1)).mean(0)
    tilt = np.deg2rad([rng.uniform(-15, 15), rng.uniform(-8, 8), rng.uniform(-8, 8)]) * float(tilt)
    rot = rotation_matrix(tilt)  # columns = view axes in the source frame
    boxes = _label_boxes(seg_arr, present, seg, rot, center)
    dom = (_domain_corners(ct) - center) @ rot
    dom_lo, dom_hi = dom.min(0), dom.max(0)
    # The source's usable extent in the view frame (the rotated box's inscribed part, roughly).
    shrink = 0.5 * (dom_hi - dom_lo) * np.abs(np.sin(np.max(np.abs(tilt))))
    use_lo, use_hi = dom_lo + shrink * np.array([0.3, 0.3, 0.3]), dom_hi - shrink * np.array([0.3, 0.3, 0.3])

    spacing, thick_axis = _draw_spacing(rng) if acquisition is None else (np.asarray(acquisition[0], float),
                                                                          int(acquisition[1]))
    if kind == "tight":
        order = sorted(lumbar)
        n = int(rng.integers(2, len(order) + 1)) if len(order) >= 2 else 1
        first = int(rng.integers(0, len(order) - n + 1))
        run = order[first:first + n]
        lo = np.min([boxes[c][0] for c in run], 0)
        hi = np.max([boxes[c][1] for c in run], 0)
        margin_xy = rng.uniform(8, 50, 2)
        lo = lo - np.r_[margin_xy, rng.uniform(0, 25)]
        hi = hi + np.r_[rng.uniform(8, 50, 2), rng.uniform(0, 25)]
        lo, hi = np.maximum(lo, use_lo), np.minimum(hi, use_hi)
    elif kind == "native":
        lo, hi = use_lo.copy(), use_hi.copy()
    else:  # wide: in-plane body cross-section, z as the source
        spine_lo = np.min([b[0] for b in boxes.values()], 0)
        spine_hi = np.max([b[1] for b in boxes.values()], 0)
        width = rng.uniform(250, 420)
        depth = width * rng.uniform(0.7, 0.95)
        cx = 0.5 * (spine_lo[0] + spine_hi[0]) + rng.uniform(-20, 20)
        back = spine_hi[1] + rng.uniform(20, 70)  # posterior edge of the image (LPS: +y posterior)
        lo = np.array([cx - width / 2, back - depth, use_lo[2]])
        hi = np.array([cx + width / 2, back, use_hi[2]])
        zcut = rng.uniform(0, 0.15, 2) * (use_hi[2] - use_lo[2])
        lo[2] += zcut[0]
        hi[2] -= zcut[1]
    # Keep views to clinical matrix sizes (<= ~24 M voxels): coarsen the grid of very large boxes.
    voxels = np.prod(np.maximum((hi - lo) / spacing, 1))
    if voxels > MAX_VIEW_VOXELS:
        spacing = spacing * (voxels / MAX_VIEW_VOXELS) ** (1 / 3)
    size = np.maximum(np.ceil((hi - lo) / spacing).astype(int), [16, 16, 4])
    hi = lo + size * spacing
    # Output grid: axis-aligned in the view frame, i.e. direction = rot in the source's physical frame.
    origin = center + rot @ (lo + 0.5 * spacing)
    ref = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    ref.SetSpacing(spacing.tolist())
    ref.SetOrigin(origin.tolist())
    ref.SetDirection(rot.ravel().tolist())

    src = sitk.Cast(ct, sitk.sitkFloat32)
    # Slice profile: thick slices average across them. Blur along the source axis closest to the view's
    # thick axis (tilts are small); in-plane, linear interpolation from ~1 mm sources to <= 1.6 mm is mild.
    src_axis = int(np.argmax(np.abs(np.asarray(ct.GetDirection()).reshape(3, 3).T @ rot[:, thick_axis])))
    thickness = float(spacing[thick_axis])
    sigma_mm = math.sqrt(max(thickness ** 2 - ct.GetSpacing()[src_axis] ** 2, 0.0)) / 2.355
    if sigma_mm > 0.2:
        src = _blur_axis(src, src_axis, sigma_mm)
    out = sitk.Resample(src, ref, sitk.Transform(), sitk.sitkLinear, OUTSIDE, sitk.sitkFloat32)
    lab = sitk.Resample(seg, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    a = sitk.GetArrayFromImage(out)
    outside = a <= OUTSIDE / 2
    if outside.any():
        a = _fill_outside(a, outside, np.asarray(spacing)[::-1], rng)
    img = sitk.GetImageFromArray(np.clip(np.round(a), -1024, 3071).astype(np.int16))
    img.CopyInformation(ref)
    lab.CopyInformation(ref)
    info = {"kind": kind, "spacing": [round(float(v), 3) for v in spacing], "size": [int(s) for s in size],
            "tilt_deg": [round(float(v), 1) for v in np.rad2deg(tilt)], "thick_axis": "xyz"[thick_axis],
            "outside_fraction": round(float(outside.mean()), 3)}
    return img, lab, info


def _draw_spacing(rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A view's voxel spacing (x, y, z mm) and its thick axis (see THICK_AXES)."""
    thick_axis = int(rng.choice(list(THICK_AXES), p=list(THICK_AXES.values())))
    if thick_axis == 2:
        if rng.random() < 0.5:  # clinical abdomen kept as 5 mm axial slices, fine in-plane
            return np.array([rng.uniform(0.5, 0.8)] * 2 + [5.0]), 2
        sxy = rng.uniform(0.6, 1.6)
        return np.array([sxy, sxy, np.exp(rng.uniform(np.log(0.5), np.log(5.0)))]), 2
    spacing = np.full(3, rng.uniform(0.5, 1.0))  # sagittal/coronal reconstructions: fine within the slice
    spacing[thick_axis] = rng.uniform(2.0, 4.0)
    return spacing, thick_axis


def _blur_axis(image: sitk.Image, axis: int, sigma_mm: float) -> sitk.Image:
    arr = sitk.GetArrayFromImage(image)
    np_axis = 2 - axis
    out = ndimage.gaussian_filter1d(arr, sigma_mm / image.GetSpacing()[axis], axis=np_axis, mode="nearest")
    img = sitk.GetImageFromArray(out.astype(np.float32))
    img.CopyInformation(image)
    return img


def _fill_outside(a: np.ndarray, outside: np.ndarray, sp_zyx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Synthesise tissue where the view leaves the source: soft tissue inside an elliptical body, air outside.

    Soft tissue continues the real tissue's local mean near the border (blended over ~8 mm), then turns
    into a fat/muscle mixture; the body outline is an ellipse per slice, around the real data.
    """
    nz, ny, nx = a.shape
    inside = ~outside
    # Body ellipse in-plane, containing the real data's footprint with some margin.
    foot = inside.any(0)
    ys, xs = np.nonzero(foot)
    cy = ys.mean()
    ry_real = (ys.max() - ys.min()) / 2 + 1
    rx_real = (xs.max() - xs.min()) / 2 + 1
    ry = max(ry_real * 1.15, ny * rng.uniform(0.38, 0.48))
    rx = max(rx_real * 1.15, nx * rng.uniform(0.40, 0.49))
    cy_body = min(cy, ny - ry * 0.9) if ry * 2 < ny else ny / 2
    cx_body = nx / 2 + rng.uniform(-0.03, 0.03) * nx
    yy, xx = np.mgrid[:ny, :nx]
    ell = ((yy - cy_body) / ry) ** 2 + ((xx - cx_body) / rx) ** 2 <= 1.0
    body = np.broadcast_to(ell, a.shape) | inside
    # Mixture: fat (-100) with muscle (45) sheets, smooth texture, mild noise.
    tex = _smooth_noise(a.shape, rng, sigma_vox=max(2.0, 6.0 / float(sp_zyx[1])))
    soft = np.where(tex > rng.uniform(0.2, 0.8), 45.0, -100.0).astype(np.float32)
    soft = ndimage.gaussian_filter(soft, 1.0) + rng.normal(0, 10, a.shape).astype(np.float32)
    # Skin: a 2-3 mm rim at soft-tissue HU.
    dist_in = ndimage.distance_transform_edt(ell, sampling=sp_zyx[1:])
    skin = (dist_in > 0) & (dist_in < 3.0)
    soft[:, skin] = 40.0
    # Blend: near the real data use its nearest value (continuity), fading to the synthetic mixture.
    dist, (iz, iy, ix) = ndimage.distance_transform_edt(outside, sampling=sp_zyx, return_indices=True)
    nearest = a[iz, iy, ix]
    nearest = np.clip(nearest, -200, 120)  # bone does not continue; air inside the body neither
    w = np.clip(dist / 8.0, 0.0, 1.0)
    synth = (1 - w) * nearest + w * soft
    fill = np.where(body, synth, AIR_HU + rng.normal(0, 8, a.shape).astype(np.float32))
    return np.where(outside, fill, a)


# ------------------------------------------------------------------------------------------------------
# Views of a case on disk (what the training cache asks for)
# ------------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def load_source(ct_path: str, seg_path: str) -> tuple[sitk.Image, sitk.Image]:
    """A real case in canonical (LPS) orientation, its mask on the CT's grid; a bone-only CT gets its body.

    Cached: a worker process makes many views of the same case.
    """
    from ..inference import preprocess

    ct = preprocess.to_canonical(sitk.ReadImage(ct_path))
    seg = sitk.Resample(preprocess.to_canonical(sitk.ReadImage(seg_path)), ct, sitk.Transform(),
                        sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    if is_bone_only(ct):
        ct = fill_soft_tissue(ct, seg, np.random.default_rng(_seed_of(ct_path, -1)))
    return sitk.Cast(ct, sitk.sitkFloat32), seg


def _seed_of(path: str, view: int) -> list[int]:
    from pathlib import Path

    return [int(hashlib.sha1(Path(path).name.encode()).hexdigest()[:8], 16), view + 1]


def view_of(ct_path: str, seg_path: str, view: int) -> tuple[sitk.Image, sitk.Image]:
    """View ``view`` of a real case: 0 is the case itself (canonical, bone-only CTs given a body), 1.. are
    :func:`make_view` re-imagings, deterministic in (file name, view)."""
    ct, seg = load_source(ct_path, seg_path)
    if view == 0:
        return ct, seg
    v, lab, _ = make_view(ct, seg, np.random.default_rng(_seed_of(ct_path, view)))
    return v, lab
