"""The inference pipeline's geometry, crop rule, post-processing and cancellation (random weights)."""

import numpy as np
import pytest
import SimpleITK as sitk

from LumbarSegLib.inference import pipeline, preprocess
from LumbarSegLib.errors import Cancelled, InputError
from conftest import small_ct  # noqa: E402  shared test helpers


@pytest.fixture(scope="module")
def untrained():
    # Random weights: these tests check geometry and plumbing, not accuracy.
    return _random_model()


def _random_model():
    import torch

    from LumbarSegLib.inference.models import LumbarSegModel
    from LumbarSegLib.inference.networks import CONFIGS, build_networks

    torch.manual_seed(0)
    loc, xu = build_networks(CONFIGS["cpu"])
    return LumbarSegModel(CONFIGS["cpu"], loc.eval(), xu.eval(), trained=False)


@pytest.mark.slow
def test_result_is_on_the_input_grid_for_any_orientation(untrained):
    for orientation in ("RAS", "LPS", "PIR"):
        img = small_ct(orientation)
        result = pipeline.segment(img, model=untrained, device="cpu")
        assert result.labels.GetSize() == img.GetSize()
        assert result.labels.GetDirection() == img.GetDirection()
        assert np.allclose(result.labels.GetOrigin(), img.GetOrigin())
        assert result.labels.GetPixelID() == sitk.sitkUInt8
        assert not result.trained and any("randomly initialised" in m for m in result.messages)
        assert set(result.timings) >= {"load", "localize", "postprocess"}


def test_user_box_skips_localizer_and_round_trips(untrained):
    img = small_ct("RAS")
    canonical = preprocess.to_canonical(img)
    box_lps = pipeline.index_box_to_lps(canonical, (5, 8, 10), (30, 40, 50))
    # faces: origin 10 - 0.75 + 5 * 1.5 = 16.75 in x
    assert box_lps[0][0] == pytest.approx(10 - 0.75 + 5 * 1.5)
    assert box_lps[1][2] == pytest.approx(30 - 1.0 + 50 * 2.0)
    result = pipeline.segment(img, model=untrained, device="cpu", box_lps=box_lps)
    assert "localize" not in result.timings
    assert result.box_index == ((5, 8, 10), (30, 40, 50))
    assert np.allclose(result.box_lps, box_lps)
    labels = sitk.GetArrayFromImage(preprocess.to_canonical(result.labels))
    outside = np.ones_like(labels, bool)
    outside[10:50, 8:40, 5:30] = False
    assert labels[outside].max() == 0  # nothing outside the user's box


def test_box_outside_image_is_a_clear_error(untrained):
    with pytest.raises(InputError, match="outside the image"):
        pipeline.segment(small_ct(), model=untrained, device="cpu", box_lps=((500, 500, 500), (600, 600, 600)))


def test_cancel_stops_the_run(untrained):
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(Cancelled):
        pipeline.segment(small_ct(), model=untrained, device="cpu", cancel=cancel)


def test_heatmap_box_follows_paper_rule():
    heat = np.zeros((20, 10, 10), np.float32)  # (z, y, x) on the localizer grid
    heat[5:15, 4:6, 3:7] = 1.0
    heat[0, 0, 0] = 0.9  # a smaller bright region is ignored (largest component only)
    heat[5:15, 2:4, 3:7] = 0.2  # below 0.3 x max
    lo, hi = preprocess.heatmap_box(heat, image_size=(100, 100, 40))
    # x: voxels 3..6 of 10 -> 30..70 of 100, grown by 10 -> 20..80; z: 5..14 of 20 -> 10..30 of 40, +-4
    assert lo.tolist() == [20, 30, 6] and hi.tolist() == [80, 70, 34]
    assert preprocess.heatmap_box(np.zeros((4, 4, 4)), (8, 8, 8)) is None


def test_clean_labels_keeps_largest_piece_and_fixes_order():
    labels = np.zeros((60, 40, 40), np.uint8)
    labels[40:50, 5:35, 5:35] = 2  # superior block (9 mL) wrongly called L2
    labels[10:20, 5:35, 5:35] = 1  # inferior block wrongly called L1
    labels[0:2, 0:2, 0:2] = 1  # an island of L1
    messages = []
    out = pipeline.clean_labels(labels, (1.0, 1.0, 1.0), messages)
    assert out[45, 10, 10] == 1 and out[15, 10, 10] == 2
    assert out[0, 0, 0] == 0
    assert any("out of anatomical order" in m for m in messages)


def test_clean_labels_drops_slivers():
    labels = np.zeros((30, 30, 30), np.uint8)
    labels[0:5, 0:10, 0:10] = 3  # 500 mm^3 = 0.5 mL: a sliver
    assert pipeline.clean_labels(labels, (1.0, 1.0, 1.0), []).max() == 0
    labels[0:7, 0:30, 0:30] = 3  # 6.3 mL: the last few millimetres of a vertebra, too little to name
    assert pipeline.MIN_VERTEBRA_ML > 6.3 and pipeline.clean_labels(labels, (1.0, 1.0, 1.0), []).max() == 0
    labels[0:10, 0:30, 0:30] = 3  # 9 mL is kept
    assert pipeline.clean_labels(labels, (1.0, 1.0, 1.0), []).max() == 3


def test_clean_labels_fills_holes_inside_a_vertebra_but_takes_nothing_from_its_neighbours():
    labels = np.zeros((40, 40, 40), np.uint8)
    labels[5:20, 5:35, 5:35] = 3
    labels[10:15, 12:18, 12:18] = 0  # an enclosed hole (uncertain cancellous bone)
    labels[5:20, 5:30, 14] = 0  # a one-voxel crack most of the way through the block
    labels[21:35, 5:35, 5:35] = 2  # the neighbour above, 1 voxel away
    labels[20, 10:12, 10:12] = 6  # a context-class voxel in the gap stays what it was called (folded later)
    out = pipeline.clean_labels(labels, (1.0, 1.0, 1.0), [])
    assert (out[10:15, 12:18, 12:18] == 3).all() and (out[6:19, 6:30, 14] == 3).all()
    assert (out[21:35, 5:35, 5:35] == 2).all() and (out[20] == 0).all()  # the 1-voxel disc is not bridged
    assert (out[0:4] == 0).all() and (out[:, :4] == 0).all()  # no growth outwards beyond the closing


def _column(names_top_down, gap=8, height=25):
    """A (z, y, x) label column of vertebra blocks 25 voxels high (1 mm, 22.5 mL) with 8-voxel discs, top first."""
    n = len(names_top_down)
    labels = np.zeros((n * (height + gap) + 10, 40, 40), np.uint8)
    for i, lab in enumerate(names_top_down):
        z_hi = labels.shape[0] - 5 - i * (height + gap)
        labels[z_hi - height:z_hi, 5:35, 5:35] = lab
    return labels


CONTEXT = ("thoracic", "caudal")
THORACIC, CAUDAL = 6, 7


def test_context_below_renames_a_shifted_partial_column():
    # A scan from L2 down to the sacrum that the network called L1-L4: the sacrum right below says L5.
    labels = _column([1, 2, 3, 4, CAUDAL])
    messages = []
    out = pipeline.clean_labels(labels, (1.0, 1.0, 1.0), messages, CONTEXT)
    assert [int(out[z, 10, 10]) for z in (labels == 1).nonzero()[0][:1]] == [2]
    assert sorted(set(np.unique(out).tolist()) - {0}) == [2, 3, 4, 5]  # the sacrum is folded into background
    assert any("renamed L1, L2, L3, L4 -> L2, L3, L4, L5" in m and "sacrum" in m for m in messages)


def test_context_above_renames_and_agreeing_context_keeps_names():
    messages = []
    out = pipeline.clean_labels(_column([THORACIC, 2, 3, 4]), (1.0, 1.0, 1.0), messages, CONTEXT)
    assert sorted(set(np.unique(out).tolist()) - {0}) == [1, 2, 3]
    assert any("thoracic vertebra above" in m for m in messages)
    messages = []
    out = pipeline.clean_labels(_column([THORACIC, 1, 2, 3, 4, 5, CAUDAL]), (1.0, 1.0, 1.0), messages, CONTEXT)
    assert sorted(set(np.unique(out).tolist()) - {0}) == [1, 2, 3, 4, 5] and messages == []


def test_context_is_not_trusted_when_far_away_or_contradictory():
    # A thoracic vertebra 40 mm above the top lumbar vertebra is not its neighbour (one could be missing).
    labels = _column([THORACIC, 0, 2, 3], gap=8)
    messages = []
    out = pipeline.clean_labels(labels, (1.0, 1.0, 1.0), messages, CONTEXT)
    assert sorted(set(np.unique(out).tolist()) - {0}) == [2, 3]
    assert len(messages) == 1 and "unanchored" in messages[0]  # nothing anchors them
    # Four lumbar vertebrae between a thoracic one and the sacrum: the two counts differ by one level, which
    # is said (transitional anatomy), never resolved silently; the names follow the network's evidence.
    messages, naming, naming_warnings = [], {}, []
    out = pipeline.clean_labels(_column([THORACIC, 2, 3, 4, 5, CAUDAL]), (1.0, 1.0, 1.0), messages, CONTEXT,
                                naming=naming, naming_warnings=naming_warnings)
    assert sorted(set(np.unique(out).tolist()) - {0}) == [2, 3, 4, 5]
    assert any("transitional anatomy: check the levels" in m and "L1, L2, L3, L4" in m for m in messages)
    # the count's warnings are kept apart too: report.json's "naming" and every front end show them
    assert naming_warnings and all(w in messages for w in naming_warnings)
    assert any("transitional anatomy: check the levels" in w for w in naming_warnings)
    assert set(naming) == {"L2", "L3", "L4", "L5"} and set(naming.values()) <= {"sacrum", "ribs"}
    # A model without context classes: labels 6 and 7 do not occur, nothing is anchored.
    out = pipeline.clean_labels(_column([1, 2, 3]), (1.0, 1.0, 1.0), [], ())
    assert sorted(set(np.unique(out).tolist()) - {0}) == [1, 2, 3]


def test_probabilities_to_labels_resamples_smoothly():
    import torch

    probs = torch.zeros(6, 4, 4, 4)
    probs[0] = 1.0
    probs[3, :, :, 2:] = 1.0
    probs[0, :, :, 2:] = 0.0
    labels = preprocess.probabilities_to_labels(probs, (8, 8, 8))
    assert labels.shape == (8, 8, 8)
    assert (labels[:, :, :4] == 0).all() and (labels[:, :, 4:] == 3).all()


@pytest.mark.slow
def test_bundled_model_reports_no_lumbar_vertebra_on_real_thoracic_series(shared_data):
    """The classic failure is calling T12 'L1': the real 20-slice T11/T12 series must give no lumbar label."""
    from LumbarSegLib.io import images
    from LumbarSegLib.inference.models import default_model_path, load_model

    if not default_model_path().is_file():
        pytest.skip("no bundled model")
    image = images.read_ct(shared_data / "ts_dicom")
    result = pipeline.segment(image, model=load_model(), device="cpu")
    assert result.trained
    assert result.found == []
    assert sitk.GetArrayViewFromImage(result.labels).max() == 0
    assert any("No lumbar spine found" in m for m in result.messages)
    # the network's 0.1-4 mL lumbar pieces are named as dropped: none reaches the size of a real vertebra
    assert any(m.startswith("Pieces labelled") and "no piece reached 8 mL" in m for m in result.messages)


def test_nan_voxels_are_refused_not_segmented(untrained):
    """NaN makes every network output NaN: the run must not end in a confident 'no lumbar spine found'."""
    arr = sitk.GetArrayFromImage(small_ct()).astype(np.float32)
    arr[0, 0, 0] = np.nan
    img = sitk.GetImageFromArray(arr)
    with pytest.raises(InputError, match="NaN or infinite voxels; prepare it with io.prepare_ct"):
        pipeline.segment(img, model=untrained, device="cpu")


def test_the_checks_after_either_path_ask_for_the_head_feet_verdict_only_when_vertebrae_are_left():
    """pipeline.checked_vertebrae, which both paths end with: soft tissue dropped first; the XUNet's head-feet verdict
    is computed (the XUNet on the crop mirrored) and decided only when something is left to name."""
    from LumbarSegLib.inference import orientation

    labels = np.zeros((30, 20, 20), np.uint8)
    labels[5:15, 5:15, 5:15] = 3
    hu = np.full(labels.shape, 40, np.int16)  # soft tissue's HU everywhere: L3 is dropped
    image = sitk.GetImageFromArray(hu)
    asked = []

    def verdict():
        asked.append(1)
        return orientation.Verdict(["the sacrum lies above the lumbar spine"])

    messages: list[str] = []
    out = pipeline.checked_vertebrae(labels, image, messages, verdict)
    assert not out.any() and not asked and any("soft tissue's HU" in m for m in messages)
    hu[labels > 0] = 400  # bone: L3 stays, and the verdict is asked for and refuses
    with pytest.raises(orientation.OrientationError):
        pipeline.checked_vertebrae(labels, sitk.GetImageFromArray(hu), [], verdict)
    assert asked == [1]
    assert pipeline.checked_vertebrae(labels, sitk.GetImageFromArray(hu), [], None).any()  # untrained: no verdict
