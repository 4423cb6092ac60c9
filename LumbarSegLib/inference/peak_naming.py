"""Counting the finder's vertebrae (:mod:`.finder`): the instances are its centre peaks, the evidence its classes.

The whole column gets one consecutive sequence of levels that the class evidence of every peak together favours
(:func:`decode_peaks`, scored as :mod:`.naming` scores the XUNet's pieces); only the CT's bone
(:mod:`.anchors`) anchors it, and every doubt is a warning (:func:`name_peaks`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..constants import LABEL_NAMES, NUM_CLASSES, TRANSITIONAL
from . import anchors as ct_anchors
from .instances import GAP_MISSED_MM, GAP_SAME_MM, MISSED_RATIO, column_gaps, gap_thresholds, gaps_along_column
from .naming import EVIDENCE_FLOOR, class_of_level, level_name



@dataclass
class PeakNaming:
    """The level of each of the finder's peaks (top first): 0 is T12 and below it thoracic, 1..5 L1..L5, 6 and
    more below L5 (6: the sacrum, or a sixth lumbar vertebra). ``how`` as :class:`.naming.ColumnNaming`'s; ``kept``:
    the indices of the peaks counted (one of two peaks too close to be two vertebrae is dropped)."""
    levels: list[int]
    how: str
    kept: list[int]
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    centres_mm: list = field(default_factory=list)  # of the peaks counted (``kept``), as given
    classes: list = field(default_factory=list)  # the finder's own class of each peak counted (0..5, context)

    def lumbar(self) -> dict[int, int]:
        """Peak index -> lumbar level (1..5) of the peaks named L1..L5."""
        return {k: lev for k, lev in zip(self.kept, self.levels) if 1 <= lev <= 5}


def _finder_anchors(classes: list[int], offsets: list[int], context_classes) -> tuple[int | None, int | None]:
    """(ribs_start, sacrum_start) from the finder's own classes: the lowest peak it calls thoracic above the
    highest it calls lumbar is T12 (level 0); the highest it calls caudal below the lowest lumbar one is the
    sacrum (level 6). None where no such peak is in view."""
    thoracic, caudal = class_of_level(0, context_classes), class_of_level(6, context_classes)
    lumbar = [i for i, c in enumerate(classes) if 1 <= c < NUM_CLASSES]
    top = lumbar[0] if lumbar else len(classes)
    low = lumbar[-1] if lumbar else -1
    above = [i for i, c in enumerate(classes) if c == thoracic and i < top]
    below = [i for i, c in enumerate(classes) if c == caudal and i > low]
    ribs = -offsets[above[-1]] if above else None
    sacrum = 6 - offsets[below[0]] if below else None
    return ribs, sacrum


def _peak_levels_score(start: int, offsets: list[int], evidence: np.ndarray, context_classes) -> float:
    """Log-evidence of the levels ``start + offsets`` for the finder's peaks (thoracic above L1, caudal below L5)."""
    return float(sum(np.log(EVIDENCE_FLOOR + evidence[i, class_of_level(start + o, context_classes)])
                     for i, o in enumerate(offsets)))


def decode_peaks(offsets: list[int], evidence: np.ndarray, context_classes) -> int:
    """The first peak's level that the finder's class evidence favours for the whole column, from a column of
    thoracic vertebrae alone (T1 down) to one of the sacrum alone; ties go to the level nearest the median of
    what each lumbar-looking peak says on its own."""
    last = offsets[-1]
    candidates = range(-11 - last, 7)
    own = [c - o for c, o in zip((int(np.argmax(row)) for row in evidence), offsets) if 1 <= c < NUM_CLASSES]
    middle = float(np.median(own)) if own else 0.0
    return max(candidates, key=lambda s: (round(_peak_levels_score(s, offsets, evidence, context_classes), 6),
                                          -abs(s - middle)))


def name_peaks(centres_mm: list[np.ndarray], evidence: np.ndarray, context_classes, values=None,
               hu: np.ndarray | None = None, spacing_zyx=None) -> PeakNaming | None:
    """Name the finder's peaks by counting (:mod:`.naming`'s docstring; :func:`.naming.name_column` for the
    XUNet's pieces).

    ``centres_mm``: the peaks' centres (z, y, x mm in ``hu``'s frame), top first; ``evidence``: their class
    probabilities (peaks, background + L1-L5 + ``context_classes``); ``values``: the centre channel's value at
    each (the stronger of two peaks too close to be two vertebrae is kept).

    The whole column gets the one consecutive sequence of levels (gaps wide enough for a missed vertebra skip
    a level) that the class evidence of every peak together favours, thoracic and sacrum included
    (:func:`decode_peaks`): no single class decides, so a T12-like L1 does not shift every name; a thoracic-
    looking and a caudal-looking peak that agree with each other fix it. The anchors then say how well founded
    it is, from the CT's bone (``hu``, ``spacing_zyx``; :mod:`.anchors`, nothing learned): ribs on the vertebra
    right above the one counted L1 ("ribs"); the pelvis right below the one counted L5 where the finder also
    sees the sacrum there ("sacrum"). Where counting down from the lowest thoracic-looking peak, or up from the
    highest caudal-looking one, would give other names, the names are unanchored and the warning says so
    ("transitional anatomy" when those two counts differ by one). None without peaks."""
    if not len(centres_mm):
        return None
    centres = [np.asarray(c, float) for c in centres_mm]
    values = list(values) if values is not None else [1.0] * len(centres)
    notes: list[str] = []
    kept = [0]
    # the column's scale from its centres' spacing in space (a spurious peak beside the column, 14 mm below a
    # vertebra along the spine, must not shrink it: held-out sub-ct_label-22), the gaps themselves along the spine
    same, _ = gap_thresholds(column_gaps(centres))
    for i in range(1, len(centres)):
        j = kept[-1]
        apart = abs(float(centres[j][0] - centres[i][0]))  # along the column: one beside the other is one vertebra
        if apart < same:  # keep the stronger peak
            notes.append(f"Two centres {apart:.0f} mm apart along the spine were taken as one vertebra (neighbours "
                         f"are at least {same:.0f} mm apart).")
            if values[i] > values[j]:
                kept[-1] = i
        else:
            kept.append(i)
    centres = [centres[k] for k in kept]
    ev = np.asarray(evidence, float)[kept].copy()
    ev[:, 0] = 0.0
    ev /= np.maximum(ev.sum(axis=1, keepdims=True), 1e-12)
    classes = [int(np.argmax(row)) for row in ev]
    gaps = gaps_along_column(centres)
    _, missed = gap_thresholds(column_gaps(centres))
    typical = missed / MISSED_RATIO
    steps = [max(2, int(round(g / typical))) if g > missed else 1 for g in gaps]
    offsets = [0] + [int(v) for v in np.cumsum(steps)]
    warnings = [f"WARNING: the centres of two neighbouring vertebrae are {g:.0f} mm apart (neighbours are "
                f"{GAP_SAME_MM:g}-{GAP_MISSED_MM:g} mm apart): {s - 1} vertebra(e) between them were probably "
                f"missed and counted as such. Check the levels." for g, s in zip(gaps, steps) if s > 1]
    # what the finder's classes alone would anchor: T12 at the lowest thoracic-looking peak above the lumbar-looking
    # ones, the sacrum at the highest caudal-looking peak below them; two such anchors agreeing are taken as they are
    hard_ribs, hard_sacrum = _finder_anchors(classes, offsets, context_classes)
    start = hard_ribs if hard_ribs is not None and hard_ribs == hard_sacrum else decode_peaks(offsets, ev, context_classes)
    levels = [start + o for o in offsets]
    caudal = class_of_level(6, context_classes)
    at = {lev: i for i, lev in enumerate(levels)}
    # anchored only where the CT's bone agrees (nothing learned): a finder's T12-like L1 shifted sub-verse005 unwarned
    ribs = sacrum = doubted = False
    lumbar = [i for i, lev in enumerate(levels) if 1 <= lev <= 5]
    if hu is not None and lumbar:
        first, last = lumbar[0], lumbar[-1]
        ct = ct_anchors.detect(hu, spacing_zyx, centres[first:last + 1], level_name(levels[first]),
                               level_name(levels[last]))
        warnings += ct.warnings
        # a vertebra cut by the image's edge may be a T12 whose ribs are cut off (thoracic phantom 7007: its T12 at
        # the lower edge was counted L1 under the ribs of T11, anchored): ribs never anchor such a count
        if ct.ribs and levels[first] == 1 and ct_anchors.cut_by_edge(hu, spacing_zyx, centres[first]):
            warnings.append("WARNING: the vertebra counted L1 lies at the edge of the image, cut by it: it may be a T12 "
                            "whose ribs are out of view, so the ribs above it do not anchor the count. Check the levels.")
        # below the lowest vertebra counted L1-L4 the spine goes on (L5 is left out: the sacrum below it leans back)
        elif (ct.ribs and levels[first] == 1 and levels[-1] <= 4
              and ct_anchors.spine_ends_below(hu, spacing_zyx, centres)):
            warnings.append(f"WARNING: the spine seems to end right below the vertebra counted "
                            f"{level_name(levels[-1])}: the image shows no vertebra where the next one down would be. "
                            f"An upright spine goes on below every lumbar vertebra; a thoracic spine turned "
                            f"head-to-feet ends like this, its first ribs looking like T12's. The ribs do not anchor "
                            f"the count. Is the image upside down? Check the levels.")
        elif ct.ribs and levels[first] == 1:
            ribs = True
            notes += [n for n in ct.notes if n.startswith("Ribs")]
        elif ct.ribs:
            doubted = True
            warnings.append(f"WARNING: the CT shows ribs on the vertebra right above the one named "
                            f"{level_name(levels[first])}; counting down from them would name it L1. Check the levels.")
        # the sacrum: the CT's pelvis below and the finder's caudal-looking peak there (either alone can be an L5
        # set deep between the iliac crests)
        if ct.sacrum and levels[last] == 5 and 6 in at and classes[at[6]] == caudal:
            sacrum = True
            notes += [n for n in ct.notes if n.startswith("The sacrum")]
    # a thoracic- or caudal-looking peak that would count otherwise; the CT's own ribs / pelvis overrule it
    confirmed = {"ribs": ribs, "sacrum": sacrum}
    disagree = [(name, s) for name, s in (("ribs", hard_ribs), ("sacrum", hard_sacrum))
                if s is not None and s != start and not confirmed[name]]
    if any(s is not None and s != start for s in (hard_ribs, hard_sacrum)) and not disagree:
        notes.append("The finder took a vertebra next to the lumbar spine for another kind (thoracic or sacral); the "
                     "CT's bone settles the count.")
    # a lumbar-looking vertebra counted below L5 (an L6, or the count one level off) is never settled silently
    if not sacrum and any(lev == 6 and 1 <= c < NUM_CLASSES for lev, c in zip(levels, classes)):
        doubted = True
        warnings.append(f"WARNING: {TRANSITIONAL} (a sixth lumbar vertebra, or a rib-bearing one counted L1?): the "
                        f"vertebra below the one named L5 looks lumbar.")
    if doubted or disagree:
        ribs = sacrum = False
    if disagree:
        def names(s):
            return ", ".join(level_name(s + o) for o in offsets if 1 <= s + o <= 5) or "none lumbar"
        counts = "; ".join(f"counting {'down from the lowest thoracic-looking' if n == 'ribs' else 'up from the caudal-looking'} "
                           f"vertebra names them {names(s_)}" for n, s_ in disagree)
        why = (f"WARNING: {TRANSITIONAL} (a sixth lumbar or a sacralised fifth vertebra, or a rib-bearing L1?): "
               if hard_ribs is not None and hard_sacrum is not None and abs(hard_ribs - hard_sacrum) == 1 else
               "WARNING: the vertebrae's looks do not agree on the levels: ")
        warnings.append(f"{why}the names shown ({names(start)}) fit the whole column best, but {counts}. Check the "
                        f"levels.")
    how = "both" if ribs and sacrum else "ribs" if ribs else "sacrum" if sacrum else "unanchored"
    result = PeakNaming(levels, how, kept, notes, warnings, centres, classes)
    _describe_peaks(result, classes)
    return result


def _describe_peaks(naming: PeakNaming, classes: list[int]) -> None:
    """Notes on vertebrae whose counted level differs from the finder's own class, and the unanchored warning."""
    pairs = [(c, lev) for c, lev in zip(classes, naming.levels) if 1 <= lev <= 5 or 1 <= c < NUM_CLASSES]
    if any(c != lev for c, lev in pairs):
        old = ", ".join(LABEL_NAMES.get(c, "not lumbar") for c, _ in pairs)
        new = ", ".join(level_name(lev) for _, lev in pairs)
        naming.notes.append(f"Vertebrae renamed {old} -> {new} from superior to inferior: counted along the whole "
                            f"column. Check the labels.")
    named = [level_name(lev) for lev in naming.levels if 1 <= lev <= 5]
    if naming.how == "unanchored" and named:
        naming.warnings.append(f"WARNING: the level names ({', '.join(named)}) are unanchored: neither a rib-bearing "
                               f"vertebra right above the lumbar spine nor the sacrum right below it was recognised "
                               f"(out of view, or not recognised), so they rest on the finder's reading of each "
                               f"vertebra's looks. Check the levels against the ribs or the sacrum.")
