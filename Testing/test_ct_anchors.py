"""Anchors read from the CT's bone (inference/anchors.py) and their use in the count (naming.name_column):
ribs on the vertebra above the column anchor the names counting down; a transverse process is no rib; the
sacrum and pelvis below only confirm the ribs' count, never shift names alone."""

from __future__ import annotations

import numpy as np
import pytest

from LumbarSegLib.inference import anchors, naming, peak_naming
from LumbarSegLib.constants import NUM_CLASSES
from LumbarSegLib.inference.networks import CONTEXT_CLASSES

GAP = 30  # mm between vertebral centres; the grid is 1 mm
SHAPE = (230, 120, 240)  # z, y, x
X0, Y0 = 120, 55  # the column's axis


def _column(n_lumbar=5, above=1, below=0):
    """(hu, labels): ``above`` bony vertebrae above ``n_lumbar`` labelled ones (1.. top first), ``below``
    bony unlabelled ones below. Vertebral bodies 30 mm wide, 22 mm high, 400 HU in 0 HU soft tissue."""
    hu = np.zeros(SHAPE, np.float32)
    labels = np.zeros(SHAPE, np.uint8)
    centres = {}
    z = SHAPE[0] - 25
    for k in range(above + n_lumbar + below):
        box = (slice(z - 11, z + 11), slice(Y0 - 15, Y0 + 15), slice(X0 - 15, X0 + 15))
        hu[box] = 400
        if above <= k < above + n_lumbar:
            labels[box] = k - above + 1
        centres[k] = z
        z -= GAP
    return hu, labels, centres


def _bar(hu, z, right_mm, left_mm, thick=5):
    """A bony bar across the axis at height ``z``: out to ``right_mm`` / ``left_mm`` from the axis (a
    transverse process, a rib or an ala), ``thick`` mm high and deep."""
    hu[z - thick // 2:z + thick // 2 + 1, Y0 + 5:Y0 + 5 + thick, X0 - right_mm:X0 + left_mm + 1] = 600


def _centres_mm(labels):
    return [np.argwhere(labels == k).mean(axis=0) for k in sorted(set(np.unique(labels)) - {0})]


def test_ribs_on_both_sides_of_the_vertebra_above_fire_the_anchor():
    hu, labels, c = _column()
    _bar(hu, c[0], 90, 90)  # T12's ribs
    _bar(hu, c[1], 35, 35)  # L1's transverse processes
    got = anchors.detect(hu, (1.0, 1.0, 1.0), _centres_mm(labels))
    assert got.ribs and not got.sacrum
    assert got.measures["above_far_area_mm2"] < anchors.RIB_PLATE_MM2  # bars: 2 x 36 mm x 5 mm a slice
    assert any("Ribs on the vertebra above L1" in n for n in got.notes)


def test_lumbar_transverse_processes_are_no_ribs():
    hu, labels, c = _column()
    _bar(hu, c[0], 48, 48)  # L3-like processes (96 mm tip to tip) on the vertebra above: no rib
    assert not anchors.detect(hu, (1.0, 1.0, 1.0), _centres_mm(labels)).ribs


def test_iliac_wings_above_the_column_are_no_ribs():
    """Turned head-to-feet, the pelvis lies right above the column and its wings reach out as far as ribs: plates,
    not bars (upside-down phantoms 5007 and 7008 were "anchored by the ribs")."""
    hu, labels, c = _column()
    _bar(hu, c[0], 90, 90)  # a pair of ribs alone fires (the first test); add the wings' plates beside them
    hu[c[0] - 12:c[0] + 13, Y0 - 30:Y0 + 30, X0 - 105:X0 - 57] = 600
    hu[c[0] - 12:c[0] + 13, Y0 - 30:Y0 + 30, X0 + 57:X0 + 105] = 600
    got = anchors.detect(hu, (1.0, 1.0, 1.0), _centres_mm(labels), top_name="L1")
    assert not got.ribs
    assert got.measures["above_far_area_mm2"] >= anchors.RIB_PLATE_MM2
    assert any("as broad as an iliac wing" in w for w in got.warnings)


def test_a_rib_on_one_side_only_does_not_fire():
    hu, labels, c = _column()
    _bar(hu, c[0], 25, 90)  # a lower rib touching one side (as in phantom 100200) is not a pair of ribs
    assert not anchors.detect(hu, (1.0, 1.0, 1.0), _centres_mm(labels)).ribs


def test_a_top_piece_that_carries_a_rib_stops_the_ribs_anchor_and_says_so():
    hu, labels, c = _column()
    _bar(hu, c[0], 90, 90)
    _bar(hu, c[1], 70, 70)  # the piece named L1 carries ribs itself: it may be T12
    got = anchors.detect(hu, (1.0, 1.0, 1.0), _centres_mm(labels), top_name="L1")
    assert not got.ribs
    assert any("may carry a rib" in w for w in got.warnings)


def test_wide_lumbar_transverse_processes_do_not_fire_the_sacrum():
    hu, labels, c = _column(n_lumbar=4, above=0, below=1)
    _bar(hu, c[4], 50, 50, thick=9)  # L5 below a lowest L4: 100 mm tip to tip
    _bar(hu, c[4], 110, -95, thick=9)  # and an iliac crest beside it, soft tissue between
    _bar(hu, c[4], -95, 110, thick=9)
    assert not anchors.detect(hu, (1.0, 1.0, 1.0), _centres_mm(labels)).sacrum


def test_the_sacrum_and_iliac_wings_across_the_slice_are_seen():
    hu, labels, c = _column(n_lumbar=5, above=0, below=1)
    for dz in range(-10, 11, 5):  # sacral alae abutting the ilia: bone all across, 2 mm joints
        _bar(hu, c[5] + dz, 55, 55, thick=5)
        _bar(hu, c[5] + dz, 105, -57, thick=5)
        _bar(hu, c[5] + dz, -57, 105, thick=5)
    got = anchors.detect(hu, (1.0, 1.0, 1.0), _centres_mm(labels))
    assert got.sacrum


def test_name_column_with_the_ct_anchors_on_ribs_and_names_from_l1():
    hu, labels, c = _column(n_lumbar=3)
    _bar(hu, c[0], 90, 90)
    wrong = np.where(labels > 0, labels + 1, 0).astype(np.uint8)  # the network named them L2-L4
    col = naming.name_column(wrong, wrong, (1.0, 1.0, 1.0), hu=hu)
    assert col.how == "ribs"
    assert col.lumbar() == {0: 1, 1: 2, 2: 3}  # counted down from the ribs: L1, L2, L3
    assert any("Ribs on the vertebra above L1" in n for n in col.notes)
    assert not any("unanchored" in w for w in col.warnings)


def test_name_column_without_ribs_in_the_ct_stays_unanchored():
    hu, labels, c = _column(n_lumbar=3)
    col = naming.name_column(labels, labels, (1.0, 1.0, 1.0), hu=hu)
    assert col.how == "unanchored"
    assert any("unanchored" in w for w in col.warnings)


def test_the_sacrum_alone_does_not_shift_names():
    hu, labels, c = _column(n_lumbar=4, above=0, below=1)
    for dz in range(-10, 11, 5):
        _bar(hu, c[4] + dz, 105, 105, thick=5)
    col = naming.name_column(labels, labels, (1.0, 1.0, 1.0), hu=hu)
    assert col.how == "unanchored" and col.lumbar() == {0: 1, 1: 2, 2: 3, 3: 4}
    assert any("does not anchor the count alone" in n for n in col.notes)


@pytest.mark.slow
def test_phantom_ribs_fire_above_l1_and_not_above_l2():
    from LumbarSegLib import phantoms
    from tools.check_ct_anchors import truth_case

    ct, seg = phantoms.generate_phantom(100202, fov="lumbar", shape_library=phantoms.load_shape_library())
    hu, spacing, present, centres, ribs_t, _ = truth_case(ct, seg)
    assert present[0] == 20 and ribs_t  # L1 at the top, T12 in view (5 mm slices)
    assert anchors.detect(hu, spacing, centres).ribs
    assert not anchors.detect(hu, spacing, centres[1:]).ribs  # L1 above the top piece: no rib


def test_ribs_above_more_vertebrae_than_a_lumbar_spine_holds_do_not_anchor():
    """Counting down from ribs above the column must not name seven vertebrae L1-L7: on a chest the pieces
    below can be thoracic vertebrae whose ribs the CT check does not see (thoracic phantom seed 7007)."""
    seen = anchors.CtAnchors(ribs=True, notes=["Ribs on the vertebra above L1: ..."])
    for count, anchored in ((5, True), (6, True), (7, False)):
        notes, warnings = [], []
        ribs_start, _ = anchors.apply_to_count(seen, None, None, list(range(count)), notes, warnings)
        assert (ribs_start == 1) is anchored
        assert bool(warnings) is not anchored and (not warnings or "L7" in warnings[0])


# ------------------------------------------------------------------------------------------------------
# A thoracic column (anchors.thoracic_column, by_vertebra.drop_thoracic): vertebrae that all carry ribs
# ------------------------------------------------------------------------------------------------------

def test_a_column_whose_vertebrae_all_carry_ribs_is_thoracic_and_reports_nothing():
    from LumbarSegLib.inference import by_vertebra

    hu, labels, c = _column(n_lumbar=3, above=2)
    for k in range(5):
        _bar(hu, c[k], 90, 85)  # ribs on every vertebra (the thoracic-only phantoms: 62-112 mm both sides)
    thoracic, reaches = anchors.thoracic_column(hu, (1.0, 1.0, 1.0), _centres_mm(labels))
    assert thoracic and len(reaches) == anchors.THORACIC_ABOVE + 3
    messages = []
    out = by_vertebra.drop_thoracic(labels, hu, (1.0, 1.0, 1.0), messages)
    assert not out.any()
    assert any("thoracic column" in m and "L1, L2, L3" in m for m in messages)


@pytest.mark.parametrize("lumbar_mm", [35, 49])  # real L1-L4 reach 25-49 mm (s0328's L4 49 mm)
def test_a_lumbar_column_under_rib_bearing_vertebrae_is_kept(lumbar_mm):
    from LumbarSegLib.inference import by_vertebra

    hu, labels, c = _column(n_lumbar=5, above=2)
    _bar(hu, c[0], 90, 90)  # T11, T12 with ribs
    _bar(hu, c[1], 60, 62)
    for k in range(2, 6):
        _bar(hu, c[k], lumbar_mm, lumbar_mm)
    _bar(hu, c[6], 110, 110, thick=9)  # L5 between the iliac crests (s0328: 110 mm)
    assert not anchors.thoracic_column(hu, (1.0, 1.0, 1.0), _centres_mm(labels))[0]
    messages = []
    assert (by_vertebra.drop_thoracic(labels, hu, (1.0, 1.0, 1.0), messages) == labels).all()
    assert messages == []


def test_an_l5_between_the_iliac_crests_alone_in_view_is_kept():
    hu, labels, c = _column(n_lumbar=1, above=0, below=1)
    _bar(hu, c[0], 110, 110, thick=9)
    _bar(hu, c[1], 110, 110, thick=9)
    assert not anchors.thoracic_column(hu, (1.0, 1.0, 1.0), _centres_mm(labels))[0]


def test_the_sacrum_below_an_l5_between_the_iliac_crests_is_not_read_as_ribs():
    """A pelvic scan: L5 deep between the iliac crests and two sacral peaks of the finder below it, all reaching
    110 mm out on both sides. Read with the sacral peaks the column looked thoracic and L5 was not reported."""
    from LumbarSegLib.inference import by_vertebra

    hu, labels, c = _column(n_lumbar=1, above=0, below=2)
    for k in range(3):
        _bar(hu, c[k], 110, 110, thick=9)
    peaks = [np.array([c[k], Y0, X0], float) for k in range(3)]
    assert anchors.thoracic_column(hu, (1.0, 1.0, 1.0), peaks)[0]  # the hazard, read with the sacrum
    lumbar, caudal = 5, NUM_CLASSES + list(CONTEXT_CLASSES).index("caudal")
    counted = peak_naming.PeakNaming(levels=[5, 6, 7], how="unanchored", kept=[0, 1, 2], centres_mm=peaks,
                                     classes=[lumbar, caudal, caudal])
    column = by_vertebra.down_to_l5(counted)
    assert len(column) == 1 and np.allclose(column[0], peaks[0])
    messages = []
    assert (by_vertebra.drop_thoracic(labels, hu, (1.0, 1.0, 1.0), messages, column) == labels).all()
    assert messages == []


def test_a_thoracic_column_counted_too_low_keeps_its_rib_bearing_peaks():
    """T9-T12 counted L4, L5, "6" and "7" (the finder read T9 and T10 as lumbar): T11 and T12 are no sacrum, and
    their ribs with T9's and T10's make the column thoracic, so nothing is reported as lumbar."""
    from LumbarSegLib.inference import by_vertebra

    hu, labels, c = _column(n_lumbar=2, above=0, below=2)
    for k in range(4):
        _bar(hu, c[k], 90, 85)
    peaks = [np.array([c[k], Y0, X0], float) for k in range(4)]
    thoracic = NUM_CLASSES + list(CONTEXT_CLASSES).index("thoracic")
    counted = peak_naming.PeakNaming(levels=[4, 5, 6, 7], how="unanchored", kept=[0, 1, 2, 3], centres_mm=peaks,
                                     classes=[4, 5, thoracic, thoracic])
    column = by_vertebra.down_to_l5(counted)
    assert len(column) == 4
    messages = []
    assert not by_vertebra.drop_thoracic(labels, hu, (1.0, 1.0, 1.0), messages, column).any()
    assert any("thoracic column" in m for m in messages)

