"""The vertebrae in the XUNet's kept lumbar pieces, as instances: each piece, split at its deepest axial waist
(the disc) where it is too tall for one vertebra, and two touching pieces whose centres lie closer than one
vertebra merged into one. At thick slices one name bleeds across a disc onto two bodies, or one vertebra
gets two names; :mod:`.naming` then names the instances as one column.

Also the column's gap model (how far apart neighbouring centres lie), which :mod:`.naming` uses to count the
levels between instances. Pure numpy/scipy on (z, y, x) arrays in LPS orientation (a larger z is superior).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..constants import LABEL_NAMES, NUM_CLASSES

# The gap model, fitted on the 11 real spines of ../shared/data (VerSe and TotalSegmentator label maps;
# whole vertebrae only, centroid of each mask in physical space) with
#     PYTHONPATH=. python tools/measure_vertebra_gaps.py ../shared/data
# 54 pairs of consecutive vertebrae (T1-L5): centres 20.7-36.6 mm apart (5th percentile 23.2, median 30.0,
# 95th 36.3; lumbar pairs 28-37 mm); 66 whole vertebrae 34-61 mm high (median 50; the mask's
# superior-inferior extent, spinous process included).
GAP_MEDIAN_MM = 30.0
# Neighbouring centres further apart than this (or than 1.55 x the column's own median gap) have a vertebra
# between them that was missed: one level is skipped per typical gap. The next vertebra would lie about 60 mm
# away; 46 mm (as measures.measurements.ColumnLimits.centroid_gap_mm) leaves 10 mm for centres a few mm off.
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


def z_extent(mask: np.ndarray) -> tuple[int, int]:
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    return int(zs[0]), int(zs[-1])


def height_mm(mask: np.ndarray, spacing_zyx) -> float:
    z0, z1 = z_extent(mask)
    return (z1 - z0 + 1) * float(spacing_zyx[0])


def touch(a: np.ndarray, b: np.ndarray) -> bool:
    return bool((ndimage.binary_dilation(a, np.ones((3, 3, 3), bool)) & b).any())


def centre_mm(mask: np.ndarray, spacing_zyx) -> np.ndarray:
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
    z0, z1 = z_extent(mask)
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
    if np.linalg.norm(centre_mm(above, spacing_zyx) - centre_mm(below, spacing_zyx)) < GAP_SAME_MM:
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
        extents = [z_extent(m) for m in out]
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
    centres = [centre_mm(m, spacing_zyx) for m in masks]
    gaps = column_gaps(centres)
    need = SAME_RATIO * float(np.median(gaps)) if len(gaps) >= 2 else GAP_SAME_MM
    new = centres[:i] + [centre_mm(above, spacing_zyx), centre_mm(below, spacing_zyx)] + centres[i + 1:]
    around = column_gaps(new)[max(0, i - 1):i + 2]
    return min(around) >= need


def column_gaps(centres: list[np.ndarray]) -> list[float]:
    return [float(np.linalg.norm(a - b)) for a, b in zip(centres, centres[1:])]


def gaps_along_column(centres: list[np.ndarray]) -> list[float]:
    """The distances along the spine (z, the strip's axis) between neighbouring centres (z, y, x mm): what a
    missed vertebra widens. The finder's peak on a vertebra whose body lies out of a slab's view can sit on its
    arch, far behind its neighbours (held-out sub-verse014 at 5 mm: T12's peak 50 mm behind L1's, 58 mm from it in
    space, 28 along the spine), and that offset must not read as a skipped level."""
    return [float(abs(a[0] - b[0])) for a, b in zip(centres, centres[1:])]


def gap_thresholds(gaps: list[float]) -> tuple[float, float]:
    """(same vertebra below, missed vertebra above) for this column: the fitted millimetres, scaled down for
    a small spine (a child's is half the size) by its own median gap when it has three."""
    median = float(np.median(gaps)) if len(gaps) >= 3 else GAP_MEDIAN_MM
    return min(GAP_SAME_MM, SAME_RATIO * median), min(GAP_MISSED_MM, MISSED_RATIO * median)


def merge_close(masks: list[np.ndarray], spacing_zyx, notes: list[str] | None = None,
                names: list[str] | None = None) -> tuple[list[np.ndarray], list[list[int]]]:
    """Masks ordered top first; neighbours whose centres lie closer than one vertebra (:func:`gap_thresholds`)
    are one vertebra under two names and become one. Returns the masks and the input indices of each."""
    groups = [[i] for i in range(len(masks))]
    out = list(masks)
    while len(out) > 1:
        centres = [centre_mm(m, spacing_zyx) for m in out]
        gaps = column_gaps(centres)
        same, _ = gap_thresholds(gaps)
        # only touching pieces can be one vertebra (discs separate neighbours, whatever their size)
        close = [i for i, g in enumerate(gaps) if g < same and touch(out[i], out[i + 1])]
        if not close:
            break
        i = min(close, key=lambda k: gaps[k])
        if notes is not None and names is not None:
            notes.append(f"The pieces labelled {' and '.join(names[k] for k in groups[i] + groups[i + 1])} "
                         f"(centres {gaps[i]:.0f} mm apart) are one vertebra.")
        out[i:i + 2] = [out[i] | out[i + 1]]
        groups[i:i + 2] = [groups[i] + groups[i + 1]]
    return out, groups


def find_instances(kept: np.ndarray, spacing_zyx, notes: list[str] | None = None) -> tuple[list, list[int]]:
    """The vertebrae in the kept lumbar pieces (``kept``: 0, 1..5), top first: each piece, split where it
    holds two vertebrae (:func:`split_tall`), merged where two touching pieces are one (:func:`merge_close`).
    Returns their masks and the network's name of each (that of its largest piece)."""
    present = [lab for lab in range(1, NUM_CLASSES) if (kept == lab).any()]
    if not present:
        return [], []
    pieces = [kept == lab for lab in present]
    order = np.argsort([-centre_mm(p, spacing_zyx)[0] for p in pieces])  # a larger z is more superior
    pieces, present = [pieces[i] for i in order], [present[i] for i in order]
    names = [LABEL_NAMES[lab] for lab in present]
    masks, origin = split_tall(pieces, spacing_zyx, notes, names)
    sizes = [int(m.sum()) for m in masks]
    masks, groups = merge_close(masks, spacing_zyx, notes, [names[o] for o in origin])
    return masks, [present[origin[max(g, key=lambda k: sizes[k])]] for g in groups]
