"""Trabecular attenuation (HU) of each lumbar vertebral body: a measurement, not an agreement metric.

Radiologists read bone quality off routine CT by hand: an oval ROI in the anterior trabecular body of L1
on the axial slice at mid-height, avoiding the cortex and the basivertebral vein (Pickhardt et al. 2013).
This module measures that number from a segmentation, per vertebra, in two ways:

* **the 3D core** (``trabecular_hu``) - the vertebral body's trabecular core;
* **the classic single-slice ROI** (``trabecular_hu_single_slice``) - an ellipse in the anterior body on
  the mid-height axial section, so numbers compare with the literature; L1's value gives the screening
  flag (:data:`bone_screening.THRESHOLDS`).

**How the ROI is found** (all in millimetres, in the vertebra's own frame):

1. *Frame.* The superior axis S is the spine's direction at the vertebra: from the centroid of the
   vertebra below to the one above (one-sided at the ends; the patient's S axis when the vertebra has no
   neighbour, or when the neighbours point more than 45 degrees away from it). The anterior axis A is the
   patient's anterior direction made perpendicular to S. Tilted, oblique and permuted grids are handled
   through the image's direction matrix.
2. *Body vs. posterior arch.* The vertebra is projected along S onto the axial plane. Walking from its
   anterior edge backwards along the midline (a strip 3 mm either side of the body's lateral centre),
   the body is solid bone; the first row where the midline is empty is the spinal canal, whose front is
   the body's posterior wall. The body is the vertebra anterior of that wall, no wider than the vertebra
   is in the middle third of that depth (the transverse processes, large at L5, stay out), its largest
   connected piece. The pedicles, laminae and processes all lie behind the wall. A vertebra whose midline never
   opens (no canal in the segmentation) gets no value rather than a guess.
3. *Core.* The body eroded so that each voxel's *whole extent* (its slice thickness included) lies at
   least :data:`CORE_MARGIN_MM` inside the body's surface: away from the cortex, the endplates and the cut
   at the posterior wall. Thick slices are eroded by whole slices accordingly. The subchondral bone next
   to the endplates is often denser: the core also keeps :data:`ENDPLATE_MARGIN_MM` from the planes of
   the endplates at the body's centre (perpendicular to S).
4. *Basivertebral vein.* It enters the body through the posterior wall's centre and runs forward: the
   posterior-central column (the middle :data:`BVV_WIDTH_FRACTION` of the body's width in the posterior
   :data:`BVV_DEPTH_FRACTION` of its depth, at every height) is left out.
5. *Classic ROI.* On the mid-height section (one voxel thick, perpendicular to S, at the middle of the
   body's central height), an ellipse centred :data:`CLASSIC_CENTER_DEPTH` of the depth in front of the
   posterior wall, with semi-axes :data:`CLASSIC_SEMI_WIDTH` of the width and :data:`CLASSIC_SEMI_DEPTH`
   of the depth, inside the eroded body.

**No number rather than a wrong one.** A vertebra gets no value, and the reason, when its body is cut by
the field of view (it lies on the image's edge over more than :data:`MAX_EDGE_CONTACT_MM2`, or next to
voxels that were not numbers), when metal (screws, cement: a piece of voxels over 2000 HU of at least
30 mm3, or any voxel over 3000 HU; a few dense voxels of cortex or endplate are bone) lies in or within 3 mm
of the body,
when the slices are too thick for the core (more than :data:`MAX_SLICE_MM` apart, or the core spans fewer
than :data:`MIN_CORE_SLICES` of them), when the core holds too few voxels, or when the body cannot be told
from the arch.

Median, mean, SD (HU), voxel count and the ROI's volume are reported. Thresholds, sources and caveats are
kept in :mod:`bone_screening`, which also reads kVp and contrast from the DICOM header when there is one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from . import bone_screening
from .metal import METAL_CERTAIN_HU, METAL_HU, METAL_MIN_MM3, find_metal  # noqa: F401  (the rule's constants)
from ..constants import LABEL_NAMES
from ..inference.morphology import centre_of, ends_reached, label_boxes
from ..io.images import index_to_lps_matrix

# --------------------------------------------------------------------------------------------------
# The rule's constants (documented in the module docstring and README)
# --------------------------------------------------------------------------------------------------

CORE_MARGIN_MM = 3.0  # from cortex and endplates to the edge of every core voxel
ENDPLATE_MARGIN_MM = 3.0  # more from the endplates (at the body's centre): subchondral bone is denser
MIDLINE_HALF_WIDTH_MM = 3.0  # the strip along the body's midline that finds the canal
MIN_BODY_DEPTH_MM = 10.0  # solid midline needed before a gap counts as the canal
MAX_BODY_DEPTH_MM = 60.0  # deeper 'bodies' mean the gap found was not the canal (lumbar: 30-50 mm)
CANAL_MIN_GAP_MM = 3.0  # the canal: the midline empty for at least this depth
BVV_WIDTH_FRACTION = 0.4  # basivertebral vein region: the middle 40 % of the width ...
BVV_DEPTH_FRACTION = 0.35  # ... in the posterior 35 % of the depth
CLASSIC_CENTER_DEPTH = 0.6  # ellipse centre, as a fraction of the depth in front of the posterior wall
CLASSIC_SEMI_DEPTH = 0.22
CLASSIC_SEMI_WIDTH = 0.3
MAX_EDGE_CONTACT_MM2 = 10.0
METAL_SEARCH_MM = 3.0
MIN_CORE_ML = 1.0
MIN_CORE_VOXELS = 50
MIN_CORE_SLICES = 2
MAX_SLICE_MM = 5.0  # thicker slices: a label boundary uncertain by half a slice comes too close
MIN_CLASSIC_AREA_MM2 = 50.0
MIN_CLASSIC_VOXELS = 20
MAX_TILT_FROM_PATIENT_S_DEG = 45.0

CORE_ROI_DEFINITION = (
    f"3D core of the vertebral body (the vertebra in front of the spinal canal), every voxel's whole extent "
    f"at least {CORE_MARGIN_MM:g} mm inside the body's surface (cortex, endplates, posterior wall), "
    f"without the basivertebral vein region (middle {BVV_WIDTH_FRACTION:.0%} of the width in the posterior "
    f"{BVV_DEPTH_FRACTION:.0%} of the depth)")
CLASSIC_ROI_DEFINITION = (
    f"single-slice ellipse on the mid-height axial section (one voxel thick, perpendicular to the spine), "
    f"centred {CLASSIC_CENTER_DEPTH:.0%} of the body's depth in front of the posterior wall, semi-axes "
    f"{CLASSIC_SEMI_WIDTH:.0%} of the width and {CLASSIC_SEMI_DEPTH:.0%} of the depth, at least "
    f"{CORE_MARGIN_MM:g} mm inside the cortex")

# --------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------

@dataclass
class RoiResult:
    """Statistics of one ROI, or the reason there are none; ``mask`` is (z, y, x) on the crop ``region``."""

    definition: str
    reason: str | None = None
    median: float | None = None
    mean: float | None = None
    sd: float | None = None
    voxels: int = 0
    volume_ml: float | None = None
    area_mm2: float | None = None
    region: tuple | None = None
    mask: np.ndarray | None = None

    def to_dict(self) -> dict:
        out = {"median": self.median, "mean": self.mean, "sd": self.sd, "voxels": self.voxels,
               "volume_ml": self.volume_ml, "roi": self.definition, "reason": self.reason}
        if self.area_mm2 is not None or self.definition == CLASSIC_ROI_DEFINITION:
            out["area_mm2"] = self.area_mm2
        return out

    def full_mask(self, shape) -> np.ndarray:
        out = np.zeros(shape, bool)
        if self.mask is not None and self.region is not None:
            out[self.region] = self.mask
        return out


@dataclass
class VertebraTrabecular:
    name: str
    core: RoiResult
    single_slice: RoiResult
    frame: dict = field(default_factory=dict)  # axes and body geometry, for figures and debugging


def _roi_stats(values: np.ndarray, voxel_ml: float) -> dict:
    values = values.astype(np.float64)
    return {"median": float(np.median(values)), "mean": float(values.mean()),
            "sd": float(values.std(ddof=1)) if values.size > 1 else 0.0, "voxels": int(values.size),
            "volume_ml": values.size * voxel_ml}


def roi_statistics(ct_hu: np.ndarray, mask: np.ndarray, image: sitk.Image, definition: str,
                   min_voxels: int = MIN_CORE_VOXELS, min_ml: float = MIN_CORE_ML) -> RoiResult:
    """Statistics in a given ROI mask (e.g. one a reader moved or painted), with the checks that apply to
    any ROI: metal in it, too few voxels."""
    mask = np.asarray(mask, bool)
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    values = np.asarray(ct_hu)[mask]
    metal = find_metal(np.asarray(ct_hu), mask, np.asarray(image.GetSpacing(), float)[::-1])
    if metal:
        return RoiResult(definition, reason=f"metal in the ROI: {metal}", voxels=int(values.size))
    if values.size < min_voxels or values.size * voxel_ml < min_ml:
        return RoiResult(definition, reason=f"too few ROI voxels: {values.size} ({values.size * voxel_ml:.2f} mL); "
                                            f"at least {min_voxels} and {min_ml:g} mL are needed",
                         voxels=int(values.size))
    return RoiResult(definition, **_roi_stats(values, voxel_ml))


def _spine_axes(centroids: dict[int, np.ndarray], label: int) -> tuple[np.ndarray, str]:
    """Unit superior axis (LPS) at vertebra ``label`` from its neighbours' centroids, and how it was found."""
    patient_s = np.array([0.0, 0.0, 1.0])
    above, below = centroids.get(label - 1), centroids.get(label + 1)
    here = centroids[label]
    if above is not None and below is not None:
        v, how = above - below, "neighbours above and below"
    elif above is not None:
        v, how = above - here, "the neighbour above"
    elif below is not None:
        v, how = here - below, "the neighbour below"
    else:
        return patient_s, "patient axis (no neighbour)"
    norm = np.linalg.norm(v)
    if norm < 1e-6:
        return patient_s, "patient axis (neighbours coincide)"
    v = v / norm
    if v[2] < 0:
        v = -v
    if math.degrees(math.acos(min(1.0, float(v @ patient_s)))) > MAX_TILT_FROM_PATIENT_S_DEG:
        return patient_s, "patient axis (neighbours implausibly oblique)"
    return v, how


def _frame_axes(s_axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    anterior = np.array([0.0, -1.0, 0.0])  # LPS: +y is posterior
    a = anterior - (anterior @ s_axis) * s_axis
    a /= np.linalg.norm(a)
    lateral = np.cross(a, s_axis)
    return a, lateral


def _local_coordinates(image: sitk.Image, region, axes) -> list[np.ndarray]:
    """For each unit axis (LPS), the coordinate (mm) of every voxel of the crop ``region`` (z, y, x)."""
    matrix = index_to_lps_matrix(image)
    index_to_lps, origin = matrix[:3, :3], matrix[:3, 3]
    k0, j0, i0 = (s.start for s in region)
    shape = tuple(s.stop - s.start for s in region)
    kk = np.arange(shape[0], dtype=np.float32)[:, None, None]
    jj = np.arange(shape[1], dtype=np.float32)[None, :, None]
    ii = np.arange(shape[2], dtype=np.float32)[None, None, :]
    out = []
    for axis in axes:
        per_index = axis @ index_to_lps  # coordinate change per unit step of i, j, k
        base = float(axis @ (origin + index_to_lps @ np.array([i0, j0, k0], float)))
        out.append(np.float32(base) + np.float32(per_index[0]) * ii + np.float32(per_index[1]) * jj
                   + np.float32(per_index[2]) * kk)
    return out


def _voxel_extent_along(image: sitk.Image, axis: np.ndarray) -> float:
    index_to_lps = index_to_lps_matrix(image)[:3, :3]
    return float(np.abs(axis @ index_to_lps).sum())


def _posterior_wall(l_coord, a_coord, mask, image, lateral, anterior):
    """(a of the body's posterior wall, lateral midline, a of the anterior edge) from the projection
    along S, or None when the midline never opens (no canal)."""
    l_vals, a_vals = l_coord[mask], a_coord[mask]
    ext_l = max(_voxel_extent_along(image, lateral), 1.0)
    ext_a = max(_voxel_extent_along(image, anterior), 1.0)
    bin_mm = 1.0
    l0, a0 = float(l_vals.min()) - ext_l, float(a_vals.min()) - ext_a
    li = np.floor((l_vals - l0) / bin_mm).astype(int)
    ai = np.floor((a_vals - a0) / bin_mm).astype(int)
    occ = np.zeros((ai.max() + 3 + int(ext_a), li.max() + 3 + int(ext_l)), bool)
    occ[ai, li] = True
    # Each voxel covers its footprint: close the gaps a coarse axis leaves between voxel centres.
    half = (max(int(round(ext_a / 2 / bin_mm)), 0), max(int(round(ext_l / 2 / bin_mm)), 0))
    if any(half):
        occ = ndimage.binary_dilation(occ, np.ones((2 * half[0] + 1, 2 * half[1] + 1), bool))
    rows = np.flatnonzero(occ.any(axis=1))
    front = int(rows.max())  # most anterior occupied row
    front_rows = occ[max(front - int(10 / bin_mm), 0): front + 1]
    cols = np.flatnonzero(front_rows.any(axis=0))
    mid = 0.5 * (cols.min() + cols.max())  # lateral centre of the body's front
    strip = slice(max(int(round(mid - MIDLINE_HALF_WIDTH_MM / bin_mm)), 0),
                  int(round(mid + MIDLINE_HALF_WIDTH_MM / bin_mm)) + 1)
    filled = occ[:, strip].mean(axis=1) >= 0.5
    # From the front backwards: skip the sparse anterior tip, count solid body rows, and take the first
    # gap that stays open for CANAL_MIN_GAP_MM (a one-row gap is a sampling artefact, not the canal).
    gap_rows = max(int(round(CANAL_MIN_GAP_MM / bin_mm)), 1)
    start = next((r for r in range(front, -1, -1) if filled[r]), None)
    if start is None or front - start > MIN_BODY_DEPTH_MM / bin_mm:
        return None
    for row in range(start, gap_rows - 2, -1):
        if filled[row]:
            continue
        if (start - row) * bin_mm > MAX_BODY_DEPTH_MM:
            return None
        if (start - row) * bin_mm >= MIN_BODY_DEPTH_MM and not filled[max(row - gap_rows + 1, 0): row + 1].any():
            wall = a0 + (row + 1) * bin_mm
            return wall, l0 + (mid + 0.5) * bin_mm, a0 + (front + 1) * bin_mm
        if (start - row) * bin_mm < MIN_BODY_DEPTH_MM and not filled[max(row - gap_rows + 1, 0): row + 1].any():
            return None  # the midline opens before a body's depth: no body in front of a canal
    return None


def _edge_contact_mm2(body, region, shape, spacing_zyx) -> dict[str, float]:
    """{image face: area (mm2)} where ``body`` lies on the grid's edge over more than
    :data:`MAX_EDGE_CONTACT_MM2` (a graze of a few voxels cuts no measurable bone)."""
    out = {}
    for ax in range(3):
        face_area = float(np.prod(np.delete(spacing_zyx, ax)))
        for end, at_edge in ((0, region[ax].start == 0), (-1, region[ax].stop == shape[ax])):
            if at_edge:
                area = float(np.count_nonzero(np.take(body, end, axis=ax))) * face_area
                if area > MAX_EDGE_CONTACT_MM2:
                    out[f"{'first' if end == 0 else 'last'} {'kji'[ax]} slice"] = area
    return out


def _erode_by_extent(body: np.ndarray, spacing_zyx, margin_mm: float) -> np.ndarray:
    """Voxels whose whole extent lies ``margin_mm`` inside ``body``: no outside voxel within the ellipsoid
    of semi-axes margin + spacing per axis (the surface lies half a voxel beyond the last inside centre)."""
    padded = np.pad(body, 1)
    scale = [float(s) / (margin_mm + float(s)) for s in spacing_zyx]
    dist = ndimage.distance_transform_edt(padded, sampling=scale)
    return (dist >= 1.0)[1:-1, 1:-1, 1:-1] & body


def _largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(sizes.argmax())


def _no_value(name: str, reason: str, frame: dict | None = None) -> VertebraTrabecular:
    return VertebraTrabecular(name, RoiResult(CORE_ROI_DEFINITION, reason=reason),
                              RoiResult(CLASSIC_ROI_DEFINITION, reason=reason), frame or {})


def measure(labels: np.ndarray, ct_hu: np.ndarray, image: sitk.Image,
            outside_mask: np.ndarray | None = None) -> dict[str, VertebraTrabecular]:
    """Trabecular ROIs and their HU for every vertebra L1-L5 in ``labels`` ((z, y, x) 0..5 on ``image``'s
    grid). ``outside_mask``: voxels that were no numbers (NaN), treated as outside the field of view."""
    labels = np.asarray(labels)
    ct_hu = np.asarray(ct_hu)
    if not np.issubdtype(labels.dtype, np.integer):
        labels = labels.astype(np.int32)
    boxes = {k: box for k, box in sorted(label_boxes(labels).items()) if k in LABEL_NAMES}
    centroids = {k: np.asarray(image.TransformContinuousIndexToPhysicalPoint(
        [float(v) for v in centre_of(labels, box, k)[::-1]])) for k, box in boxes.items()}
    return {LABEL_NAMES[k]: _measure_one(labels, ct_hu, image, k, box, centroids, outside_mask)
            for k, box in boxes.items()}


def _measure_one(labels, ct_hu, image, label, bbox, centroids, outside_mask) -> VertebraTrabecular:
    name = LABEL_NAMES[label]
    spacing_zyx = np.asarray(image.GetSpacing(), float)[::-1]
    margin = np.ceil((CORE_MARGIN_MM + METAL_SEARCH_MM) / spacing_zyx).astype(int) + 1
    region = tuple(slice(max(s.start - m, 0), min(s.stop + m, n)) for s, m, n in zip(bbox, margin, labels.shape))
    vertebra = labels[region] == label
    s_axis, how = _spine_axes(centroids, label)
    a_axis, l_axis = _frame_axes(s_axis)
    l_coord, a_coord, s_coord = _local_coordinates(image, region, (l_axis, a_axis, s_axis))
    frame = {"superior_lps": s_axis.tolist(), "anterior_lps": a_axis.tolist(), "superior_from": how}
    touches_edge = bool(ends_reached(bbox, labels.shape))

    wall = _posterior_wall(l_coord, a_coord, vertebra, image, l_axis, a_axis)
    if wall is None:
        if touches_edge:
            return _no_value(name, f"{name} is cut by the field of view (it touches the image's edge)", frame)
        return _no_value(name, f"{name}'s body could not be told from its posterior arch: no spinal canal "
                               f"behind it in the segmentation", frame)
    a_wall, l_mid, a_front = wall
    depth = a_front - a_wall
    # The width where nothing but the body reaches: its middle third in depth (the transverse processes,
    # large and forward-reaching at L5, stay behind it); the body is cut laterally there too.
    in_front = vertebra & (a_coord >= a_wall)
    middle = in_front & (a_coord >= a_wall + depth / 3) & (a_coord <= a_wall + 2 * depth / 3)
    l_middle = l_coord[middle] if middle.any() else l_coord[in_front]
    left, right = float(np.percentile(l_middle, 1)), float(np.percentile(l_middle, 99))
    width, l_mid = right - left, 0.5 * (left + right)
    body = _largest_component(in_front & (np.abs(l_coord - l_mid) <= width / 2 + 1.0))
    frame.update({"posterior_wall_mm": a_wall, "anterior_edge_mm": a_front, "midline_mm": l_mid,
                  "depth_mm": depth, "width_mm": width})

    # The body cut by the field of view: lying on the grid's edge (more than a graze), or next to NaN voxels.
    contact = _edge_contact_mm2(body, region, labels.shape, spacing_zyx)
    if contact:
        where = ", ".join(f"{area:.0f} mm2 on the {side}" for side, area in contact.items())
        return _no_value(name, f"{name}'s vertebral body is cut by the field of view (it lies on the image's edge: "
                               f"{where})", frame)
    if outside_mask is not None and np.any(outside_mask[region] & ndimage.binary_dilation(body, iterations=2)):
        return _no_value(name, f"{name}'s vertebral body is cut by the field of view (voxels that were not "
                               f"numbers (NaN) border it)", frame)

    # Metal in or next to the body: by size and value, not by one dense voxel (see find_metal).
    near_body = ndimage.distance_transform_edt(~body, sampling=spacing_zyx) <= METAL_SEARCH_MM
    metal = find_metal(ct_hu[region], near_body, spacing_zyx)
    if metal:
        return _no_value(name, f"metal in {name}'s body: {metal}; screws or cement make its HU meaningless", frame)

    thick_axis = int(np.argmax(spacing_zyx))
    if spacing_zyx[thick_axis] > MAX_SLICE_MM + 1e-3:
        return _no_value(name, f"slices too thick for the core: {spacing_zyx[thick_axis]:g} mm apart along voxel "
                               f"axis {'kji'[thick_axis]} (at most {MAX_SLICE_MM:g} mm: the body's boundary, "
                               f"uncertain by half a slice, would bring cortex and endplates into the core)", frame)
    eroded = _erode_by_extent(body, spacing_zyx, CORE_MARGIN_MM)
    bvv = (np.abs(l_coord - l_mid) <= 0.5 * BVV_WIDTH_FRACTION * width) & \
          (a_coord < a_wall + BVV_DEPTH_FRACTION * depth)
    s_lo, s_hi = _central_height(body, l_coord, a_coord, s_coord, l_mid, a_wall, depth, width)
    frame.update({"inferior_endplate_mm": s_lo, "superior_endplate_mm": s_hi})
    subchondral = (s_coord < s_lo + ENDPLATE_MARGIN_MM) | (s_coord > s_hi - ENDPLATE_MARGIN_MM)
    core = eroded & ~bvv & ~subchondral
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    core_slices = int(np.count_nonzero(core.any(axis=tuple(a for a in range(3) if a != thick_axis))))
    n_core = int(core.sum())
    if spacing_zyx[thick_axis] > 2.0 and core_slices < MIN_CORE_SLICES and n_core:
        reason = (f"slices too thick for the core: {name}'s core spans {core_slices} slice(s) of "
                  f"{spacing_zyx[thick_axis]:g} mm (voxel axis {'kji'[thick_axis]}); at least {MIN_CORE_SLICES} "
                  f"are needed to keep {CORE_MARGIN_MM:g} mm from the endplates")
        return _no_value(name, reason, frame)
    if n_core < MIN_CORE_VOXELS or n_core * voxel_ml < MIN_CORE_ML:
        thick = spacing_zyx[thick_axis]
        hint = f" ({thick:g} mm slices: too thick for the core)" if thick > 2.0 and n_core == 0 else ""
        return _no_value(name, f"too few core voxels in {name}: {n_core} ({n_core * voxel_ml:.2f} mL) after "
                               f"eroding {CORE_MARGIN_MM:g} mm; at least {MIN_CORE_VOXELS} voxels and "
                               f"{MIN_CORE_ML:g} mL are needed{hint}", frame)
    values = ct_hu[region][core]
    core_result = RoiResult(CORE_ROI_DEFINITION, **_roi_stats(values, voxel_ml), region=region, mask=core)
    return VertebraTrabecular(name, core_result,
                              _classic(ct_hu, region, body, eroded, l_coord, a_coord, s_coord, image, s_axis,
                                       l_mid, a_wall, depth, width, voxel_ml, frame), frame)


def _central_height(body, l_coord, a_coord, s_coord, l_mid, a_wall, depth, width) -> tuple[float, float]:
    """The body's lowest and highest S (mm) in its central column (middle half of the width, middle 40 % of
    the depth): the endplates there, where concave endplates bring them closest together."""
    central = body & (np.abs(l_coord - l_mid) <= 0.25 * width) & \
        (a_coord >= a_wall + 0.3 * depth) & (a_coord <= a_wall + 0.7 * depth)
    s_vals = s_coord[central] if central.any() else s_coord[body]
    return float(s_vals.min()), float(s_vals.max())


def _classic(ct_hu, region, body, eroded, l_coord, a_coord, s_coord, image, s_axis, l_mid, a_wall, depth, width,
             voxel_ml, frame) -> RoiResult:
    s_mid = 0.5 * (frame["inferior_endplate_mm"] + frame["superior_endplate_mm"])
    thickness = _voxel_extent_along(image, s_axis)
    slab = (s_coord >= s_mid - thickness / 2) & (s_coord < s_mid + thickness / 2)
    a_c = a_wall + CLASSIC_CENTER_DEPTH * depth
    ellipse = ((l_coord - l_mid) / (CLASSIC_SEMI_WIDTH * width)) ** 2 + \
              ((a_coord - a_c) / (CLASSIC_SEMI_DEPTH * depth)) ** 2 <= 1.0
    roi = eroded & slab & ellipse
    frame["mid_height_mm"] = s_mid
    n = int(roi.sum())
    area = n * voxel_ml * 1000.0 / thickness
    if n < MIN_CLASSIC_VOXELS or area < MIN_CLASSIC_AREA_MM2:
        return RoiResult(CLASSIC_ROI_DEFINITION, reason=f"too few voxels in the mid-height ellipse: {n} "
                                                         f"({area:.0f} mm2); at least {MIN_CLASSIC_VOXELS} and "
                                                         f"{MIN_CLASSIC_AREA_MM2:g} mm2 are needed", voxels=n)
    return RoiResult(CLASSIC_ROI_DEFINITION, **_roi_stats(ct_hu[region][roi], voxel_ml), area_mm2=area,
                     region=region, mask=roi)


# --------------------------------------------------------------------------------------------------
# Into the report
# --------------------------------------------------------------------------------------------------

def add_to_measurements(measurements: dict[str, dict], labels, ct_hu, image: sitk.Image, series=None,
                        outside_mask=None) -> "BoneDensity":
    """Add ``trabecular_hu`` and ``trabecular_hu_single_slice`` to each vertebra's entry of
    ``metrics.measure``'s result; returns a :class:`BoneDensity`: the study-level block for report.json
    (screening flag, thresholds, sources, caveats, acquisition) and the ROIs as segments.
    ``series``: the :class:`io.DicomSeries` read, if any (its header gives kVp and contrast)."""
    results = measure(labels, ct_hu, image, outside_mask)
    for name, result in results.items():
        if name in measurements:
            measurements[name]["trabecular_hu"] = result.core.to_dict()
            measurements[name]["trabecular_hu_single_slice"] = result.single_slice.to_dict()
    acquisition = bone_screening.acquisition_from_dicom(series.files if series is not None else None)
    l1 = results.get(bone_screening.SCREENING_VERTEBRA)
    block = bone_screening.screening(None if l1 is None else l1.single_slice, acquisition, CORE_ROI_DEFINITION,
                                     CLASSIC_ROI_DEFINITION)
    return BoneDensity(block, roi_segments(results))


@dataclass
class BoneDensity:
    report: dict  # report.json's "bone_density" block
    segments: list  # the measured ROIs (:class:`RoiSegment`), for the DICOM SEG


# --------------------------------------------------------------------------------------------------
# ROIs as segments (Slicer, DICOM SEG)
# --------------------------------------------------------------------------------------------------

CORE_SEGMENT_SUFFIX = " trabecular ROI"
SINGLE_SLICE_SEGMENT_SUFFIX = " single-slice ROI"


@dataclass
class RoiSegment:
    name: str  # "L1 trabecular ROI"
    label: int  # the vertebra, 1..5
    kind: str  # "core" or "single_slice"
    region: tuple  # (z, y, x) slices of the crop
    mask: np.ndarray  # bool, the crop's shape


def roi_segments(results: dict[str, VertebraTrabecular]) -> list[RoiSegment]:
    """The ROIs that were measured, as segments: every vertebra's core, and the screening vertebra's (L1)
    single-slice ellipse, the one the thresholds apply to."""
    by_name = {v: k for k, v in LABEL_NAMES.items()}
    out = []
    for name, result in results.items():
        if result.core.mask is not None:
            out.append(RoiSegment(name + CORE_SEGMENT_SUFFIX, by_name[name], "core", result.core.region,
                                  result.core.mask))
        if name == bone_screening.SCREENING_VERTEBRA and result.single_slice.mask is not None:
            out.append(RoiSegment(name + SINGLE_SLICE_SEGMENT_SUFFIX, by_name[name], "single_slice",
                                  result.single_slice.region, result.single_slice.mask))
    return out


def roi_segment_kind(segment_name: str) -> tuple[str, str] | None:
    """("L1", "core") for "L1 trabecular ROI", ("L1", "single_slice") for "L1 single-slice ROI", else None."""
    for suffix, kind in ((CORE_SEGMENT_SUFFIX, "core"), (SINGLE_SLICE_SEGMENT_SUFFIX, "single_slice")):
        if segment_name.endswith(suffix) and segment_name[: -len(suffix)] in LABEL_NAMES.values():
            return segment_name[: -len(suffix)], kind
    return None
