"""How each level was named (report.json's ``naming``) in the Slicer metrics table and status and in the web
panel's rows, on a real MRML scene (slicer-core): the run's result put into the scene by the same functions
as a real run (:func:`scene.run.apply_result`), its report's ``naming`` read by every front end."""

from __future__ import annotations

import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")

from conftest import fake_engine, labels_box_lps, new_scene, phantom  # noqa: E402  shared test helpers

from LumbarSegLib.constants import TRANSITIONAL  # noqa: E402
from LumbarSegLib.measures import measurements  # noqa: E402
from LumbarSegLib.results.naming_basis import CHECK_LEVELS, naming_section  # noqa: E402
from LumbarSegLib.scene.metrics_table import (add_naming_rows, fill_metrics_table, rows_from_measurements,  # noqa: E402
                                              table_to_dict)
from LumbarSegLib.scene.run import apply_result  # noqa: E402
from LumbarSegLib.scene.session import StudySession  # noqa: E402
from LumbarSegLib.scene.volumes import sitk_to_volume_node, volume_node_to_sitk  # noqa: E402

WARNING = f"WARNING: {TRANSITIONAL} (a sixth lumbar or a sacralised fifth vertebra?): counting ..."
# L5 was left out of the count's report (a partial view): its row says nothing of how it was named
REPORT = {"naming": naming_section({"L1": "sacrum", "L2": "sacrum", "L3": "sacrum", "L4": "sacrum"}, [WARNING]),
          "messages": [WARNING]}


@pytest.fixture(scope="module")
def study():
    """A scene with the phantom CT and a run's result in it, and the study session that made it."""
    ct, labels = phantom()
    scene = new_scene()
    volume = sitk_to_volume_node(scene, ct, "CT")
    result = fake_engine(labels, labels_box_lps(labels), messages=[WARNING])(volume_node_to_sitk(volume))
    outcome = apply_result(scene, volume, result)
    session = StudySession(scene)
    session.report, session.last_result, session.last_outcome = REPORT, result, outcome
    return scene, volume, ct, labels, session


def test_the_metrics_table_says_how_each_level_was_named(study):
    scene, volume, ct, labels, _ = study
    rows = rows_from_measurements(measurements.measure(sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(ct), ct))
    table = table_to_dict(fill_metrics_table(scene, add_naming_rows(rows, REPORT), volume_node=volume))
    assert [table[n]["Named by"] for n in ("L1", "L2", "L3", "L4", "L5")] == ["sacrum"] * 4 + [""]
    assert table["L1"]["Level check"] == TRANSITIONAL and table["L5"]["Level check"] == ""
    unanchored = {"naming": naming_section({"L3": "unanchored"}, [])}
    table = table_to_dict(fill_metrics_table(scene, add_naming_rows(rows_from_measurements(
        measurements.measure(sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(ct), ct)), unanchored)))
    assert table["L3"]["Named by"] == "unanchored" and table["L3"]["Level check"] == CHECK_LEVELS
    # without a report's naming there is no such column
    assert "Named by" not in next(iter(table_to_dict(fill_metrics_table(scene, rows_from_measurements(
        measurements.measure(sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(ct), ct)))).values()))


def test_the_status_and_the_recomputed_table_of_the_runs_segmentation_keep_the_naming(study):
    scene, volume, _, _, session = study
    text = session.result_text()
    assert f"Levels named by: L1 sacrum, L2 sacrum, L3 sacrum, L4 sacrum ({TRANSITIONAL})." in text.splitlines()
    table = table_to_dict(session.compute_metrics(session.last_outcome.segmentation_node, volume))
    assert table["L2"]["Named by"] == "sacrum" and table["L2"]["Level check"] == TRANSITIONAL
    # another segmentation (not the run's) was not named by it
    other = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "other")
    other.GetSegmentation().AddEmptySegment("L1", "L1")
    assert "Named by" not in str(table_to_dict(session.compute_metrics(other, volume)))
