"""Naming by counting (inference/naming.py, through pipeline.clean_labels): merged pieces split at the disc,
one consecutive sequence of levels for the column, anchored by the sacrum below and the ribs above, and
said to be unanchored or transitional when it is."""

from __future__ import annotations

import numpy as np

from LumbarSegLib.inference import instances, naming, pipeline

CONTEXT = ("thoracic", "caudal")
THORACIC, CAUDAL = 6, 7
BODY_MM, DISC_MM, WIDTH = 26.0, 4.0, 30  # an adult vertebra's height, its disc (centres 30 mm apart)


def _spine(pieces, dz=1.0):
    """(labels (z, y, x), truth (z, y, x)) of a column on a 1 x 1 x ``dz`` mm grid.

    ``pieces`` top first: (network label, true levels it covers). A label over several vertebrae also covers
    the discs between them, narrower than a body (the waist at which it must be split); different labels
    are separated by an unlabelled disc. True levels: 1..5 L1..L5, 0 T12, 6 the sacrum."""
    body, disc = int(round(BODY_MM / dz)), max(1, int(round(DISC_MM / dz)))
    n = sum(len(levels) for _, levels in pieces)
    labels = np.zeros((n * (body + disc) + 2 * disc + 2, WIDTH + 10, WIDTH + 10), np.uint8)
    truth = np.zeros_like(labels)
    z = labels.shape[0] - disc - 1
    for label, levels in pieces:
        for k, level in enumerate(levels):
            labels[z - body:z, 5:5 + WIDTH, 5:5 + WIDTH] = label
            truth[z - body:z, 5:5 + WIDTH, 5:5 + WIDTH] = level
            z -= body
            if k < len(levels) - 1:  # a disc the network bled over: labelled, but narrow
                labels[z - disc:z, 15:25, 15:25] = label
            z -= disc
    return labels, truth


def _named(out, truth):
    """True level -> the name given to (most of) that vertebra, 0 when it is not reported."""
    names = {}
    for level in sorted(set(np.unique(truth).tolist()) - {0, 6}):
        given = out[truth == level]
        names[level] = int(np.bincount(given).argmax())
    return names


def test_a_merged_piece_is_split_at_the_disc_and_names_below_it_are_not_shifted():
    # At 5 mm slices the network's "L1" covers the true L1 and L2; its L2-L4 lie on the true L3-L5.
    labels, truth = _spine([(1, [1, 2]), (2, [3]), (3, [4]), (4, [5]), (CAUDAL, [6])], dz=5.0)
    messages, how = [], {}
    out = pipeline.clean_labels(labels, (1.0, 1.0, 5.0), messages, CONTEXT, naming=how)
    assert _named(out, truth) == {1: 1, 2: 2, 3: 3, 4: 4, 5: 5}
    assert any("held two vertebrae" in m and "split" in m for m in messages)
    assert how == {f"L{k}": "sacrum" for k in range(1, 6)}


def test_split_cuts_at_the_thinnest_cross_section():
    mask = np.zeros((80, 20, 20), bool)
    mask[:, 2:18, 2:18] = True
    mask[33:36] = False
    mask[33:36, 8:12, 8:12] = True  # the disc: a narrow waist at 33-35
    cut = instances.split_at_waist(mask, np.array([1.0, 1.0, 1.0]), need_waist=True)
    assert cut is not None and 33 <= cut <= 35
    uniform = np.zeros((80, 20, 20), bool)
    uniform[:, 2:18, 2:18] = True  # no waist: no disc to cut at
    assert instances.split_at_waist(uniform, np.array([1.0, 1.0, 1.0]), need_waist=True) is None


def test_the_sacrum_below_anchors_counting_up():
    # A scan from L3 down that the network called L1-L3 (top of the crop = L1).
    labels, truth = _spine([(1, [3]), (2, [4]), (3, [5]), (CAUDAL, [6])])
    messages, how = [], {}
    out = pipeline.clean_labels(labels, (1.0, 1.0, 1.0), messages, CONTEXT, naming=how)
    assert _named(out, truth) == {3: 3, 4: 4, 5: 5}
    assert how == {"L3": "sacrum", "L4": "sacrum", "L5": "sacrum"}
    assert any("L1, L2, L3 -> L3, L4, L5" in m and "sacrum" in m for m in messages)
    assert not any("unanchored" in m or "transitional" in m for m in messages)


def test_ribs_above_alone_anchor_counting_down():
    # T12 (thoracic class) above true L1-L2 that the network called L3-L4.
    labels, truth = _spine([(THORACIC, [0]), (3, [1]), (4, [2])])
    messages, how = [], {}
    out = pipeline.clean_labels(labels, (1.0, 1.0, 1.0), messages, CONTEXT, naming=how)
    assert _named(out, truth) == {1: 1, 2: 2}
    assert how == {"L1": "ribs", "L2": "ribs"}
    assert not (out[truth == 0]).any()  # the thoracic vertebra is not reported


def test_both_anchors_agreeing_say_both():
    labels, truth = _spine([(THORACIC, [0]), (1, [1]), (2, [2]), (3, [3]), (4, [4]), (5, [5]), (CAUDAL, [6])])
    messages, how = [], {}
    out = pipeline.clean_labels(labels, (1.0, 1.0, 1.0), messages, CONTEXT, naming=how)
    assert _named(out, truth) == {k: k for k in range(1, 6)} and set(how.values()) == {"both"} and not messages


def test_no_anchor_is_unanchored_and_says_so():
    labels, truth = _spine([(2, [2]), (3, [3]), (4, [4])])
    messages, how = [], {}
    out = pipeline.clean_labels(labels, (1.0, 1.0, 1.0), messages, CONTEXT, naming=how)
    assert _named(out, truth) == {2: 2, 3: 3, 4: 4}
    assert how == {"L2": "unanchored", "L3": "unanchored", "L4": "unanchored"}
    assert any("unanchored" in m and "Check the levels" in m for m in messages)


def test_unanchored_names_follow_the_network_probabilities_when_given():
    # Labels say L1, L2 but the network's mean probabilities favour L3, L4: the evidence decides.
    labels, truth = _spine([(1, [3]), (2, [4])])
    probs = np.zeros((8,) + labels.shape, np.float32)
    probs[0] = 1.0
    for label, level in ((1, 3), (2, 4)):
        on = labels == label
        probs[:, on] = 0.0
        probs[label, on] = 0.3
        probs[level, on] = 0.7
    column = naming.name_column(labels, labels, (1.0, 1.0, 1.0), CONTEXT, probabilities=probs)
    assert column.how == "unanchored" and column.levels == [3, 4]
    column = naming.name_column(labels, labels, (1.0, 1.0, 1.0), CONTEXT)  # without: the labels' own names
    assert column.levels == [1, 2]


def test_anchors_one_level_apart_warn_of_transitional_anatomy():
    # Four lumbar vertebrae between the ribs and the sacrum (a sacralised L5, or a twelfth rib missing):
    # counting down from the ribs gives L1-L4, counting up from the sacrum L2-L5.
    labels, _ = _spine([(THORACIC, [0]), (1, [1]), (2, [2]), (3, [3]), (4, [4]), (CAUDAL, [6])])
    messages, how = [], {}
    out = pipeline.clean_labels(labels, (1.0, 1.0, 1.0), messages, CONTEXT, naming=how)
    warned = [m for m in messages if "transitional anatomy: check the levels" in m]
    assert len(warned) == 1
    assert "from the sacrum names them L2, L3, L4, L5" in warned[0] and "from the ribs names them L1, L2, L3, L4" in warned[0]
    # the names shown are one of the two counts, said to be that one, never "both"
    shown = sorted(set(np.unique(out).tolist()) - {0})
    assert (shown, set(how.values())) in (([1, 2, 3, 4], {"ribs"}), ([2, 3, 4, 5], {"sacrum"}))
    assert f"follow the {next(iter(how.values()))} count" in warned[0]


def test_anchors_two_levels_apart_are_said_to_differ():
    labels, _ = _spine([(THORACIC, [0]), (1, [1]), (2, [2]), (3, [3]), (CAUDAL, [6])])
    messages = []
    pipeline.clean_labels(labels, (1.0, 1.0, 1.0), messages, CONTEXT)
    assert any("differ by 2 levels" in m and "Check the levels" in m for m in messages)


def test_counts_from_a_column_in_order():
    # Direct: the gap model skips a level for a missed vertebra, and touching close pieces are one vertebra.
    gaps = [30.0, 61.0, 29.0, 31.0]
    assert naming.level_steps(gaps, [4.0, 33.0, 3.0, 5.0], [50.0] * 5) == [1, 2, 1, 1]
    # a wide gap without the room for a vertebra between is not a missed one
    assert naming.level_steps(gaps, [4.0, 5.0, 3.0, 5.0], [50.0] * 5) == [1, 1, 1, 1]


def test_two_touching_pieces_with_close_centres_are_one_vertebra():
    labels = np.zeros((60, 40, 40), np.uint8)
    labels[10:40, 5:35, 5:20] = 2  # one vertebra, its left half called L2
    labels[10:40, 5:35, 20:35] = 3  # and its right half L3 (centres 15 mm apart)
    messages, how = [], {}
    out = pipeline.clean_labels(labels, (1.0, 1.0, 1.0), messages, CONTEXT, naming=how)
    assert len(set(np.unique(out).tolist()) - {0}) == 1 and len(how) == 1
    assert any("are one vertebra" in m for m in messages)


def test_gap_thresholds_match_the_measured_spines():
    # the fitted model: real neighbours lie 20.7-36.6 mm apart, so neither merge nor skip fires on them
    same, missed = instances.gap_thresholds([30.0, 26.0, 36.6, 20.7])
    assert same < 20.7 and missed > 36.6
