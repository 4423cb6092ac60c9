"""Naming the lumbar vertebrae by counting: find every vertebra, then name the whole column at once.

The XUNet names every voxel itself, and at thick slices one name bleeds across a disc onto two vertebral
bodies, or one vertebra gets two names; every name below such a merge is then shifted. Here its output is
only evidence. The vertebrae are found as *instances* (:func:`find_instances`): the kept piece of each
lumbar class, a piece too tall for one vertebra split at its deepest axial waist (the disc), two
centres too close merged into one vertebra. The column then gets one consecutive sequence of levels
(:func:`decode_levels`): a gap between neighbouring centres that is too large skips a level (a missed
vertebra), and the first level is set by the anchors - the sacrum right below (count up: the lowest is L5)
and a thoracic (rib-bearing) vertebra right above (count down: the next one is L1) - or, with no anchor, by
the class evidence of every instance together. Each name says how it was decided ("sacrum", "ribs", "both",
"unanchored"); when the two counts differ by one level the anatomy is transitional (a sixth lumbar or a
sacralised fifth vertebra) and the result says "transitional anatomy: check the levels", never silently.

Pure numpy/scipy on (z, y, x) arrays in LPS orientation (a larger z index is more superior), as
:func:`pipeline.clean_labels` holds them: 0 background, 1..5 L1..L5, then the model's context classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..constants import LABEL_NAMES, NUM_CLASSES, TRANSITIONAL
from . import anchors as ct_anchors

# The gap model, fitted on the 11 real spines of ../shared/data (VerSe and TotalSegmentator label maps;
# whole vertebrae only, centroid of each mask in physical space) with
#     PYTHONPATH=. python tools/measure_vertebra_gaps.py ../shared/data
# 54 pairs of consecutive vertebrae (T1-L5): centres 20.7-36.6 mm apart (5th percentile 23.2, median 30.0,
# 95th 36.3; lumbar pairs 28-37 mm); 66 whole vertebrae 34-61 mm high (median 50; the mask's
# superior-inferior extent, spinous process included).
GAP_MEDIAN_MM = 30.0
# A missed vertebra also leaves room for itself: this share of a vertebra's height free of bone between
# its neighbours (neighbours' masks overlap in height or leave a disc of 5-15 mm).
MISSED_ROOM = 0.4
# Neighbouring centres further apart than this (or than 1.55 x the column's own median gap) have a vertebra
# between them that was missed: one level is skipped per typical gap. The next vertebra would lie about 60 mm
# away; 46 mm (as in measures.measurements.CENTROID_GAP_MM) leaves 10 mm for centres predicted a few mm off.
GAP_MISSED_MM = 46.0
MISSED_RATIO = 1.55
# Centres closer than this (or than 0.6 x the column's median gap, for a child's half-size spine) are one
# vertebra under two names: no two real neighbours came closer than 20.7 mm.
GAP_SAME_MM = 17.0
SAME_RATIO = 0.6
# A piece taller than the tallest measured vertebra plus one slice (a thick slice adds up to one slice to a
# height), or RELATIVE_TALL x the median of the other whole pieces, is two vertebrae: split at the disc.
TALLEST_VERTEBRA_MM = 61.0
RELATIVE_TALL = 1.3
# A piece split only for being taller than its neighbours must narrow at the cut (a disc) to at most this
# share of the widest cross-sections on either side: a vertebra that is just large has no such waist. One
# too tall for any vertebra need only narrow clearly (a disc bled over at thick slices leaves a shallow
# waist; sub-verse007's T12+L1 piece narrows to 0.79 at the disc).
WAIST_RATIO = 0.7
BODY_SHARE = 0.5
WAIST_RATIO_TALL = 0.9
# Context voxels this close to the end of the lumbar column are its neighbour (discs are 5-15 mm high, the
# predicted surfaces a few mm off; as pipeline.ANCHOR_GAP_MM before).
ANCHOR_GAP_MM = 20.0
EVIDENCE_FLOOR = 0.05  # the weight of a level the network gave no evidence for (log(0) would veto it)


@dataclass
class ColumnNaming:
    """Instances (``instance_map`` value i + 1 is instance i, top first) and the level of each: 1..5 = L1..L5,
    0 = T12 and below 1 thoracic, 6 and more below L5. ``how`` is "sacrum", "ribs", "both" or "unanchored"."""
    instance_map: np.ndarray
    levels: list[int]
    network_labels: list[int]  # the class the network gave most of each instance (thoracic ones: 0)
    centres_mm: list[np.ndarray]
    how: str = "unanchored"
    notes: list[str] = field(default_factory=list)  # what was split, merged and renamed
    warnings: list[str] = field(default_factory=list)
    box: tuple = ()  # the slices (z, y, x) of the input arrays that ``instance_map`` and the centres cover

    def lumbar(self) -> dict[int, int]:
        """Instance index -> lumbar level (1..5) of the instances that are named L1..L5."""
        return {i: lev for i, lev in enumerate(self.levels) if 1 <= lev <= 5}


def _z_extent(mask: np.ndarray) -> tuple[int, int]:
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    return int(zs[0]), int(zs[-1])


def _height_mm(mask: np.ndarray, spacing_zyx) -> float:
    z0, z1 = _z_extent(mask)
    return (z1 - z0 + 1) * float(spacing_zyx[0])


def _touch(a: np.ndarray, b: np.ndarray) -> bool:
    return bool((ndimage.binary_dilation(a, np.ones((3, 3, 3), bool)) & b).any())


def _room_mm(upper: np.ndarray, lower: np.ndarray, spacing_zyx) -> float:
    """Free height between a vertebra and the one below it (negative when their heights overlap)."""
    return (_z_extent(upper)[0] - _z_extent(lower)[1] - 1) * float(spacing_zyx[0])


def _centre_mm(mask: np.ndarray, spacing_zyx) -> np.ndarray:
    """Centroid (z, y, x) in mm from the mask's three projections (ndimage.center_of_mass builds an index
    grid per voxel: seconds on a 1 mm abdomen)."""
    profiles = [mask.sum(axis=tuple(a for a in range(3) if a != axis), dtype=np.int64) for axis in range(3)]
    total = float(profiles[0].sum())
    return np.array([float(p @ np.arange(p.size)) / total for p in profiles]) * np.asarray(spacing_zyx, float)


def split_at_waist(mask: np.ndarray, spacing_zyx, need_waist: bool) -> int | None:
    """The z index at which to cut ``mask`` (z, y, x) into two vertebrae: its deepest waist, the axial
    cross-section smallest against the widest cross-sections on both sides of it (the disc between two
    bodies), within the middle 20-80 % of its height. Not merely the thinnest slice: a vertebra's spinous
    process hangs below its body in a thin tail, which is no disc: each side must reach BODY_SHARE of the
    widest cross-section. None when the waist is shallower than
    WAIST_RATIO (``need_waist``) or WAIST_RATIO_TALL of the narrower side's widest cross-section, or when
    the two parts' centres would lie closer than GAP_SAME_MM."""
    z0, z1 = _z_extent(mask)
    area = mask[z0:z1 + 1].sum(axis=(1, 2)).astype(float)
    n = area.size
    lo, hi = max(1, int(np.floor(0.2 * n))), min(n - 2, int(np.ceil(0.8 * n)))
    if hi < lo:
        return None
    below_peak = np.maximum.accumulate(area)  # widest at or below each slice
    above_peak = np.maximum.accumulate(area[::-1])[::-1]  # widest at or above each slice
    # both sides must hold a body: a cross-section at least BODY_SHARE of the widest (not a process's tail)
    sides = np.minimum(below_peak[lo - 1:hi], above_peak[lo + 1:hi + 2])
    ratio = np.where(sides >= BODY_SHARE * area.max(), area[lo:hi + 1] / np.maximum(sides, 1.0), np.inf)
    if not np.isfinite(ratio).any():
        return None
    candidates = np.flatnonzero(ratio <= ratio.min() + 1e-9) + lo
    cut = int(candidates[np.argmin(np.abs(candidates - (n - 1) / 2.0))])
    if ratio[cut - lo] > (WAIST_RATIO if need_waist else WAIST_RATIO_TALL):
        return None
    below, above = mask.copy(), mask.copy()
    below[z0 + cut:] = False
    above[:z0 + cut] = False
    if not below.any() or not above.any():
        return None
    if np.linalg.norm(_centre_mm(above, spacing_zyx) - _centre_mm(below, spacing_zyx)) < GAP_SAME_MM:
        return None
    return z0 + cut


def _too_tall(height: float, others: list[float], slice_mm: float) -> tuple[bool, bool]:
    """(too tall, only relative to the others)."""
    if height > TALLEST_VERTEBRA_MM + slice_mm:
        return True, False
    if len(others) >= 2 and height > RELATIVE_TALL * float(np.median(others)):
        return True, True
    return False, False


def split_tall(masks: list[np.ndarray], spacing_zyx, notes: list[str] | None = None,
               names: list[str] | None = None) -> tuple[list[np.ndarray], list[int]]:
    """Split every mask too tall for one vertebra at its waist (again while a part is still too tall).
    Returns the masks and, for each, the index of the mask it came from."""
    sz = float(spacing_zyx[0])
    out, origin = list(masks), list(range(len(masks)))
    shape_z = masks[0].shape[0] if masks else 0
    for _ in range(4 * max(1, len(masks))):  # a few rounds: three merged vertebrae need two cuts
        extents = [_z_extent(m) for m in out]
        heights = [(e[1] - e[0] + 1) * sz for e in extents]
        done = True
        for i, (m, h) in enumerate(zip(out, heights)):
            # the yardstick: the other pieces that the box does not cut
            others = [heights[j] for j, e in enumerate(extents) if j != i and e[0] > 0 and e[1] < shape_z - 1]
            tall, relative = _too_tall(h, others, sz)
            if not tall:
                continue
            cut = split_at_waist(m, spacing_zyx, need_waist=relative)
            if cut is None:
                continue
            below, above = m.copy(), m.copy()
            below[cut:] = False
            above[:cut] = False
            if not _split_fits_column(out, i, above, below, spacing_zyx):
                continue
            if notes is not None and names is not None:
                notes.append(f"The piece labelled {names[origin[i]]} ({h:.0f} mm high) held two vertebrae; it was "
                             f"split at its narrowest cross-section (the disc).")
            out[i:i + 1] = [above, below]
            origin[i:i + 1] = [origin[i], origin[i]]
            done = False
            break
        if done:
            break
    return out, origin


def _split_fits_column(masks: list[np.ndarray], i: int, above: np.ndarray, below: np.ndarray,
                       spacing_zyx) -> bool:
    """Whether splitting ``masks[i]`` (top first) into ``above`` and ``below`` leaves a plausible column:
    every gap next to the two new centres at least SAME_RATIO of the column's median gap (GAP_SAME_MM with
    fewer than two gaps). On a tilted (lordotic) column a vertebra's pieces overlap in height and one looks
    too tall along z; splitting it would put half a vertebra beside its neighbour's centre."""
    centres = [_centre_mm(m, spacing_zyx) for m in masks]
    gaps = column_gaps(centres)
    need = SAME_RATIO * float(np.median(gaps)) if len(gaps) >= 2 else GAP_SAME_MM
    new = centres[:i] + [_centre_mm(above, spacing_zyx), _centre_mm(below, spacing_zyx)] + centres[i + 1:]
    around = column_gaps(new)[max(0, i - 1):i + 2]
    return min(around) >= need


def column_gaps(centres: list[np.ndarray]) -> list[float]:
    return [float(np.linalg.norm(a - b)) for a, b in zip(centres, centres[1:])]


def _thresholds(gaps: list[float]) -> tuple[float, float]:
    """(same vertebra below, missed vertebra above) for this column: the fitted millimetres, scaled down for
    a small spine (a child's is half the size) by its own median gap when it has three."""
    median = float(np.median(gaps)) if len(gaps) >= 3 else GAP_MEDIAN_MM
    return min(GAP_SAME_MM, SAME_RATIO * median), min(GAP_MISSED_MM, MISSED_RATIO * median)


def level_steps(gaps: list[float], rooms: list[float], heights: list[float]) -> list[int]:
    """Levels between neighbouring instances: 1, or more where the gap holds missed vertebrae: the centres
    too far apart and the free height between the two (``rooms``, mm) enough for a vertebra."""
    _, missed = _thresholds(gaps)
    typical = missed / MISSED_RATIO
    need = MISSED_ROOM * float(np.median(heights))
    return [max(2, int(round(g / typical))) if g > missed and r > need else 1 for g, r in zip(gaps, rooms)]


def class_evidence(masks: list[np.ndarray], labels: np.ndarray, n_classes: int,
                   probabilities: np.ndarray | None = None) -> np.ndarray:
    """(instances, classes) evidence of each class, summing to 1 over the vertebra classes (1..).

    With the network's ``probabilities`` (C, z, y, x on the grid of ``labels``): their mean over the instance.
    Without: the share of each class among the labelled voxels around the instance (its axial slab within
    its own in-plane bounding box), so a vertebra the network labelled partly as one level and partly as
    another carries both."""
    ev = np.zeros((len(masks), n_classes))
    for i, m in enumerate(masks):
        if probabilities is not None:
            ev[i] = probabilities[:, m].mean(axis=1)[:n_classes]
        else:
            box = ndimage.find_objects(m.astype(np.uint8))[0]
            ev[i] = np.bincount(labels[box].ravel(), minlength=n_classes)[:n_classes]
        ev[i, 0] = 0.0
        total = ev[i].sum()
        ev[i] = ev[i] / total if total > 0 else ev[i]
    return ev


def _class_of_level(level: int, context_classes) -> int | None:
    if 1 <= level <= 5:
        return level
    name = "thoracic" if level < 1 else "caudal"
    return NUM_CLASSES + list(context_classes).index(name) if name in context_classes else None


def evidence_score(start: int, offsets: list[int], evidence: np.ndarray, context_classes,
                   network_levels: set[int]) -> float:
    """Log-evidence of the levels ``start + offsets``: each instance's evidence for its level, plus, for every
    lumbar level the network gave some instance, whether the sequence holds it (so that a swapped pair keeps
    the network's set of names rather than trading one of them for a level it never saw)."""
    score = 0.0
    levels = [start + o for o in offsets]
    for i, lev in enumerate(levels):
        c = _class_of_level(lev, context_classes)
        score += np.log(EVIDENCE_FLOOR + (evidence[i, c] if c is not None else 0.0))
    score += sum(np.log(EVIDENCE_FLOOR + float(lev in levels)) for lev in network_levels)
    return float(score)


def decode_levels(offsets: list[int], evidence: np.ndarray, context_classes, network_levels: set[int],
                  ribs_start: int | None, sacrum_start: int | None,
                  first_is_anchor: bool = True) -> tuple[int, str, list[str]]:
    """(start level, how decided, warnings) for a column whose instances lie ``offsets`` levels below the
    first. ``ribs_start`` / ``sacrum_start``: the first instance's level that counting down from the ribs /
    up from the sacrum gives (None: that anchor is not in view). ``first_is_anchor``: the first instance is
    the thoracic anchor itself (not a vertebra the network called lumbar)."""
    def score(s):
        return evidence_score(s, offsets, evidence, context_classes, network_levels)

    if ribs_start is not None and sacrum_start is not None:
        if ribs_start == sacrum_start:
            return ribs_start, "both", []
        chosen, other = ("sacrum", "ribs") if score(sacrum_start) >= score(ribs_start) else ("ribs", "sacrum")
        start = sacrum_start if chosen == "sacrum" else ribs_start
        diff = abs(ribs_start - sacrum_start)
        def names(s):  # of the vertebrae the network called lumbar (the first instance is the ribs' anchor)
            return ", ".join(_level_name(s + o) for o in offsets[1 if first_is_anchor else 0:])
        counts = (f"counting up from the sacrum names them {names(sacrum_start)}; counting down from the ribs "
                  f"names them {names(ribs_start)}; the names shown follow the {chosen} count, which the "
                  f"network's evidence favours")
        if diff == 1:
            why = f"WARNING: {TRANSITIONAL} (a sixth lumbar or a sacralised fifth vertebra?): {counts}."
        else:
            why = (f"WARNING: the counts from the sacrum and from the ribs differ by {diff} levels (a vertebra "
                   f"missed or merged?): {counts}. Check the levels.")
        return start, chosen, [why]
    if sacrum_start is not None:
        return sacrum_start, "sacrum", []
    if ribs_start is not None:
        return ribs_start, "ribs", []
    last = offsets[-1]
    candidates = list(range(1 - last, 6))  # every start that names at least one lumbar vertebra
    network_start = (float(np.median([lev - o for lev, o in zip(_argmax_levels(evidence), offsets) if lev]))
                     if any(_argmax_levels(evidence)) else 1.0)
    start = max(candidates, key=lambda s: (round(score(s), 6), -abs(s - network_start)))
    return start, "unanchored", []


def _argmax_levels(evidence: np.ndarray) -> list[int]:
    """The lumbar level (1..5) each instance has most evidence for, 0 when a context class or nothing wins."""
    return [int(np.argmax(row)) if row.max() > 0 and 1 <= int(np.argmax(row)) < NUM_CLASSES else 0
            for row in evidence]


def _level_name(level: int) -> str:
    if 1 <= level <= 5:
        return LABEL_NAMES[level]
    return f"T{12 + level}" if level < 1 else f"L{level}"  # 6: a sixth lumbar-type vertebra (or S1)


def merge_close(masks: list[np.ndarray], spacing_zyx, notes: list[str] | None = None,
                names: list[str] | None = None) -> tuple[list[np.ndarray], list[list[int]]]:
    """Masks ordered top first; neighbours whose centres lie closer than one vertebra (:func:`_thresholds`)
    are one vertebra under two names and become one. Returns the masks and the input indices of each."""
    groups = [[i] for i in range(len(masks))]
    out = list(masks)
    while len(out) > 1:
        centres = [_centre_mm(m, spacing_zyx) for m in out]
        gaps = column_gaps(centres)
        same, _ = _thresholds(gaps)
        # only touching pieces can be one vertebra (discs separate neighbours, whatever their size)
        close = [i for i, g in enumerate(gaps) if g < same and _touch(out[i], out[i + 1])]
        if not close:
            break
        i = min(close, key=lambda k: gaps[k])
        if notes is not None and names is not None:
            notes.append(f"The pieces labelled {' and '.join(names[k] for k in groups[i] + groups[i + 1])} "
                         f"(centres {gaps[i]:.0f} mm apart) are one vertebra.")
        out[i:i + 2] = [out[i] | out[i + 1]]
        groups[i:i + 2] = [groups[i] + groups[i + 1]]
    return out, groups


def _context_neighbour(labels: np.ndarray, cls: int, column: np.ndarray, above: bool, min_voxels: int,
                       sz: float) -> np.ndarray | None:
    """The piece of context class ``cls`` right above (``above``) or right below the column's end vertebra
    ``column`` (a mask): its voxels beyond that vertebra's centre, ending within ANCHOR_GAP_MM of its edge.
    The largest such piece of at least ``min_voxels``; None when there is none."""
    z0, z1 = _z_extent(column)
    centre = _centre_mm(column, np.ones(3))[0]  # in voxels
    mask = labels == cls
    if above:
        mask[:int(np.floor(centre)) + 1] = False
    else:
        mask[int(np.ceil(centre)):] = False
    if mask.sum() < min_voxels:
        return None
    pieces, n = ndimage.label(mask)
    sizes = np.bincount(pieces.ravel())[1:]
    best = None
    for k in np.argsort(sizes)[::-1]:
        if sizes[k] < min_voxels:
            break
        piece = pieces == k + 1
        p0, p1 = _z_extent(piece)
        gap = (p0 - z1) * sz if above else (z0 - p1) * sz
        if gap <= ANCHOR_GAP_MM:
            best = piece
            break
    return best


# How far around the lumbar pieces the anchors are looked for: a neighbour within ANCHOR_GAP_MM and the
# whole of it (TALLEST_VERTEBRA_MM), with room to spare; in-plane, the column's own width and some.
CONTEXT_MARGIN_MM = (100.0, 40.0, 40.0)


def _column_box(kept: np.ndarray, spacing_zyx) -> tuple | None:
    region = ndimage.find_objects((kept > 0).astype(np.uint8))
    if not region or region[0] is None:
        return None
    grow = np.ceil(np.asarray(CONTEXT_MARGIN_MM) / np.asarray(spacing_zyx, float)).astype(int)
    return tuple(slice(max(0, r.start - g), min(n, r.stop + g)) for r, g, n in zip(region[0], grow, kept.shape))


def find_instances(kept: np.ndarray, spacing_zyx, notes: list[str] | None = None) -> tuple[list, list[int]]:
    """The vertebrae in the kept lumbar pieces (``kept``: 0, 1..5), top first: each piece, split where it
    holds two vertebrae (:func:`split_tall`), merged where two touching pieces are one (:func:`merge_close`).
    Returns their masks and the network's name of each (that of its largest piece)."""
    present = [lab for lab in range(1, NUM_CLASSES) if (kept == lab).any()]
    if not present:
        return [], []
    pieces = [kept == lab for lab in present]
    order = np.argsort([-_centre_mm(p, spacing_zyx)[0] for p in pieces])  # a larger z is more superior
    pieces, present = [pieces[i] for i in order], [present[i] for i in order]
    names = [LABEL_NAMES[lab] for lab in present]
    masks, origin = split_tall(pieces, spacing_zyx, notes, names)
    sizes = [int(m.sum()) for m in masks]
    masks, groups = merge_close(masks, spacing_zyx, notes, [names[o] for o in origin])
    return masks, [present[origin[max(g, key=lambda k: sizes[k])]] for g in groups]


def name_column(labels: np.ndarray, kept: np.ndarray, spacing_xyz, context_classes=(), min_voxels: int = 1,
                probabilities: np.ndarray | None = None, hu: np.ndarray | None = None,
                hu_origin=(0, 0, 0)) -> ColumnNaming | None:
    """Find the vertebrae in the network's output and name the column (see the module docstring).

    ``labels``: the network's labels (z, y, x); ``kept``: the lumbar pieces kept for reporting (0, 1..5: each
    class's largest piece of reportable size); ``min_voxels``: the least piece of a context class that
    counts as an anchor; ``probabilities``: the network's class probabilities (C, z, y, x) on the same grid,
    if at hand (the labels' shares stand in for them otherwise); ``hu``: the CT (z, y, x, LPS) in which
    ``labels[0, 0, 0]`` is voxel ``hu_origin``, read for ribs and the sacrum (:mod:`.anchors`) when given.
    None when ``kept`` holds no vertebra."""
    spacing_zyx = np.asarray(spacing_xyz, float)[::-1]
    sz = float(spacing_zyx[0])
    # Work inside the column's box, grown to take in the neighbours that anchor it (a box-sized array per
    # vertebra on a 1 mm abdomen would cost seconds).
    box = _column_box(kept, spacing_zyx)
    if box is None:
        return None
    labels, kept = labels[box], kept[box]
    if probabilities is not None:
        probabilities = probabilities[(slice(None),) + box]
    notes: list[str] = []
    masks, network = find_instances(kept, spacing_zyx, notes)
    if not masks:
        return None
    n_classes = NUM_CLASSES + len(context_classes)
    evidence = class_evidence(masks, labels, n_classes, probabilities)

    ct = None
    if hu is not None:  # the CT's own evidence of ribs above and the sacrum below (nothing learned)
        shift = (np.asarray(hu_origin, float) + [s.start for s in box]) * spacing_zyx
        ct = ct_anchors.detect(hu, spacing_zyx, [_centre_mm(m, spacing_zyx) + shift for m in masks],
                               LABEL_NAMES[network[0]], LABEL_NAMES[network[-1]])
    ribs_piece = sacrum_piece = None
    if "thoracic" in context_classes:
        ribs_piece = _context_neighbour(labels, NUM_CLASSES + list(context_classes).index("thoracic"), masks[0],
                                        True, min_voxels, sz)
    if "caudal" in context_classes:
        sacrum_piece = _context_neighbour(labels, NUM_CLASSES + list(context_classes).index("caudal"), masks[-1],
                                          False, min_voxels, sz)
    if ribs_piece is not None:
        # the lowest thoracic vertebra of that piece (a thoracic column is one class: split it first)
        thoracic, _ = split_tall([ribs_piece], spacing_zyx)
        t12 = min(thoracic, key=lambda m: _centre_mm(m, spacing_zyx)[0])
        if np.linalg.norm(_centre_mm(t12, spacing_zyx) - _centre_mm(masks[0], spacing_zyx)) < GAP_SAME_MM:
            ribs_piece = None  # thoracic voxels on the top vertebra itself: which one it is stays open
        else:
            masks = [t12] + masks
            evidence = np.vstack([class_evidence([t12], labels, n_classes, probabilities), evidence])
            network = [0] + network
    centres = [_centre_mm(m, spacing_zyx) for m in masks]
    gaps = column_gaps(centres)
    rooms = [_room_mm(a, b, spacing_zyx) for a, b in zip(masks, masks[1:])]
    steps = level_steps(gaps, rooms, [_height_mm(m, spacing_zyx) for m in masks]) if gaps else []
    offsets = [0] + list(np.cumsum(steps).astype(int)) if steps else [0]
    warnings = []
    for i, (g, s) in enumerate(zip(gaps, steps)):
        if s > 1:
            warnings.append(f"WARNING: the centres of two neighbouring vertebrae are {g:.0f} mm apart (neighbours "
                            f"are {GAP_SAME_MM:g}-{GAP_MISSED_MM:g} mm apart): {s - 1} vertebra(e) between them "
                            f"were probably missed and counted as such. Check the levels.")
    # the lumbar levels the network sees in the column: each instance's most likely one
    network_levels = {lev for lev in _argmax_levels(evidence) if lev}
    ribs_start = 0 if ribs_piece is not None else None  # the thoracic neighbour is T12
    sacrum_start = 5 - offsets[-1] if sacrum_piece is not None else None  # the lowest vertebra is L5
    if ct is not None:
        ribs_start, sacrum_start = ct_anchors.apply_to_count(ct, ribs_start, sacrum_start, offsets, notes, warnings)
    start, how, decode_warnings = decode_levels(offsets, evidence, context_classes, network_levels,
                                                ribs_start, sacrum_start, first_is_anchor=ribs_piece is not None)
    warnings += decode_warnings
    levels = [start + o for o in offsets]
    instance_map = np.zeros(labels.shape, np.uint8)  # instances are vertebrae: far fewer than 255
    for i, m in enumerate(masks):
        if ribs_piece is not None and i == 0:
            continue  # the thoracic anchor is not reported
        instance_map[m & (instance_map == 0)] = i + 1
    result = ColumnNaming(instance_map, levels, network, centres, how, notes, warnings, box)
    _describe(result, ribs_piece is not None)
    return result


def _describe(naming: ColumnNaming, has_thoracic: bool) -> None:
    """Notes on renamed vertebrae and warnings on unreportable and unanchored ones, into ``naming``."""
    first = 1 if has_thoracic else 0
    levels, network = naming.levels[first:], naming.network_labels[first:]
    outside = [_level_name(lev) for lev in levels if not 1 <= lev <= 5]
    if outside:
        why = ("the sequence fitted to the network's evidence" if naming.how == "unanchored" else
               f"counting from the {'thoracic vertebra above and the sacrum below' if naming.how == 'both' else naming.how}")
        naming.warnings.append(f"WARNING: {why} makes {', '.join(outside)} of vertebrae the network labelled "
                               f"lumbar; they are not reported as lumbar vertebrae. Check the levels.")
    if levels != network:
        old = ", ".join(LABEL_NAMES.get(lab, "?") for lab in network)
        new = ", ".join(_level_name(lev) for lev in levels)
        why = {"sacrum": "counted up from the sacrum below", "ribs": "counted down from the thoracic vertebra above",
               "both": "counted from the thoracic vertebra above and the sacrum below",
               "unanchored": "one consecutive sequence fitted to the network's evidence"}[naming.how]
        order = (" (the network's names were out of anatomical order)"
                 if sorted(network) != network else "")
        naming.notes.append(f"Vertebrae renamed {old} -> {new} from superior to inferior{order}: {why}. "
                            f"Check the labels.")
    if naming.how == "unanchored":
        named = ", ".join(_level_name(lev) for lev in levels if 1 <= lev <= 5)
        # "not found", never "not in view": the bundled model's context classes never win a voxel (their output
        # weights are still near-copies of background), so both anchors go unfound even when plainly in view.
        naming.warnings.append(f"WARNING: the level names ({named}) are unanchored: neither the network nor the CT's "
                               f"bone showed the sacrum right below or a rib-bearing vertebra right above the column "
                               f"(out of view, or not recognised), so they rest on the network's reading of the "
                               f"vertebrae alone. Check the levels against the ribs or the sacrum.")
