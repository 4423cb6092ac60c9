"""The finder's path through stage 3 (inference/by_vertebra.segment_counted, issue 23): the finder's peaks on the
CT, named by counting along the column, seed stage 3, and each vertebra gets the counted level.

The two networks here are small rule-based torch modules, so the test knows what they see: the "finder" reads
a vertebra's class from its HU (each box of the synthetic column is filled with its class's HU) and puts its
centre at the middle of each bony box; the "stage 3" keeps the bone around the heatmap at the crop's middle.
What is tested is the path between them: the strip, the peaks, the count, the seeds, the merged labels."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from LumbarSegLib.inference import by_vertebra, morphology, orientation
from LumbarSegLib.inference.finder import N_CLASSES, FinderConfig
from LumbarSegLib.inference.preprocess import apply_window
from LumbarSegLib.inference.vertebra_net import VertebraNetConfig, window

SP = 2.0
GAP_MM = 31.0
T, C = 6, 7


def _hu_of(cls: int) -> float:
    return 300.0 + 60.0 * cls  # 360 (L1) .. 720 (caudal) HU


def _column(classes):
    """A CT (LPS, 2 mm) with a 40 x 30 x 22 mm bony box per entry of ``classes`` (top first; None: none there),
    GAP_MM apart; the middle z (voxels) of each box."""
    size = (80, 80, 200)  # x, y, z
    ct = np.full(size[::-1], 40.0, np.float32)
    mids = []
    for i, cls in enumerate(classes):
        if cls is None:  # no vertebra here: a gap where one was missed
            continue
        zc = int(round(size[2] - 30 - i * GAP_MM / SP))
        ct[zc - 5:zc + 6, 33:48, 30:50] = _hu_of(cls)
        mids.append(zc)
    img = sitk.GetImageFromArray(ct)
    img.SetSpacing((SP, SP, SP))
    img.SetOrigin((-80.0, -80.0, -200.0))
    return img, mids


class BandFinder(torch.nn.Module):
    """Class k where the window's HU is k's band; the centre channel peaks in the middle of each bony box."""

    def __init__(self):
        super().__init__()
        self.config = FinderConfig()

    def forward(self, x):
        hu = x[:, 0] * 1800.0 - 500.0  # apply_window's inverse
        out = torch.full((x.shape[0], N_CLASSES + 1) + x.shape[2:], -8.0)
        out[:, 0] = torch.where(hu < 200, 8.0, -8.0)
        for k in range(1, N_CLASSES):
            out[:, k] = torch.where((hu - _hu_of(k)).abs() < 30, 8.0, -8.0)
        bone = (hu > 200).float()[:, None]
        pooled = F.avg_pool3d(F.avg_pool3d(bone, 5, 1, 2), 5, 1, 2)[:, 0]
        out[:, N_CLASSES] = 14.0 * (pooled - 0.6)
        return out


class MiddleBone(torch.nn.Module):
    """Stage 3 as a rule: the bone within about 17 mm of the crop's centre (where its heatmap is)."""

    def __init__(self):
        super().__init__()
        self.config = VertebraNetConfig()

    def forward(self, x):
        bone = x[:, :1] > window(torch.tensor(200.0))
        return torch.where(bone & (x[:, 1:2] > 0.002), 8.0, -8.0)


def _run(classes):
    img, mids = _column(classes)
    messages: list[str] = []
    got = by_vertebra.segment_counted(img, (-80 + 40 * SP - SP, -80 + 40 * SP - SP), (-180.0, 180.0),
                                      BandFinder(), MiddleBone(), messages)
    return got, mids, messages


def _level_at(labels, zc):
    return int(np.bincount(labels[zc - 3:zc + 4, 35:46, 32:48].ravel()).argmax())


def test_counted_levels_reach_the_label_map_where_the_finders_classes_are_off_by_one():
    classes = [T, T, 2, 3, 4, 5, 5, C]  # the finder calls L1 "L2", ... (thick slices); T12 and the sacrum in view
    got, mids, messages = _run(classes)
    assert [_level_at(got.labels, z) for z in mids] == [0, 0, 1, 2, 3, 4, 5, 0]
    # the synthetic CT shows no ribs and no pelvis: the names stand, unanchored and said to be
    assert got.naming == {f"L{i}": "unanchored" for i in range(1, 6)} and got.upside_down is None
    assert any("unanchored" in w for w in got.warnings)
    assert any("renamed" in m for m in messages)


def test_a_thoracic_column_gives_no_lumbar_vertebra_and_upside_down_anatomy_is_named():
    got, _, messages = _run([T] * 6)
    assert not got.labels.any() and got.naming == {}
    assert any("6 vertebra(e)" in m and "T7, T8, T9, T10, T11, T12: none of them lumbar" in m for m in messages)
    got, mids, _ = _run([C, 5, 4, 3, 2, 1, T, T])  # the column mirrored head-to-feet
    assert "thoracic vertebrae (with ribs) lie below" in got.upside_down and "sacrum lies above" in got.upside_down
    assert not got.labels.any()  # nothing named: the pipeline refuses
    assert orientation.peak_contradiction(["thoracic", "L1", "L2", "L3", "caudal"]) == []
    assert orientation.peak_contradiction(["L3", "L4", "thoracic"]) == []  # one misread vertebra below: no
    # an upright partial view whose L5 and sacrum the finder took for thoracic: one piece of evidence only warns
    messages: list[str] = []
    assert orientation.finder_verdict(["L3", "L4", "thoracic", "thoracic"], messages) is None
    assert len(messages) == 1 and messages[0].startswith("WARNING: the image may be upside down")
    assert orientation.finder_verdict(["caudal", "L4", "L3", "thoracic", "thoracic"], [])


def test_a_weak_sign_of_upside_down_anatomy_is_given_with_the_vertebrae_named_and_dropped_with_none():
    """Thoracic phantom 7102: the finder read its top vertebra as lumbar above ten thoracic ones (one sign of
    upside-down anatomy), the count named none lumbar, and "the vertebrae were named" was said of none."""
    got, _, messages = _run([2] + [T] * 6)
    assert not got.labels.any() and got.orientation_warnings == []
    assert not any("upside down" in m for m in messages)
    got, _, messages = _run([3, 4, 5, T, T])  # an upright partial view whose sacrum and below look thoracic
    assert got.labels.any() and len(got.orientation_warnings) == 1
    assert got.orientation_warnings[0].startswith("WARNING: the image may be upside down")
    assert not any("upside down" in m for m in messages)  # the pipeline gives it once vertebrae are left


def test_the_window_and_the_finders_input_agree():
    hu = np.array([-1000.0, 40.0, 500.0, 2000.0], np.float32)
    assert np.allclose(apply_window(hu) * 1800.0 - 500.0, np.clip(hu, -500, 1300))


def test_the_strip_runs_along_the_column_of_bone_not_the_box_centre():
    """The localizer's box can reach far in front of the spine (the pelvis of phantom 5009): the finder's strip,
    128 mm across, is centred on the column of bone within the box's height instead."""
    from LumbarSegLib.inference.pipeline import index_box_to_lps, strip_centre

    img, _ = _column([1, 2, 3, 4, 5])  # bony boxes at y 33-48, x 30-50 (voxels): the column's centre
    lo, hi = np.array([0, 0, 20]), np.array([80, 30, 180])  # a box centred 25 voxels (50 mm) in front of it
    x, y = strip_centre(img, (lo, hi))
    mn, mx = index_box_to_lps(img, lo, hi)
    assert abs(y - (mn[1] + mx[1]) / 2) > 40
    # the column (x 30-49, y 33-47 voxels), to within the body-wide filter's plateau
    assert abs(x - (-80 + 39.5 * SP)) < 6 and abs(y - (-80 + 40 * SP)) < 6
    empty = sitk.Image(img.GetSize(), sitk.sitkFloat32) - 1000.0
    empty.CopyInformation(img)
    assert strip_centre(empty, (lo, hi)) == ((mn[0] + mx[0]) / 2, (mn[1] + mx[1]) / 2)  # no bone: the box's centre


def test_a_vertebra_whose_centre_lies_beyond_the_scan_counts_but_is_not_segmented(monkeypatch):
    """sub-verse007 ends in the L3/L4 disc: the finder's centre channel peaks on what is in view of L4, its centre
    beyond the image's edge; a surface of that piece must not be reported as L4."""
    from dataclasses import replace

    from LumbarSegLib.inference import finder

    whole, mids = _column([T, 1, 2, 3, 4, 5])
    img = whole[:, :, mids[-1] + 2:]  # the scan ends 4 mm above L5's middle: most of L5 is out of view
    mids = [z - (mids[-1] + 2) for z in mids]
    low = np.asarray(img.TransformContinuousIndexToPhysicalPoint((40.0, 40.0, -0.4)))  # within half a voxel
    assert not by_vertebra.outside_scan(img, low)
    assert by_vertebra.outside_scan(img, low - [0.0, 0.0, 0.3 * SP])
    assert by_vertebra.outside_scan(img, low + [200.0, 0.0, 40.0])  # beside it
    found = finder.find_vertebrae

    def last_beyond_the_edge(*args, **kwargs):  # as the trained finder puts it: at L5's true middle
        peaks = found(*args, **kwargs)
        true_middle = np.asarray(whole.TransformIndexToPhysicalPoint((40, 40, int(mids[-1] + whole.GetSize()[2]
                                                                               - img.GetSize()[2]))))
        return peaks[:-1] + [replace(peaks[-1], centre_mm=true_middle)]

    monkeypatch.setattr(finder, "find_vertebrae", last_beyond_the_edge)
    messages: list[str] = []
    got = by_vertebra.segment_counted(img, (-80 + 40 * SP - SP, -80 + 40 * SP - SP), (-180.0, 180.0),
                                      BandFinder(), MiddleBone(), messages)
    assert [_level_at(got.labels, z) for z in mids[:-1]] == [0, 1, 2, 3, 4]
    assert not (got.labels == 5).any()  # L5 counted, not segmented
    assert sorted(got.naming) == ["L1", "L2", "L3", "L4"]
    assert any(m.startswith("L5 lie(s) mostly outside the scan") for m in messages), messages


def test_a_vertebra_reaching_the_scans_first_or_last_slice_is_said_to_be_cut():
    labels = np.zeros((40, 8, 8), np.uint8)
    labels[0:6, 2:6, 2:6] = 5  # L5 on the first slice (the feet's end in LPS)
    labels[12:24, 2:6, 2:6] = 4
    labels[30:40, 2:6, 2:6] = 1  # L1 on the last (the head's end)
    notes = by_vertebra.cut_by_scan_ends(morphology.label_boxes(labels), labels.shape[0])
    assert len(notes) == 2
    assert notes[0].startswith("L1 reaches the upper end of the scan") and notes[1].startswith("L5 reaches the lower")
    labels[30:40] = 0
    labels[0:6] = 0
    assert by_vertebra.cut_by_scan_ends(morphology.label_boxes(labels), labels.shape[0]) == []


def test_one_measure_of_the_field_of_view_cutting_a_vertebra():
    """The pipeline's note (z ends only), the measurements' touches_image_edge and the trabecular ROIs read
    morphology.ends_reached: a vertebra reaching only a side of the image is cut for the measurements, not noted."""
    from LumbarSegLib.measures import measurements

    labels = np.zeros((40, 8, 8), np.uint8)
    labels[12:24, 2:8, 2:6] = 3  # reaches the last row (y) only
    box = morphology.label_boxes(labels)[3]
    assert morphology.ends_reached(box, labels.shape) == [(1, "upper")]
    assert by_vertebra.cut_by_scan_ends({3: box}, labels.shape[0]) == []
    image = sitk.GetImageFromArray(labels)
    assert measurements.measure(labels, np.zeros(labels.shape, np.int16), image)["L3"]["touches_image_edge"] is True
    labels[:] = 0
    labels[12:24, 2:6, 2:6] = 3
    box = morphology.label_boxes(labels)[3]
    assert morphology.ends_reached(box, labels.shape) == []
    assert measurements.measure(labels, np.zeros(labels.shape, np.int16), image)["L3"]["touches_image_edge"] is False


class AllBone(torch.nn.Module):
    """Stage 3 gone wrong: every bone of the crop, so neighbouring crops take the same bone."""

    def __init__(self):
        super().__init__()
        self.config = VertebraNetConfig()

    def forward(self, x):
        return torch.where(x[:, :1] > window(torch.tensor(200.0)), 8.0, -8.0)


def test_two_centres_on_one_bone_make_the_names_a_naming_warning():
    """Stage 3 finding the same bone at two counted centres means the count took one vertebra for two: the names
    on one side may be shifted, so the names carry "check the levels" (a naming warning), not only a message."""
    from LumbarSegLib.results.naming_basis import CHECK_LEVELS, level_check

    img, _ = _column([T, 1, 2, 3, 4, 5, C])
    messages: list[str] = []
    got = by_vertebra.segment_counted(img, (-80 + 40 * SP - SP, -80 + 40 * SP - SP), (-180.0, 180.0),
                                      BandFinder(), AllBone(), messages)
    dup = [w for w in got.warnings if "are one vertebra" in w]
    assert dup and all(w.startswith("WARNING:") and w in messages for w in dup)
    for name, how in got.naming.items():
        assert level_check(how, got.warnings) == CHECK_LEVELS, name
    # a chain (A on B's bone, B on C's) names the vertebra left at its end
    assert by_vertebra.kept_twin(1, {1: 2, 2: 3}) == 3 and by_vertebra.kept_twin(4, {1: 2}) == 4


def test_a_count_with_no_lumbar_vertebra_keeps_its_doubts():
    """A column counted with no lumbar vertebra whose count has doubts (here a vertebra missed in a wide gap):
    "no lumbar spine" is then itself less certain, and the messages say why (the count's warnings)."""
    got, _, messages = _run([T, T, None, T, T])
    assert not got.labels.any()
    assert any("none of them lumbar" in m for m in messages)
    assert any(m.startswith("WARNING:") and "missed" in m for m in messages)


def test_on_the_xunets_path_two_names_on_one_bone_are_a_naming_warning_too():
    img, mids = _column([1, 2, 3, 4, 5])
    labels = np.zeros(img.GetSize()[::-1], np.uint8)
    for level, zc in enumerate(mids, start=1):  # the XUNet's vertebrae: each box under its name
        labels[zc - 5:zc + 6, 33:48, 30:50] = level
    messages: list[str] = []
    naming_warnings: list[str] = []
    by_vertebra.refine_vertebrae(img, labels, AllBone(), messages, naming_warnings=naming_warnings)
    assert naming_warnings and all(w.startswith("WARNING:") and "Check the levels" in w for w in naming_warnings)
    assert set(naming_warnings) <= set(messages)
