"""Naming measured (:mod:`LumbarSegLib.training.naming_eval`): centre recall, VerSe's identification rate,
scans with every name right by anchor and acquisition, and wrong names that carry a warning."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from LumbarSegLib.training import naming_eval

T12, L1, L2, L3, SACRUM = 19, 20, 21, 22, 26


def column(codes, spacing=(1.0, 1.0, 1.0), height=24, gap=6):
    """A label image with one 25x25x24 mm block (15 mL) per code, top first (a larger z is more superior), 30 mm
    apart."""
    n = len(codes)
    arr = np.zeros((n * (height + gap) + gap, 35, 35), np.uint8)
    for i, code in enumerate(codes):
        top = arr.shape[0] - gap - i * (height + gap)
        arr[top - height:top, 5:30, 5:30] = code
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing(spacing)
    return image


def internal(verse: sitk.Image, shift: int = 0) -> sitk.Image:
    """The VerSe codes L1-L5 as the pipeline's labels 1..5, renamed ``shift`` levels down (L1 -> L2 ...)."""
    arr = sitk.GetArrayFromImage(verse)
    out = np.where((arr >= 20) & (arr <= 24), arr - 19 + shift, 0).astype(np.uint8)
    out[out > 5] = 0
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(verse)
    return image


def test_names_right_where_they_lie_are_identified_and_recalled():
    truth = column([T12, L1, L2, L3])
    row = naming_eval.score_naming(internal(truth), {"L1": "ribs", "L2": "ribs", "L3": "ribs"}, [], truth)
    assert row["anchor"] == "ribs" and row["truth"] == ["L1", "L2", "L3"]
    assert row["recalled"] == ["L1", "L2", "L3"] and row["identified"] == ["L1", "L2", "L3"]
    assert row["all_right"] and row["wrong"] == [] and row["centre_error_mm"]["L2"] == 0.0


def test_names_one_level_off_are_wrong_and_warned_only_when_unanchored_or_checked():
    truth = column([L1, L2, L3])
    shifted = internal(truth, shift=1)  # the true L1 named L2, L2 named L3, L3 named L4
    row = naming_eval.score_naming(shifted, {"L2": "sacrum", "L3": "sacrum", "L4": "sacrum"}, [], truth)
    assert row["anchor"] == "none"
    assert row["recalled"] == ["L1", "L2", "L3"]  # found where they are, whatever their names
    assert row["identified"] == [] and sorted(row["wrong"]) == ["L2", "L3", "L4"] and not row["all_right"]
    assert row["wrong_warned"] == []  # counted from an anchor without a doubt: no warning
    warned = naming_eval.score_naming(shifted, {"L2": "unanchored", "L3": "unanchored", "L4": "unanchored"}, [], truth)
    assert sorted(warned["wrong_warned"]) == ["L2", "L3", "L4"]
    checked = naming_eval.score_naming(shifted, {"L2": "sacrum", "L3": "sacrum", "L4": "sacrum"},
                                       ["WARNING: ... Check the levels."], truth)
    assert sorted(checked["wrong_warned"]) == ["L2", "L3", "L4"]


def test_a_centre_further_than_10_mm_is_not_recalled_and_the_sacrum_is_an_anchor():
    truth = column([L1, L2, SACRUM])
    pred = sitk.GetArrayFromImage(internal(truth))
    moved = np.zeros_like(pred)
    moved[:-12] = pred[12:]  # every predicted vertebra 12 mm below its true place
    image = sitk.GetImageFromArray(moved)
    image.CopyInformation(truth)
    row = naming_eval.score_naming(image, {"L1": "sacrum", "L2": "sacrum"}, [], truth)
    assert row["anchor"] == "sacrum" and row["recalled"] == [] and row["identified"] == ["L1", "L2"]


def test_the_summary_splits_by_anchor_and_acquisition_and_checks_the_targets():
    truth = column([T12, L1, L2, L3])
    right = {"source": "sub-x", "acquisition": "as stored",
             **naming_eval.score_naming(internal(truth), {"L1": "ribs", "L2": "ribs", "L3": "ribs"}, [], truth)}
    plain = column([L1, L2, L3])
    wrong = {"source": "phantom 1", "acquisition": "phantom (tight)",
             **naming_eval.score_naming(internal(plain, 1), {n: "sacrum" for n in ("L2", "L3", "L4")}, [], plain)}
    s = naming_eval.summarize([right, wrong])
    assert s["by_anchor"]["ribs"]["all_right"]["share"] == 1.0 and s["by_anchor"]["none"]["all_right"]["share"] == 0
    assert s["by_acquisition"]["as stored"]["scans"] == 1 and s["overall"]["centre_recall_10mm"]["share"] == 1.0
    assert s["overall"]["wrong_warned"] == {"n": 3, "k": 0, "share": 0.0}
    assert s["targets"]["all_right_anchored"]["met"] and not s["targets"]["wrong_warned_unanchored"]["met"]
    assert s["targets"]["centre_recall_10mm"]["value"] == 1.0  # the real row only (the phantom is apart)
    markdown = "\n".join(naming_eval.naming_markdown({"summary": s, "seed_phantoms": [100200, 100209]}))
    assert "| ribs | 1 | 100 % (3/3) | 100 % (3/3) | 100 % (1/1) | - |" in markdown
    assert "wrong_warned_unanchored >= 100 %: 0 % -> **not met**" in markdown


def test_evaluate_model_takes_the_naming_options():
    import argparse

    from LumbarSegLib.training.commands import add_evaluate_arguments

    p = argparse.ArgumentParser()
    add_evaluate_arguments(p)
    args = p.parse_args(["--naming", "--naming-phantoms", "3", "--real", "somewhere"])
    assert args.naming and args.naming_phantoms == 3 and args.real == ["somewhere"]
    with pytest.raises(Exception, match="seeds must be"):
        naming_eval.phantom_rows(None, 1, seed=5)
    args = p.parse_args(["--naming", "--finder", "a.pt", "b.pt"])
    assert args.finder == ["a.pt", "b.pt"]


def test_a_finder_checkpoint_says_which_cases_it_held_out(tmp_path):
    import torch

    from LumbarSegLib.errors import InputError
    from LumbarSegLib.inference.finder import FinderConfig, build_finder
    from LumbarSegLib.training import cli, commands

    tiny = FinderConfig(base=4, crop_zyx=(32, 32, 32), spacing_mm=4.0)
    path = tmp_path / "fold-A.pt"
    torch.save({"config": tiny.to_dict(), "weights": build_finder(tiny).state_dict(), "leave_out": ["verse005"]}, path)
    net, info = naming_eval.load_finder(path)
    assert net.config == tiny and info["held_out"]("sub-verse005") and not info["held_out"]("sub-verse007")
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="neither a finder model"):
        naming_eval.load_finder(tmp_path / "other.pt")
    import argparse

    p = argparse.ArgumentParser()
    commands.add_evaluate_arguments(p)
    with pytest.raises(InputError, match="belong to --naming"):
        cli.run_evaluate_model(p.parse_args(["--finder", str(path)]))
    with pytest.raises(InputError, match="without --no-refine"):
        cli.naming_finders(p.parse_args(["--naming", "--no-refine", "--finder", str(path)]))


L4 = 23


def _cut_column(cut_mm: int, label_l4: bool):
    """T12-L4 (30 mm apart, 24 mm high), the image cut ``cut_mm`` above its bottom (L4 keeps 30 - cut_mm mm), the
    truth labelling L4 only when ``label_l4``; and the pipeline's labels of every vertebra in view, L4 included."""
    full = sitk.GetArrayFromImage(column([T12, L1, L2, L3, L4]))[cut_mm:]
    pred = sitk.GetImageFromArray(np.where((full >= 20) & (full <= 24), full - 19, 0).astype(np.uint8))
    truth = sitk.GetImageFromArray(np.where((full == L4) & (not label_l4), 0, full).astype(np.uint8))
    return pred, truth


def test_a_cut_vertebra_the_truth_leaves_unlabelled_is_not_scored_wrong():
    # sub-verse007 as stored: VerSe labels T9-L3; the top of L4 shows below the cut L3 and the pipeline reports it
    pred, truth = _cut_column(12, label_l4=False)  # 18 mm of L4 in view: 24 mm between L3 and the image's edge
    row = naming_eval.score_naming(pred, {n: "ribs" for n in ("L1", "L2", "L3", "L4")}, [], truth)
    assert row["truth"] == ["L1", "L2", "L3"] and row["identified"] == ["L1", "L2", "L3"]
    assert row["beyond_labels"] == ["L4"] and row["wrong"] == [] and row["all_right"]
    assert naming_eval.summarize([{"source": "s", "acquisition": "a", **row}])["beyond_labels"]["k"] == 1


def test_a_vertebra_reported_where_the_truth_could_have_labelled_it_stays_wrong():
    # the whole of L4 in view (36 mm of image below L3) and unlabelled: the truth says there is no L4 there
    pred, truth = _cut_column(0, label_l4=False)
    row = naming_eval.score_naming(pred, {n: "ribs" for n in ("L1", "L2", "L3", "L4")}, [], truth)
    assert row["wrong"] == ["L4"] and row["beyond_labels"] == [] and not row["all_right"]
    # a name shifted onto labelled vertebrae near the edge is wrong too (mostly on labelled voxels)
    cut, truth = _cut_column(12, label_l4=False)
    arr = sitk.GetArrayFromImage(cut)
    shifted = sitk.GetImageFromArray(np.where(arr == 3, 4, np.where(arr == 4, 0, arr)).astype(np.uint8))
    row = naming_eval.score_naming(shifted, {n: "ribs" for n in ("L1", "L2", "L4")}, [], truth)
    assert row["wrong"] == ["L4"] and row["beyond_labels"] == []


def test_context_classes_grown_from_background_and_never_trained_are_flagged():
    import torch

    from LumbarSegLib.inference.networks import CONFIGS, XUNet, load_compatible_state
    from LumbarSegLib.inference.models import LumbarSegModel

    torch.manual_seed(0)
    config = CONFIGS["cpu"]
    old = XUNet(config.xunet_base, coords=True, num_classes=6)  # a checkpoint from before the context classes
    grown = XUNet(config.xunet_base, coords=True, num_classes=8)
    load_compatible_state(grown, old.state_dict())  # thoracic, caudal start as background's copy
    model = LumbarSegModel(config, localizer=None, xunet=grown, trained=True)
    assert naming_eval.untrained_context_classes(model) == ["thoracic", "caudal"]
    with torch.no_grad():  # the caudal row trained away from background: only thoracic is flagged
        grown.head.weight[7] = old.head.weight[3]
    assert naming_eval.untrained_context_classes(model) == ["thoracic"]
    lines = naming_eval.naming_markdown({"summary": naming_eval.summarize([]), "seed_phantoms": [1, 2],
                                         "untrained_context_classes": ["thoracic"]})
    assert any("never learned its context classes (thoracic)" in line for line in lines)
    # on the finder's path the finder names the vertebrae: the XUNet's context classes are not its anchors there
    assert naming_eval.measure(model, n_phantoms=0, log=lambda s: None)["untrained_context_classes"] == ["thoracic"]
    assert naming_eval.measure(model, n_phantoms=0, log=lambda s: None,
                               finders=[(None, {"path": "finder.pt"})])["untrained_context_classes"] == []


def test_the_cards_limitation_counts_the_real_scans_its_naming_scored_held_out():
    from LumbarSegLib.training import evaluation

    scored = {"naming": {"summary": {"real_held_out_and_reimaged": {"scans": 24}}}}
    assert "scores 24 real scans held out" in evaluation._limitation(scored, {"cases": ["a", "b"]})
    assert "evaluated here on synthetic phantoms only" in evaluation._limitation({}, {"cases": ["a", "b"]})


def test_column_warnings_count_as_false_alarms_on_right_results_and_detections_on_wrong_ones():
    # Issue 24 item 3: the "two vertebrae under one name" kind of warning is measured against the truth.
    truth = column([L1, L2, L3])
    alarm = ["WARNING: implausible vertebra: L2 is 80 mm high ...; it probably holds two vertebrae under one name."]
    right_alarmed = naming_eval.score_naming(internal(truth), {n: "unanchored" for n in ("L1", "L2", "L3")}, [],
                                             truth, alarm)
    right_quiet = naming_eval.score_naming(internal(truth), {n: "unanchored" for n in ("L1", "L2", "L3")}, [], truth)
    wrong_alarmed = naming_eval.score_naming(internal(truth, 1), {n: "unanchored" for n in ("L2", "L3", "L4")}, [],
                                             truth, alarm)
    rows = [{"source": f"phantom {i}", "acquisition": "phantom (lumbar)", **r}
            for i, r in enumerate((right_alarmed, right_quiet, wrong_alarmed))]
    overall = naming_eval.summarize(rows)["overall"]
    assert overall["column_false_alarms"] == {"n": 2, "k": 1, "share": 0.5}
    assert overall["column_detections"] == {"n": 1, "k": 1, "share": 1.0}
    markdown = "\n".join(naming_eval.naming_markdown({"summary": naming_eval.summarize(rows),
                                                      "seed_phantoms": [100200, 100202]}))
    assert "50 % (1/2) | 100 % (1/1) |" in markdown
