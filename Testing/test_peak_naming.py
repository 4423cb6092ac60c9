"""Counting the finder's vertebrae (inference/peak_naming.name_peaks, issue 23): its centre peaks are the instances,
its classes the evidence for the whole column at once; the names are anchored only where the CT's own bone shows
the ribs above L1 or the pelvis below L5 (with the finder seeing the sacrum there)."""

from __future__ import annotations

import numpy as np

from LumbarSegLib.inference.peak_naming import name_peaks
from LumbarSegLib.inference.networks import CONTEXT_CLASSES

GAP = 30.0  # mm between vertebral centres; the CT's grid is 1 mm
T, C = 6, 7  # the finder's thoracic and caudal classes
X0, Y0 = 120, 55  # the column's axis
SPACING = np.ones(3)


def _column(classes, gaps=None, confidence=0.8):
    """Centres (z, y, x mm) top first, ``GAP`` apart (or ``gaps``), and evidence favouring ``classes``."""
    gaps = gaps or [GAP] * (len(classes) - 1)
    z = 255.0 - np.concatenate([[0.0], np.cumsum(gaps)])
    centres = [np.array([zi, Y0, X0]) for zi in z]
    ev = np.full((len(classes), 8), (1 - confidence) / 7)
    for i, c in enumerate(classes):
        ev[i, c] = confidence
    ev[:, 0] = 0.5  # background around the peak is ignored
    return centres, ev


def _ct(centres, ribs_on=(), sacrum_on=None, extra_above=0, extra_below=0):
    """A CT (z, y, x, 1 mm) with a bony body (30 mm wide, 22 mm high) at each centre and ``extra_above`` more
    above them, ``extra_below`` more below; ribs (90 mm out on both sides) on the bodies at ``ribs_on``, sacral
    alae abutting iliac wings at ``sacrum_on`` (indices into ``centres``)."""
    hu = np.zeros((300, 120, 240), np.float32)
    zs = [int(c[0]) for c in centres]
    zs = [zs[0] + GAP * k for k in range(extra_above, 0, -1)] + zs
    for z in zs + [zs[-1] - GAP * k for k in range(1, extra_below + 1)]:
        hu[int(z) - 11:int(z) + 11, Y0 - 15:Y0 + 15, X0 - 15:X0 + 15] = 400

    def bar(z, right, left, thick=5):
        hu[z - thick // 2:z + thick // 2 + 1, Y0 + 5:Y0 + 5 + thick, X0 - right:X0 + left + 1] = 600

    for i in ribs_on:
        bar(int(zs[i]), 90, 90)
    if sacrum_on is not None:
        for dz in range(-10, 11, 5):
            z = int(centres[sacrum_on][0]) + dz
            bar(z, 55, 55)
            bar(z, 105, -57)
            bar(z, -57, 105)
    return hu


def _named(result):
    """The lumbar levels named, top first."""
    return [lev for _, lev in sorted(result.lumbar().items())]


def test_ribs_above_and_the_sacrum_below_in_the_ct_anchor_the_whole_column():
    centres, ev = _column([T, T, 1, 2, 3, 4, 5, C])
    got = name_peaks(centres, ev, CONTEXT_CLASSES, hu=_ct(centres, ribs_on=(0, 1), sacrum_on=7), spacing_zyx=SPACING)
    assert got.how == "both" and not got.warnings
    assert got.levels == [-1, 0, 1, 2, 3, 4, 5, 6] and got.lumbar() == {2: 1, 3: 2, 4: 3, 5: 4, 6: 5}
    # the same peaks without the CT: the same names, said to be unanchored
    bare = name_peaks(centres, ev, CONTEXT_CLASSES)
    assert bare.levels == got.levels and bare.how == "unanchored" and any("unanchored" in w for w in bare.warnings)


def test_thoracic_and_caudal_peaks_agreeing_overrule_shifted_classes():
    # the finder's own lumbar classes are one level off everywhere (thick slices); T12 and the sacrum agree
    centres, ev = _column([T, 2, 3, 4, 5, 5, C])
    got = name_peaks(centres, ev, CONTEXT_CLASSES, hu=_ct(centres, ribs_on=(0,), sacrum_on=6), spacing_zyx=SPACING)
    assert got.how == "both" and _named(got) == [1, 2, 3, 4, 5]
    assert any("renamed" in n for n in got.notes)


def test_ribs_alone_count_down_and_the_sacrum_needs_the_finder_and_the_pelvis():
    centres, ev = _column([T, T, 2, 2, 3])  # a partial view: T11, T12, then three lumbar vertebrae (and L4 unfound)
    got = name_peaks(centres, ev, CONTEXT_CLASSES, hu=_ct(centres, ribs_on=(0, 1), extra_below=1), spacing_zyx=SPACING)
    assert got.how == "ribs" and _named(got) == [1, 2, 3]
    centres, ev = _column([3, 4, 5, C])  # L3-L5 above the sacrum
    got = name_peaks(centres, ev, CONTEXT_CLASSES, hu=_ct(centres, sacrum_on=3), spacing_zyx=SPACING)
    assert got.how == "sacrum" and _named(got) == [3, 4, 5] and not got.warnings
    got = name_peaks(centres, ev, CONTEXT_CLASSES, hu=_ct(centres), spacing_zyx=SPACING)  # no pelvis in the CT
    assert got.how == "unanchored" and _named(got) == [3, 4, 5]


def test_a_t12_like_l1_without_ribs_in_the_ct_is_named_by_the_column_and_warned():
    # L1 looks thoracic to the finder, the rest of the column is recognised: the whole column's evidence names
    # it, the names stay unanchored, and the warning says counting down from the thoracic-looking one would not
    centres, ev = _column([T, T, 2, 3, 4, 5])
    got = name_peaks(centres, ev, CONTEXT_CLASSES, hu=_ct(centres), spacing_zyx=SPACING)
    assert _named(got) == [1, 2, 3, 4, 5] and got.how == "unanchored"
    assert any("do not agree on the levels" in w and "L2, L3, L4, L5" in w for w in got.warnings)
    # the same looks, but the vertebra counted T12 plainly carries ribs while the one counted L1 does not
    anchored = name_peaks(centres, ev, CONTEXT_CLASSES, hu=_ct(centres, ribs_on=(0,)), spacing_zyx=SPACING)
    assert _named(anchored) == [1, 2, 3, 4, 5] and anchored.how == "ribs" and not anchored.warnings


def test_ribs_in_the_ct_above_a_vertebra_not_counted_l1_are_warned():
    centres, ev = _column([2, 3, 4])  # the finder says L2-L4; the CT shows a rib-bearing vertebra right above
    got = name_peaks(centres, ev, CONTEXT_CLASSES, hu=_ct(centres, ribs_on=(0,), extra_above=1), spacing_zyx=SPACING)
    assert got.how == "unanchored" and any("counting down from them would name it L1" in w for w in got.warnings)


def test_a_thoracic_only_column_names_no_lumbar_vertebra():
    centres, ev = _column([T] * 7)
    got = name_peaks(centres, ev, CONTEXT_CLASSES)
    assert got.lumbar() == {} and got.levels[-1] == 0


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
    centres[2][1] += 20  # one beside the other, 24 mm apart in space: one vertebra all the same
    got = name_peaks(centres, ev, CONTEXT_CLASSES, values=[0.9, 0.5, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9])
    assert got.kept == [0, 2, 3, 4, 5, 6, 7]
    assert _named(got) == [1, 2, 3, 4, 5]


def test_a_peak_off_the_columns_line_skips_no_level():
    # T12's body out of a slab's view: its peak on the arch, 50 mm behind L1's (58 mm away in space, 28 along
    # the spine): no vertebra was missed between them
    centres, ev = _column([T, T, 2, 3, 4, 4], gaps=[28.0, 22.0, 28.0, 28.0, 26.0])
    centres[0][1] += 50
    got = name_peaks(centres, ev, CONTEXT_CLASSES)
    assert not any("missed" in w for w in got.warnings)
    assert got.levels == [0, 1, 2, 3, 4, 5]
    # a weak peak beside the column 14 mm below L2 (held-out sub-ct_label-22): one vertebra with L2, and the
    # column's scale still comes from its centres' spacing in space (no "missed" L3 below it)
    centres, ev = _column([2, 2, 3, 4], gaps=[14.0, 16.0, 32.0])
    centres[1][2] += 26
    got = name_peaks(centres, ev, CONTEXT_CLASSES, values=[0.75, 0.54, 0.85, 0.76])
    assert got.kept == [0, 2, 3] and _named(got) == [2, 3, 4]
    assert not any("missed" in w for w in got.warnings)


def test_ribs_do_not_anchor_an_l1_cut_by_the_edge_of_the_image():
    """Thoracic phantom 7007: its T12, cut by the image's lower edge, was counted L1 under T11's ribs and anchored.
    A vertebra counted L1 at the image's edge may be a T12 whose ribs are out of view: warned, unanchored."""
    centres, ev = _column([T, T, 1])
    hu = _ct(centres, ribs_on=(0, 1), extra_below=1)  # L2 in view, not found
    whole = name_peaks(centres, ev, CONTEXT_CLASSES, hu=hu, spacing_zyx=SPACING)
    assert whole.how == "ribs" and _named(whole) == [1]
    cut_at = int(centres[2][0]) - 5  # the image ends 5 mm below the centre of the vertebra counted L1
    cut = name_peaks([c - [cut_at, 0, 0] for c in centres], ev, CONTEXT_CLASSES, hu=hu[cut_at:], spacing_zyx=SPACING)
    assert _named(cut) == [1] and cut.how == "unanchored"
    assert any("edge of the image" in w for w in cut.warnings)


def test_a_lumbar_looking_vertebra_counted_below_l5_from_the_ribs_is_transitional_not_anchored():
    """Counting down from the ribs to a sixth lumbar-looking vertebra: an L6, or the ribs' count one level off
    (a rib-bearing T12 counted L1). The XUNet's path warns of it; the finder's path must not settle it silently."""
    centres, ev = _column([T, 1, 2, 3, 4, 5, 5])  # T12 with ribs, then six lumbar-looking vertebrae
    got = name_peaks(centres, ev, CONTEXT_CLASSES, hu=_ct(centres, ribs_on=(0,)), spacing_zyx=SPACING)
    assert got.levels[:6] == [0, 1, 2, 3, 4, 5] and got.how == "unanchored"
    assert any("transitional anatomy" in w and "looks lumbar" in w for w in got.warnings)
    # the same column ending in a caudal-looking vertebra: the ribs anchor it, without a doubt
    centres, ev = _column([T, 1, 2, 3, 4, 5, C])
    got = name_peaks(centres, ev, CONTEXT_CLASSES, hu=_ct(centres, ribs_on=(0,)), spacing_zyx=SPACING)
    assert got.how == "ribs" and not got.warnings and _named(got) == [1, 2, 3, 4, 5]


def test_ribs_do_not_anchor_a_column_that_ends_below_its_lumbar_vertebra():
    """Thoracic phantom 7008 upside down: its T1 was counted L1 under T2's ribs and "anchored by the ribs", with no
    bone below it though the image went on. An upright spine goes on below every lumbar vertebra: warned, unanchored,
    and asked whether the image is upside down."""
    centres, ev = _column([T, T, 1])
    ended = name_peaks(centres, ev, CONTEXT_CLASSES, hu=_ct(centres, ribs_on=(0, 1)), spacing_zyx=SPACING)
    assert _named(ended) == [1] and ended.how == "unanchored"
    assert any("spine seems to end right below the vertebra counted L1" in w and "upside down" in w
               for w in ended.warnings)
    # the image ending right below it (the next vertebra out of view) says nothing: the ribs anchor it
    cut_at = int(centres[2][0]) - 20
    shifted = [c - [cut_at, 0, 0] for c in centres]
    cut = name_peaks(shifted, ev, CONTEXT_CLASSES, hu=_ct(centres, ribs_on=(0, 1))[cut_at:], spacing_zyx=SPACING)
    assert cut.how == "ribs" and not cut.warnings
    # nor does a column ending in L5 (the sacrum below it leans back, off the column's line)
    centres, ev = _column([T, 1, 2, 3, 4, 5])
    got = name_peaks(centres, ev, CONTEXT_CLASSES, hu=_ct(centres, ribs_on=(0,)), spacing_zyx=SPACING)
    assert got.how == "ribs" and _named(got) == [1, 2, 3, 4, 5]
