"""Counting the finder's vertebrae (inference/naming.name_peaks, issue 23): its centre peaks are the instances,
its classes the evidence; the thoracic peaks above and the caudal peak below anchor one consecutive count."""

from __future__ import annotations

import numpy as np

from LumbarSegLib.inference.naming import name_peaks
from LumbarSegLib.inference.networks import CONTEXT_CLASSES

GAP = 31.0
T, C = 6, 7  # the finder's thoracic and caudal classes


def _column(classes, gaps=None, confidence=0.8):
    """Centres (z, y, x mm) top first, ``GAP`` apart (or ``gaps``), and evidence favouring ``classes``."""
    gaps = gaps or [GAP] * (len(classes) - 1)
    z = 400.0 - np.concatenate([[0.0], np.cumsum(gaps)])
    centres = [np.array([zi, 100.0, 100.0]) for zi in z]
    ev = np.full((len(classes), 8), (1 - confidence) / 7)
    for i, c in enumerate(classes):
        ev[i, c] = confidence
    ev[:, 0] = 0.5  # background around the peak is ignored
    return centres, ev


def _named(result):
    """The lumbar levels named, top first."""
    return [lev for _, lev in sorted(result.lumbar().items())]


def test_thoracic_above_and_sacrum_below_agree_and_name_every_vertebra():
    centres, ev = _column([T, T, 1, 2, 3, 4, 5, C])
    got = name_peaks(centres, ev, CONTEXT_CLASSES)
    assert got.how == "both" and not got.warnings
    assert got.levels == [-1, 0, 1, 2, 3, 4, 5, 6]
    assert got.lumbar() == {2: 1, 3: 2, 4: 3, 5: 4, 6: 5}


def test_the_count_overrules_shifted_classes_of_the_finder():
    # the finder's own classes are one level off everywhere (thick slices), but T12 and the sacrum are seen
    centres, ev = _column([T, 2, 3, 4, 5, 5, C])
    got = name_peaks(centres, ev, CONTEXT_CLASSES)
    assert got.how == "both"
    assert _named(got) == [1, 2, 3, 4, 5]
    assert any("renamed" in n for n in got.notes)


def test_ribs_alone_count_down_and_sacrum_alone_counts_up():
    centres, ev = _column([T, T, 2, 2, 3])  # a partial view: T11, T12, then three lumbar vertebrae
    got = name_peaks(centres, ev, CONTEXT_CLASSES)
    assert got.how == "ribs" and _named(got) == [1, 2, 3]
    centres, ev = _column([3, 4, 5, C])  # L3-L5 above the sacrum
    got = name_peaks(centres, ev, CONTEXT_CLASSES)
    assert got.how == "sacrum" and _named(got) == [3, 4, 5] and not got.warnings


def test_one_anchor_against_the_rest_of_the_column_is_warned_and_unanchored():
    # L1 looks thoracic (a T12-like L1), the rest of the column is recognised: the whole column's evidence
    # names it, and the warning says that counting down from the thoracic-looking vertebra would not
    centres, ev = _column([T, T, 2, 3, 4, 5])
    got = name_peaks(centres, ev, CONTEXT_CLASSES)
    assert _named(got) == [1, 2, 3, 4, 5] and got.how == "unanchored"
    assert any("do not agree on the levels" in w and "L2, L3, L4, L5" in w for w in got.warnings)
    centres, ev = _column([2, 4, 4, C])  # muddled classes above the sacrum: L2-L4 or L3-L5?
    got = name_peaks(centres, ev, CONTEXT_CLASSES)
    assert got.how == "unanchored" and any("Check the levels" in w for w in got.warnings)


def test_a_thoracic_only_column_names_no_lumbar_vertebra():
    centres, ev = _column([T] * 7)
    got = name_peaks(centres, ev, CONTEXT_CLASSES)
    assert got.lumbar() == {} and got.levels[-1] == 0


def test_without_anchors_the_names_follow_the_classes_and_are_warned_unanchored():
    centres, ev = _column([2, 3, 4])
    got = name_peaks(centres, ev, CONTEXT_CLASSES)
    assert got.how == "unanchored" and _named(got) == [2, 3, 4]
    assert any("unanchored" in w for w in got.warnings)


def test_anchors_one_level_apart_warn_of_transitional_anatomy():
    centres, ev = _column([T, 1, 2, 3, 4, 5, 5, C])  # six vertebrae between T12 and the sacrum: an L6?
    got = name_peaks(centres, ev, CONTEXT_CLASSES)
    assert any("transitional anatomy" in w for w in got.warnings) and got.how == "unanchored"


def test_a_wide_gap_skips_a_level_and_two_close_peaks_are_one_vertebra():
    centres, ev = _column([T, 1, 2, 4, 5, C], gaps=[GAP, GAP, 2 * GAP, GAP, GAP])  # L3 missed
    got = name_peaks(centres, ev, CONTEXT_CLASSES)
    assert _named(got) == [1, 2, 4, 5]
    assert any("missed" in w for w in got.warnings)
    centres, ev = _column([T, 1, 1, 2, 3, 4, 5, C], gaps=[GAP, 14.0, GAP, GAP, GAP, GAP, GAP])
    got = name_peaks(centres, ev, CONTEXT_CLASSES, values=[0.9, 0.5, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9])
    assert got.kept == [0, 2, 3, 4, 5, 6, 7] and got.how == "both"
    assert _named(got) == [1, 2, 3, 4, 5]
