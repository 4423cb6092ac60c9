"""Naming the lumbar vertebrae by counting: find every vertebra, then name the whole column at once.

The XUNet names every voxel itself, and at thick slices one name bleeds across a disc onto two vertebral
bodies, or one vertebra gets two names; every name below such a merge is then shifted. Here its output is
only evidence. The vertebrae are found as *instances* (:func:`.instances.find_instances`): the kept piece of each
lumbar class, a piece too tall for one vertebra split at its deepest axial waist (the disc), two
centres too close merged into one vertebra. The column then gets one consecutive sequence of levels
(:func:`decode_levels`): a gap between neighbouring centres that is too large skips a level (a missed
vertebra), and the first level is set by the anchors - the sacrum right below (count up: the lowest is L5)
and a thoracic (rib-bearing) vertebra right above (count down: the next one is L1) - or, with no anchor, by
the class evidence of every instance together. Each name says how it was decided ("sacrum", "ribs", "both",
"unanchored"); when the two counts differ by one level the anatomy is transitional (a sixth lumbar or a
sacralised fifth vertebra) and the result says "transitional anatomy: check the levels", never silently.

With the finder (:mod:`.finder`) the instances are its centre peaks instead and
:func:`.peak_naming.name_peaks` names them with this module's evidence scoring: the whole column's class evidence
picks the sequence, and only the CT's bone anchors it.

Pure numpy/scipy on (z, y, x) arrays in LPS orientation (a larger z index is more superior), as
:func:`pipeline.clean_labels` holds them: 0 background, 1..5 L1..L5, then the model's context classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..constants import LABEL_NAMES, NUM_CLASSES, TRANSITIONAL
from . import anchors as ct_anchors
from .instances import (GAP_MISSED_MM, GAP_SAME_MM, MISSED_RATIO, centre_mm, column_gaps, find_instances,
                        gap_thresholds, height_mm, split_tall, z_extent)

# A missed vertebra also leaves room for itself: this share of a vertebra's height free of bone between
# its neighbours (neighbours' masks overlap in height or leave a disc of 5-15 mm).
MISSED_ROOM = 0.4

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


def _room_mm(upper: np.ndarray, lower: np.ndarray, spacing_zyx) -> float:
    """Free height between a vertebra and the one below it (negative when their heights overlap)."""
    return (z_extent(upper)[0] - z_extent(lower)[1] - 1) * float(spacing_zyx[0])


def level_steps(gaps: list[float], rooms: list[float], heights: list[float]) -> list[int]:
    """Levels between neighbouring instances: 1, or more where the gap holds missed vertebrae: the centres
    too far apart and the free height between the two (``rooms``, mm) enough for a vertebra."""
    _, missed = gap_thresholds(gaps)
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


def class_of_level(level: int, context_classes) -> int | None:
    """The network's class of ``level`` (1-5: L1-L5; below 1 the thoracic context class, above 5 the caudal one),
    None when ``context_classes`` lacks that class."""
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
        c = class_of_level(lev, context_classes)
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
            return ", ".join(level_name(s + o) for o in offsets[1 if first_is_anchor else 0:])
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


def level_name(level: int) -> str:
    if 1 <= level <= 5:
        return LABEL_NAMES[level]
    return f"T{12 + level}" if level < 1 else f"L{level}"  # 6: a sixth lumbar-type vertebra (or S1)


def _context_neighbour(labels: np.ndarray, cls: int, column: np.ndarray, above: bool, min_voxels: int,
                       sz: float) -> np.ndarray | None:
    """The piece of context class ``cls`` right above (``above``) or right below the column's end vertebra
    ``column`` (a mask): its voxels beyond that vertebra's centre, ending within ANCHOR_GAP_MM of its edge.
    The largest such piece of at least ``min_voxels``; None when there is none."""
    z0, z1 = z_extent(column)
    centre = centre_mm(column, np.ones(3))[0]  # in voxels
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
        p0, p1 = z_extent(piece)
        gap = (p0 - z1) * sz if above else (z0 - p1) * sz
        if gap <= ANCHOR_GAP_MM:
            best = piece
            break
    return best


# How far around the lumbar pieces the anchors are looked for: a neighbour within ANCHOR_GAP_MM and the
# whole of it (instances.TALLEST_VERTEBRA_MM), with room to spare; in-plane, the column's own width and some.
CONTEXT_MARGIN_MM = (100.0, 40.0, 40.0)


def _column_box(kept: np.ndarray, spacing_zyx) -> tuple | None:
    region = ndimage.find_objects((kept > 0).astype(np.uint8))
    if not region or region[0] is None:
        return None
    grow = np.ceil(np.asarray(CONTEXT_MARGIN_MM) / np.asarray(spacing_zyx, float)).astype(int)
    return tuple(slice(max(0, r.start - g), min(n, r.stop + g)) for r, g, n in zip(region[0], grow, kept.shape))


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
        ct = ct_anchors.detect(hu, spacing_zyx, [centre_mm(m, spacing_zyx) + shift for m in masks],
                               LABEL_NAMES[network[0]], LABEL_NAMES[network[-1]])
    ribs_piece = sacrum_piece = None
    thoracic_class, caudal_class = class_of_level(0, context_classes), class_of_level(6, context_classes)
    if thoracic_class is not None:
        ribs_piece = _context_neighbour(labels, thoracic_class, masks[0], True, min_voxels, sz)
    if caudal_class is not None:
        sacrum_piece = _context_neighbour(labels, caudal_class, masks[-1], False, min_voxels, sz)
    if ribs_piece is not None:
        # the lowest thoracic vertebra of that piece (a thoracic column is one class: split it first)
        thoracic, _ = split_tall([ribs_piece], spacing_zyx)
        t12 = min(thoracic, key=lambda m: centre_mm(m, spacing_zyx)[0])
        if np.linalg.norm(centre_mm(t12, spacing_zyx) - centre_mm(masks[0], spacing_zyx)) < GAP_SAME_MM:
            ribs_piece = None  # thoracic voxels on the top vertebra itself: which one it is stays open
        else:
            masks = [t12] + masks
            evidence = np.vstack([class_evidence([t12], labels, n_classes, probabilities), evidence])
            network = [0] + network
    centres = [centre_mm(m, spacing_zyx) for m in masks]
    gaps = column_gaps(centres)
    rooms = [_room_mm(a, b, spacing_zyx) for a, b in zip(masks, masks[1:])]
    steps = level_steps(gaps, rooms, [height_mm(m, spacing_zyx) for m in masks]) if gaps else []
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
    outside = [level_name(lev) for lev in levels if not 1 <= lev <= 5]
    if outside:
        why = ("the sequence fitted to the network's evidence" if naming.how == "unanchored" else
               f"counting from the {'thoracic vertebra above and the sacrum below' if naming.how == 'both' else naming.how}")
        naming.warnings.append(f"WARNING: {why} makes {', '.join(outside)} of vertebrae the network labelled "
                               f"lumbar; they are not reported as lumbar vertebrae. Check the levels.")
    if levels != network:
        old = ", ".join(LABEL_NAMES.get(lab, "?") for lab in network)
        new = ", ".join(level_name(lev) for lev in levels)
        why = {"sacrum": "counted up from the sacrum below", "ribs": "counted down from the thoracic vertebra above",
               "both": "counted from the thoracic vertebra above and the sacrum below",
               "unanchored": "one consecutive sequence fitted to the network's evidence"}[naming.how]
        order = (" (the network's names were out of anatomical order)"
                 if sorted(network) != network else "")
        naming.notes.append(f"Vertebrae renamed {old} -> {new} from superior to inferior{order}: {why}. "
                            f"Check the labels.")
    if naming.how == "unanchored":
        named = ", ".join(level_name(lev) for lev in levels if 1 <= lev <= 5)
        # "not recognised", never "not in view": an anchor in view can go unrecognised (cut, or thick slices)
        naming.warnings.append(f"WARNING: the level names ({named}) are unanchored: neither the network nor the CT's "
                               f"bone showed the sacrum right below or a rib-bearing vertebra right above the column "
                               f"(out of view, or not recognised), so they rest on the network's reading of the "
                               f"vertebrae alone. Check the levels against the ribs or the sacrum.")
