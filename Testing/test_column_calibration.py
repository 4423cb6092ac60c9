"""The size and column warnings scored against truth (issue 24 item 3): ``evaluate-model --naming`` with stage 3
(``--refine``/``--no-refine``) and its ``--rows-json`` rows (:mod:`LumbarSegLib.training.column_calibration`)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import SimpleITK as sitk

from LumbarSegLib.errors import InputError
from LumbarSegLib.measures.measurements import ColumnLimits
from LumbarSegLib.training import column_calibration, naming_eval

L1, L2, L3, L4 = 20, 21, 22, 23


def _column(codes, height=24, gap=6):
    """VerSe-coded blocks, top first (a larger z is more superior), 1 mm voxels."""
    arr = np.zeros((len(codes) * (height + gap) + gap, 30, 30), np.uint8)
    for i, code in enumerate(codes):
        top = arr.shape[0] - gap - i * (height + gap)
        arr[top - height:top, 5:25, 5:25] = code
    return arr


def _args(*argv):
    from LumbarSegLib.training.commands import add_evaluate_arguments

    p = argparse.ArgumentParser()
    add_evaluate_arguments(p)
    return p.parse_args(list(argv))


def test_vertebra_truth_tells_a_merge_from_a_right_vertebra():
    truth = _column([L1, L2, L3, L4])
    labels = np.where(truth > 0, truth - 19, 0).astype(np.uint8)  # L1..L4 right
    right = column_calibration.vertebra_truth(labels, truth)
    assert [v["merged"] for v in right.values()] == [False] * 4 and right["L2"]["covers"] == [L2]
    merged = labels.copy()
    merged[truth == L2] = 1  # L1 and L2 under one name, the names below moved up
    merged[truth == L3], merged[truth == L4] = 2, 3
    found = column_calibration.vertebra_truth(merged, truth)
    assert found["L1"]["merged"] and found["L1"]["covers"] == [L1, L2] and found["L1"]["second_share"] == 0.5
    assert not found["L2"]["merged"] and found["L2"]["on_truth"] == {L3: 1.0}
    sliver = merged.copy()  # a true vertebra barely in the field of view, covered by L1: no merge
    sliver[truth == L2] = 0
    sliver[-8, 10, 10] = 1
    truth_sliver = truth.copy()
    truth_sliver[truth == L2] = 0
    truth_sliver[-8, 10, 10] = L2
    assert column_calibration.vertebra_truth(sliver, truth_sliver)["L1"]["covers"] == [L1, L2]
    assert not column_calibration.vertebra_truth(sliver, truth_sliver)["L1"]["merged"]


def test_rows_score_false_alarms_and_detections_under_any_thresholds(tmp_path, capsys):
    def v(z, h=50.0, ml=50.0, merged=False):
        truth = {"on_truth": {"20": 0.5, "21": 0.5}, "covers": [20, 21]} if merged else {"on_truth": {"20": 0.9},
                                                                                        "covers": [20]}
        return {"height_mm": h, "volume_ml": ml, "centroid_mm": [0.0, 0.0, z], "touches_image_edge": False, **truth}

    right = {"source": "phantom 1", "acquisition": "phantom (lumbar)", "truth": ["L1", "L2", "L3"], "wrong": [],
             "all_right": True, "vertebrae": {"L1": v(0), "L2": v(-32), "L3": v(-64, h=68)}}
    wrong = {"source": "phantom 2", "acquisition": "phantom (lumbar)", "truth": ["L1", "L2", "L3"], "wrong": ["L2"],
             "all_right": False, "vertebrae": {"L1": v(0, h=85, ml=95, merged=True), "L2": v(-45)}}
    strict = ColumnLimits(merged_height_ratio=1.3)
    r = column_calibration.rates([right, wrong], strict)
    assert r["false_alarms"] == [1, 1] and r["detections"] == [1, 1] and r["merged_flagged"] == [1, 1]
    lenient = column_calibration.rates([right, wrong], ColumnLimits(merged_height_ratio=1.5))
    assert lenient["false_alarms"] == [0, 1] and lenient["detections"] == [1, 1]
    assert column_calibration.rates([right, wrong]) == lenient  # the shipped limits are the lenient ones
    path = tmp_path / "rows.json"
    path.write_text(json.dumps({"rows": [right, wrong]}))
    assert column_calibration.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "before (issue 24)" in out and "now" in out and "detections 100 % (1/1)" in out


def test_evaluate_model_takes_the_stage3_and_rows_options(tmp_path):
    from LumbarSegLib.training import cli

    args = _args("--naming", "--refine", "a.pt", "b.pt", "--rows-json", "rows.json")
    assert args.refine == ["a.pt", "b.pt"] and args.rows_json == "rows.json" and not args.no_refine
    assert cli.naming_stage3(_args("--naming", "--no-refine")) == []
    with pytest.raises(InputError, match="not both"):
        cli.naming_stage3(_args("--naming", "--no-refine", "--refine", "a.pt"))
    with pytest.raises(InputError, match="no such file"):
        cli.naming_stage3(_args("--naming", "--refine", str(tmp_path / "absent.pt")))
    with pytest.raises(InputError, match="belong to --naming"):
        cli.run_evaluate_model(_args("--rows-json", "rows.json"))


def test_stage3_models_say_which_real_cases_they_held_out(tmp_path):
    torch = pytest.importorskip("torch")
    from LumbarSegLib.inference import vertebra_net, vertebra_stage

    config = vertebra_net.VertebraNetConfig(widths=(4, 8, 16), crop_zyx=(32, 32, 32), spacing_mm=2.0)
    state = {"config": config.to_dict(), "weights": vertebra_net.build(config).state_dict()}
    bundle = vertebra_stage.save_bundle(state, tmp_path / "s3.pt", {"training_data": {"real": {"cases": [
        "sub-verse005", "sub-verse007"]}}})
    _, info = naming_eval.load_stage3(bundle)
    assert not info["held_out"]("sub-verse007") and info["held_out"]("sub-verse014")
    torch.save({**state, "phase": "fold-B", "leave_out": ["verse007", "verse014"]}, tmp_path / "fold-B.pt")
    _, info = naming_eval.load_stage3(tmp_path / "fold-B.pt")
    assert info["held_out"]("sub-verse007") and not info["held_out"]("sub-verse005")
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="neither"):
        naming_eval.load_stage3(tmp_path / "other.pt")


def test_a_real_case_every_stage3_model_trained_on_is_left_out(tmp_path, monkeypatch):
    for name in ("sub-verse007_ct.nii.gz", "sub-verse007_seg-vert_msk.nii.gz"):
        sitk.WriteImage(sitk.Image([4, 4, 4], sitk.sitkInt16), str(tmp_path / name))

    class Model:
        metadata = {"training_data": {"real": {"cases": ["sub-verse005"]}}}

    skipped = []
    trained = [(object(), {"path": "all.pt", "held_out": lambda cid: False})]
    assert naming_eval.real_rows(Model(), [tmp_path], stage3=trained, skipped=skipped, log=lambda s: None) == []
    assert skipped == ["sub-verse007"]
