"""Anchors of the level count read from the CT itself: ribs on the vertebra above the lumbar column, the sacrum
and pelvis below it. Nothing here is learned.

The XUNet's ``thoracic`` and ``caudal`` context classes were meant to anchor the count (:mod:`naming`), but the
bundled XUNet never learned them (their probabilities never exceed 0.05), so every scan went unanchored and a
scan with T12 or the sacrum plainly in view could still have every name shifted. These detectors look at the
bone (HU) at fixed places along the column the pipeline found:

* **ribs** (:func:`detect_ribs`): one inter-vertebral gap above the highest lumbar piece, bone connected to
  that vertebra that runs far out laterally (beyond any lumbar transverse process): a rib-bearing vertebra
  (T12; counting down, the next piece is L1). The highest lumbar piece must carry nothing of the kind itself:
  if it does, it may be T12 or transitional, and no ribs anchor fires (a warning says so).
* **sacrum** (:func:`detect_sacrum`): about one gap below the lowest lumbar piece, bone that runs across from
  the column's axis far out on both sides with no free stretch wider than a sacroiliac joint (the sacrum's
  alae abutting the iliac wings). At a lumbar level the transverse processes end 40-50 mm from the axis and
  soft tissue (psoas, quadratus) separates them from any iliac crest, so a lumbar level never passes.

The sacrum check alone cannot tell the sacrum from an L5 set deep between the iliac crests: on the real
s0328 the iliac wings abut L5 and the pelvis fills every axial slice from the L4/L5 disc down, so with L5
missed it "sees the sacrum" below L4. :mod:`naming` therefore never takes it alone: on the XUNet's path only to
confirm the ribs' count (both anchors agreeing), on the finder's only with the finder's own caudal-looking peak
right below the vertebra counted L5.

Both fire only on clear evidence; a false anchor shifts every name (the worst error this tool can make), a
missed one only leaves the names unanchored and warned of. Pure numpy/scipy on (z, y, x) arrays in LPS
orientation (a larger z index is more superior, a larger y is posterior), as :mod:`pipeline` holds them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

# Bone after a small smoothing (SMOOTH_MM): cortical bone is 500-1500 HU, cancellous 100-300; a 5 mm slice
# or a 3 mm re-imaging blurs a 3-4 mm rib down to a few hundred HU, still over BONE_HU. Soft tissue, muscle
# and blood stay under 100 HU (contrast-filled vessels reach 200-400 but never run across the column's level
# out to a rib's reach while connected to the vertebra).
BONE_HU = 180.0
SMOOTH_MM = 1.0
# The typical gap between neighbouring vertebral centres (instances.py's gap model: 23-36 mm, median 30);
# a column's own median gap is clipped to this range before it places the neighbour.
GAP_RANGE_MM = (26.0, 37.0)
GAP_DEFAULT_MM = 30.0
# The slab searched around a vertebra's centre: this share of a gap above and below (its body and arch; a
# rib runs down from its neck, and s0328's T12 rib reaches 55-58 mm within half a gap, 59-64 within 0.65).
SLAB_SHARE = 0.5
# Bone this close (in-plane) to the predicted centre of the vertebra is that vertebra (a body is 35-50 mm
# wide, its centre predicted a few mm off).
SEED_MM = 18.0
# A vertebra must be there: this much bone near its predicted centre (a sliver at the image's edge or an
# empty disc level is no vertebra).
MIN_SEED_ML = 2.0
# Lumbar transverse processes end 30-50 mm from the column's axis (L3's, the longest, 80-100 mm tip to tip;
# s0328: L1-L4 reach 38-47 mm); a rib connected to its vertebra reaches further (s0328: T12's short rib 59-64
# mm, T11's 80-88, T9-T10's beyond 110). RIB_REACH_MM fires the anchor above; the highest lumbar piece
# "carries a rib" already from CARRIES_RIB_MM on either side (a lower bar: doubt stops the anchor). The anchor
# needs RIB_REACH_MM on BOTH sides: ribs are paired, while a lower rib running down past a lumbar transverse
# process can touch it on one side (phantom 100200: T12's rib touches L1 on the left, 110 mm, right 29 mm).
RIB_REACH_MM = 54.0
CARRIES_RIB_MM = 52.0
# A rib is a bar, an iliac wing a plate. Turned head-to-feet, the pelvis lies right above the column and its wings
# reach out like ribs (phantoms 5007 and 7008 upside down were "anchored by the ribs", 111 mm on both sides). The
# bone connected to the vertebra above beyond RIB_REACH_MM, both sides together, averages (:func:`far_bone_area`, per
# axial slice that holds any; `tools/check_ct_anchors.py --upside-down` at true centres on phantoms 5000-5014 and
# 6000-6014 as issue 24 draws them) 221-991 square mm at the T12s upright, but 1,749-2,764 at the sacrum's level
# turned upside down (s0328: 1,657; one phantom cut by its field of view 436). From RIB_PLATE_MM2 no anchor fires.
RIB_PLATE_MM2 = 1300.0
# A column whose vertebrae carry ribs on both sides - at least THORACIC_MIN_RIBS of those found and of the
# THORACIC_ABOVE vertebrae right above them, and none clearly without (under CARRIES_RIB_MM on both sides) -
# is thoracic, with no lumbar vertebra in it: on the thoracic-only phantoms 7000-7009 every vertebra reaches
# 62-112 mm on both sides, while no lumbar vertebra of the real CTs in ../shared reaches 54 mm on both sides
# except an L5 set between the iliac crests (s0328: 110 mm; its L4 49 mm), which alone never makes three.
# Three above: on phantom 7007 the finder's path reported one "L1", its T12 cut by the image's lower edge
# (110 mm out on one side, 22 on the other), under rib-bearing vertebrae.
THORACIC_MIN_RIBS = 3
THORACIC_ABOVE = 3
# A vertebra whose centre lies this close to the image's first or last slice is cut by the field of view (half a
# vertebra's height): its ribs may be out of view, so it says nothing about ribs (7007's T12 at the lower edge
# read 25 mm on both sides)
EDGE_MM = 12.0
# Below the last rib-bearing vertebra a spine holds five lumbar vertebrae, six with a transitional one: a count
# that reaches further has taken other vertebrae for lumbar ones.
MOST_BELOW_RIBS = 6
# How far out laterally the detectors look (a rib or iliac wing beyond is not needed).
LATERAL_MM = 110.0
AP_MM = (60.0, 80.0)  # anterior, posterior of the centre: a vertebra's body, arch and the ribs' necks
# The sacrum: bone across the axial slice out to SACRUM_REACH_MM on both sides of the axis, within a band of
# SACRUM_BAND_MM (anterior-posterior) around the column, with no free stretch (no bone in the band) longer
# than SACRUM_FREE_MM - a sacroiliac joint (2-4 mm, blurred) is shorter; the soft tissue between a lumbar
# transverse process and an iliac crest is longer. In at least SACRUM_MIN_MM of slices (two at least).
SACRUM_REACH_MM = 80.0
SACRUM_BAND_MM = 45.0
SACRUM_FREE_MM = 9.0
SACRUM_MIN_MM = 6.0
# Where the sacrum is looked for below the lowest lumbar centre: from LOW_SHARE to HIGH_SHARE of a gap below
# it. Its upper edge (S1's top) lies 15-25 mm below L5's centre; one more vertebra down (L5 below a missed L5
# ... L4 as lowest piece) starts a whole gap lower, beyond the window.
SACRUM_WINDOW = (0.55, 1.35)


@dataclass
class CtAnchors:
    """What the CT shows around the column: ``ribs`` (a rib-bearing vertebra right above the top piece),
    ``sacrum`` (the sacrum right below the lowest piece), and in words what was seen (``notes``) or what
    stopped an anchor (``warnings``)."""
    ribs: bool = False
    sacrum: bool = False
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    measures: dict = field(default_factory=dict)  # the numbers behind each decision (for tests and tuning)


def _median_gap(centres_mm: list[np.ndarray]) -> float:
    gaps = [float(np.linalg.norm(a - b)) for a, b in zip(centres_mm, centres_mm[1:])]
    gap = float(np.median(gaps)) if gaps else GAP_DEFAULT_MM
    return float(np.clip(gap, *GAP_RANGE_MM))


def _direction(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Unit vector from ``b`` to ``a`` (the column's local direction), superior (+z) when nearly vertical."""
    d = np.asarray(a, float) - np.asarray(b, float)
    n = float(np.linalg.norm(d))
    if n < 1e-6:
        return np.array([1.0, 0.0, 0.0])
    d = d / n
    return d if d[0] >= 0 else -d


def _box(hu_shape, spacing, centre_mm, half_mm) -> tuple:
    lo = np.floor((np.asarray(centre_mm) - np.asarray(half_mm)) / spacing).astype(int)
    hi = np.ceil((np.asarray(centre_mm) + np.asarray(half_mm)) / spacing).astype(int) + 1
    return tuple(slice(max(0, a), min(n, b)) for a, b, n in zip(lo, hi, hu_shape))


def _bone(hu: np.ndarray, box: tuple, spacing) -> np.ndarray:
    sigma = SMOOTH_MM / np.asarray(spacing, float)
    return ndimage.gaussian_filter(np.asarray(hu[box], np.float32), sigma, mode="nearest") > BONE_HU


def _connected_bone(hu: np.ndarray, spacing, centre_mm, half_height_mm: float):
    """(bone connected to the vertebra at ``centre_mm`` within the axial slab of ``half_height_mm`` around it - a
    (z, y, x) mask, or None when no vertebra is there (:data:`MIN_SEED_ML`) - each column's x offset from the centre
    in mm (1, x), bone near the centre in mL)."""
    spacing = np.asarray(spacing, float)
    box = _box(hu.shape, spacing, centre_mm, (half_height_mm, max(AP_MM), LATERAL_MM))
    if any(s.stop - s.start < 2 for s in box[1:]) or box[0].stop <= box[0].start:
        return None, None, 0.0
    bone = _bone(hu, box, spacing)
    z, y, x = (np.arange(s.start, s.stop) * sp for s, sp in zip(box, spacing))
    dy, dx = y[:, None] - centre_mm[1], x[None, :] - centre_mm[2]
    inside = (dy >= -AP_MM[0]) & (dy <= AP_MM[1])
    bone &= inside[None]
    near = (np.hypot(dy, dx) <= SEED_MM)[None] & (np.abs(z - centre_mm[0]) <= half_height_mm / 2)[:, None, None]
    seed = bone & near
    seed_ml = float(seed.sum()) * float(np.prod(spacing)) / 1000.0
    if seed_ml < MIN_SEED_ML:
        return None, dx, seed_ml
    pieces, _ = ndimage.label(bone, np.ones((3, 3, 3), bool))
    ids = np.unique(pieces[seed])
    return np.isin(pieces, ids[ids > 0]), dx, seed_ml


def _reach(connected, dx, seed_ml: float) -> tuple[float, float, float]:
    """:func:`lateral_reach`'s answer from :func:`_connected_bone`'s."""
    if connected is None:
        return 0.0, 0.0, seed_ml
    cols = np.flatnonzero(connected.any(axis=(0, 1)))
    if cols.size == 0:
        return 0.0, 0.0, seed_ml
    # LPS: a larger x is the patient's left
    return float(max(0.0, -dx[0, cols].min())), float(max(0.0, dx[0, cols].max())), seed_ml


def lateral_reach(hu: np.ndarray, spacing, centre_mm, half_height_mm: float) -> tuple[float, float, float]:
    """(reach to the right, to the left, bone near the centre in mL): how far (mm, in x from the centre) the
    bone connected to the vertebra at ``centre_mm`` (z, y, x in the array's mm) runs out on each side within
    the axial slab of ``half_height_mm`` around it. Zeros when no vertebra is there (:data:`MIN_SEED_ML`)."""
    return _reach(*_connected_bone(hu, spacing, centre_mm, half_height_mm))


def far_bone_area(connected, dx, spacing) -> float:
    """Of :func:`_connected_bone`'s bone (``connected``, ``dx``), what lies beyond :data:`RIB_REACH_MM` to either side,
    in square mm per axial slice (both sides together, averaged over the slab's slices that hold any): a rib's
    cross-section or an iliac wing's (:data:`RIB_PLATE_MM2`). 0 when there is none."""
    if connected is None:
        return 0.0
    far = connected & (np.abs(dx) > RIB_REACH_MM)[None]
    per_slice = far.sum(axis=(1, 2))
    held = per_slice > 0
    if not held.any():
        return 0.0
    return float(per_slice[held].mean()) * float(np.prod(np.asarray(spacing, float)[1:]))


def detect_ribs(hu: np.ndarray, spacing, centres_mm: list[np.ndarray], top_name: str = "the highest piece") -> CtAnchors:
    """Whether a rib-bearing vertebra lies right above the column whose vertebral centres (top first, z y x mm
    in ``hu``'s frame) are ``centres_mm``; see the module docstring."""
    out = CtAnchors()
    gap = _median_gap(centres_mm)
    top = np.asarray(centres_mm[0], float)
    d = _direction(centres_mm[0], centres_mm[1]) if len(centres_mm) > 1 else np.array([1.0, 0.0, 0.0])
    half = SLAB_SHARE * gap
    own = lateral_reach(hu, spacing, top, half)
    bone_above = _connected_bone(hu, spacing, top + gap * d, half)  # read once: its reach, then its breadth
    above = _reach(*bone_above)
    out.measures.update(top_reach_mm=own[:2], above_reach_mm=above[:2], above_seed_ml=above[2])
    reaches_out = min(above[:2]) >= RIB_REACH_MM
    if reaches_out:
        plate = far_bone_area(*bone_above[:2], spacing)
        out.measures.update(above_far_area_mm2=plate)
    if max(own[:2]) >= CARRIES_RIB_MM:
        out.warnings.append(f"WARNING: bone connected to the vertebra named {top_name} runs {max(own[:2]):.0f} mm "
                            f"out to one side (further than a lumbar transverse process): it may carry a rib (a "
                            f"T12, or a transitional vertebra), so the ribs do not anchor the count. Check the levels.")
        return out
    if reaches_out:
        if plate >= RIB_PLATE_MM2:
            out.warnings.append(f"WARNING: the bone that runs out on both sides of the vertebra above {top_name} is as "
                                f"broad as an iliac wing ({plate:.0f} square mm an axial slice beyond "
                                f"{RIB_REACH_MM:g} mm; a pair of ribs is under {RIB_PLATE_MM2:.0f}), not like ribs, so "
                                f"the ribs do not anchor the count. Is the image upside down? Check the levels.")
            return out
        side = "both sides"
        out.ribs = True
        out.notes.append(f"Ribs on the vertebra above L1: the CT shows bone connected to the vertebra above "
                         f"{top_name} running {max(above[:2]):.0f} mm out on {side} (a lumbar transverse process "
                         f"ends within {CARRIES_RIB_MM:g} mm), so that vertebra is taken as T12 and the count runs "
                         f"down from it.")
    return out


def cut_by_edge(hu: np.ndarray, spacing, centre_mm) -> bool:
    """Whether the vertebra centred at ``centre_mm`` (z, y, x mm in ``hu``'s frame) is cut by the image's first or
    last slice (:data:`EDGE_MM`)."""
    height = (hu.shape[0] - 1) * float(np.asarray(spacing, float)[0])
    return not EDGE_MM <= float(centre_mm[0]) <= height - EDGE_MM


def spine_ends_below(hu: np.ndarray, spacing, centres_mm: list[np.ndarray]) -> bool:
    """Whether the spine visibly ends right below the lowest of ``centres_mm`` (top first, z y x mm in ``hu``'s frame):
    one gap further down the column lies inside the image (not within :data:`EDGE_MM` of its first slice) and holds
    no vertebra by the bone (:data:`MIN_SEED_ML` near the column's axis). An upright spine never ends below a lumbar
    vertebra (the next one or the sacrum follows); a thoracic phantom turned head-to-feet does: thoracic phantom 7008
    upside down had its T1 counted L1 under T2's ribs, with no bone below it, and was "anchored by the ribs"."""
    gap = _median_gap(centres_mm)
    low = np.asarray(centres_mm[-1], float)
    # the whole column's direction: two neighbouring peaks can sit 30 mm apart front to back (7008's lowest two),
    # and one gap along that line lands on the aorta
    d = _direction(centres_mm[0], centres_mm[-1]) if len(centres_mm) > 1 else np.array([1.0, 0.0, 0.0])
    below = low - gap * d
    if cut_by_edge(hu, spacing, below):
        return False  # out of view (or at its edge): the image cannot say
    return lateral_reach(hu, spacing, below, SLAB_SHARE * gap)[2] < MIN_SEED_ML


def thoracic_column(hu: np.ndarray, spacing, centres_mm: list[np.ndarray]) -> tuple[bool, list]:
    """(whether the column is thoracic, the reaches measured, top first): the vertebrae at ``centres_mm`` (top
    first, z y x mm in ``hu``'s frame) and the :data:`THORACIC_ABOVE` one gap after another above them, read as in
    :func:`detect_ribs`; see :data:`THORACIC_MIN_RIBS`. A place with no vertebra (too little bone) counts for
    neither side. The column's own vertebrae are read first, from the lowest up, and the reading stops at the
    first one clearly without ribs, which settles it (a real lumbar column: one or two reads instead of eight or
    more, 0.4 s of a study); the reaches are then those read."""
    gap = _median_gap(centres_mm)
    top = np.asarray(centres_mm[0], float)
    d = _direction(centres_mm[0], centres_mm[1]) if len(centres_mm) > 1 else np.array([1.0, 0.0, 0.0])
    places = [top + k * gap * d for k in range(THORACIC_ABOVE, 0, -1)] + [np.asarray(c, float) for c in centres_mm]
    reaches: dict[int, tuple] = {}
    ribs, without = 0, False
    for i in list(range(len(places) - 1, THORACIC_ABOVE - 1, -1)) + list(range(THORACIC_ABOVE)):  # lowest first
        reaches[i] = r = lateral_reach(hu, spacing, places[i], SLAB_SHARE * gap)
        if r[2] < MIN_SEED_ML or cut_by_edge(hu, spacing, places[i]):
            continue
        without = max(r[:2]) < CARRIES_RIB_MM
        if without:
            break
        ribs += min(r[:2]) >= RIB_REACH_MM
    return ribs >= THORACIC_MIN_RIBS and not without, [tuple(round(v) for v in reaches[i][:2]) for i in sorted(reaches)]


def _longest_free_mm(occupied: np.ndarray, step_mm: float) -> float:
    """The longest run of False in ``occupied`` (ordered outwards from the axis), in mm."""
    best = run = 0
    for v in occupied:
        run = 0 if v else run + 1
        best = max(best, run)
    return best * step_mm


def detect_sacrum(hu: np.ndarray, spacing, centres_mm: list[np.ndarray], low_name: str = "the lowest piece") -> CtAnchors:
    """Whether the sacrum lies right below the column whose vertebral centres (top first, z y x mm in ``hu``'s
    frame) are ``centres_mm``; see the module docstring."""
    out = CtAnchors()
    spacing = np.asarray(spacing, float)
    gap = _median_gap(centres_mm)
    low = np.asarray(centres_mm[-1], float)
    d = _direction(centres_mm[-2], centres_mm[-1]) if len(centres_mm) > 1 else np.array([1.0, 0.0, 0.0])
    z_lo, z_hi = low[0] - SACRUM_WINDOW[1] * gap * d[0], low[0] - SACRUM_WINDOW[0] * gap * d[0]
    mid = low - 0.5 * sum(SACRUM_WINDOW) * gap * d  # the axis at the window's middle (it leans back below L5)
    box = _box(hu.shape, spacing, np.array([(z_lo + z_hi) / 2, mid[1], mid[2]]),
               ((z_hi - z_lo) / 2, SACRUM_BAND_MM, SACRUM_REACH_MM + spacing[2]))
    k = np.ceil(SACRUM_REACH_MM / spacing[2])
    centre_col = int(round(mid[2] / spacing[2])) - box[2].start
    if (box[0].stop - box[0].start < 2 or centre_col - k < 0 or centre_col + k >= box[2].stop - box[2].start):
        out.measures.update(slices=0, in_view=False)
        return out  # the field of view does not reach out to where the pelvis would show
    bone = _bone(hu, box, spacing).any(axis=1)  # (z, x): bone anywhere in the band
    k = int(k)
    good = []
    for row in bone:
        right, left = row[centre_col - k:centre_col + 1][::-1], row[centre_col:centre_col + k + 1]
        free = max(_longest_free_mm(right, spacing[2]), _longest_free_mm(left, spacing[2]))
        good.append(bool(row[centre_col - 2:centre_col + 3].any()) and free <= SACRUM_FREE_MM)
    thick = int(np.sum(good)) * float(spacing[0])
    out.measures.update(slices=int(np.sum(good)), thick_mm=thick, in_view=True)
    if int(np.sum(good)) >= 2 and thick >= SACRUM_MIN_MM:
        out.sacrum = True
        out.notes.append(f"The sacrum below L5: the CT shows bone across {2 * SACRUM_REACH_MM:.0f} mm and more, "
                         f"left to right, over {thick:.0f} mm of height about one vertebra below {low_name} (the "
                         f"sacrum and the iliac wings).")
    return out


def detect(hu: np.ndarray, spacing, centres_mm: list[np.ndarray], top_name: str = "the highest piece",
           low_name: str = "the lowest piece") -> CtAnchors:
    """Both detectors on the column with vertebral centres ``centres_mm`` (top first)."""
    ribs = detect_ribs(hu, spacing, centres_mm, top_name)
    sacrum = detect_sacrum(hu, spacing, centres_mm, low_name)
    return CtAnchors(ribs.ribs, sacrum.sacrum, ribs.notes + sacrum.notes, ribs.warnings + sacrum.warnings,
                     {**ribs.measures, **sacrum.measures})


def apply_to_count(ct: CtAnchors, ribs_start, sacrum_start, offsets, notes: list, warnings: list) -> tuple:
    """:func:`naming.decode_levels`'s (ribs_start, sacrum_start) - the first instance's level counted down from
    the ribs / up from the sacrum, None without that anchor - with the CT's anchors added to the network's
    context pieces: ribs above make the first (lumbar) instance L1; the sacrum below is used only where it
    confirms the ribs' count (alone it cannot tell the sacrum from an L5 set deep between the iliac crests, and
    a false anchor shifts every name). What was seen goes into ``notes``, what stopped an anchor into
    ``warnings``. ``offsets``: each instance's levels below the first."""
    warnings += ct.warnings
    if ribs_start is None and ct.ribs:
        lowest = 1 + int(offsets[-1])  # the lowest vertebra's level if the first one is L1
        if lowest > MOST_BELOW_RIBS:
            # More vertebrae below than a lumbar spine holds under its ribs: the ones found are not all lumbar (on
            # the thoracic-only phantom seed 7007 they were T-vertebrae whose ribs are not bone-connected at 2 mm,
            # under one whose ribs are), so the ribs cannot say which is L1.
            warnings.append(f"WARNING: a rib-bearing vertebra shows above the column, but counting down from it "
                            f"would make the lowest of the vertebrae found L{lowest}, more than a lumbar spine holds "
                            f"below its ribs: some of them may be thoracic. The ribs do not anchor the count. Check "
                            f"the levels.")
        else:
            ribs_start = 1
            notes += [n for n in ct.notes if n.startswith("Ribs")]
    if sacrum_start is None and ct.sacrum:
        from_sacrum = 5 - int(offsets[-1])
        if ribs_start is not None and ribs_start == from_sacrum:
            sacrum_start = from_sacrum
            notes += [n for n in ct.notes if n.startswith("The sacrum")]
        else:
            notes.append("Bone like the sacrum and the iliac wings shows below the lowest vertebra found, but the "
                         "CT check cannot tell the sacrum from an L5 set deep between the iliac crests, so it does "
                         "not anchor the count " + ("alone." if ribs_start is None else
                                                    "against the ribs' count (they disagree)."))
    return ribs_start, sacrum_start
