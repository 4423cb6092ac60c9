"""The Qt-free study session that the Slicer module and the web app share (:mod:`LumbarSegLib.scene.session`),
driven as a front end drives it, on a real MRML scene (slicer-core) with the real engine subprocess: start,
progress, cancel, the result into the scene, a re-run that keeps the user's edits, and the exports."""

from __future__ import annotations

import sys

import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")

from conftest import new_scene  # noqa: E402  shared test helpers

from LumbarSegLib.scene.provenance import read_provenance  # noqa: E402
from LumbarSegLib.scene.segments import segment_ids_by_vertebra  # noqa: E402
from LumbarSegLib.scene.session import StudySession  # noqa: E402
from LumbarSegLib.scene.volumes import sitk_to_volume_node  # noqa: E402
from LumbarSegLib.web.session import SAMPLE_CT  # noqa: E402

pytestmark = pytest.mark.slow  # three runs of the engine in a subprocess


def node_ids(scene):
    return sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))


def test_a_session_runs_cancels_keeps_edits_and_exports(tmp_path):
    scene = new_scene()
    volume = sitk_to_volume_node(scene, sitk.ReadImage(str(SAMPLE_CT)), "sample")
    lines = []
    session = StudySession(scene, device="cpu", python=sys.executable, on_log=lines.append)

    # Cancel: the process ends and the scene is as it was.
    before = node_ids(scene)
    session.start(volume)
    assert session.running
    session.cancel()
    assert not session.running and node_ids(scene) == before and session.report is None

    # A run: progress events, then the result in the scene with report.json's provenance on it.
    stages = []
    outcome = session.run(volume, progress=lambda stage, fraction: stages.append((stage, fraction)))
    assert {"read", "localize", "segment"} <= {stage for stage, _ in stages}
    segmentation = outcome.segmentation_node
    assert sorted(segment_ids_by_vertebra(segmentation)) == [1, 2, 3, 4, 5]
    assert read_provenance(segmentation)["report"] == session.provenance()
    assert session.provenance_line().startswith("Made by LumbarSeg ")
    assert session.result_text().startswith("Found: L1, L2, L3, L4, L5 (") and "not a medical device" in \
        session.result_text()
    assert any("Found L1, L2, L3, L4, L5" in line for line in lines)
    # how each level was named: report.json's "naming", in the metrics table and the status
    from LumbarSegLib.results.naming_basis import naming_line, naming_rows
    from LumbarSegLib.scene.metrics_table import table_to_dict

    table = table_to_dict(outcome.metrics_table)
    assert {n: table[n]["Named by"] for n in table} == {n: r["named_by"] for n, r in naming_rows(session.report).items()}
    assert naming_line(session.report) and naming_line(session.report) + "." in session.result_text().splitlines()
    assert not session.must_ask_before_replacing(segmentation)

    # The user edits (L3 removed); a re-run without agreement keeps the edited segmentation as it is.
    segmentation.GetSegmentation().RemoveSegment(segment_ids_by_vertebra(segmentation)[3])
    assert session.must_ask_before_replacing(segmentation)
    kept = session.run(volume, segmentation_node=segmentation)
    assert kept.segmentation_node is not segmentation and kept.created_new
    assert sorted(segment_ids_by_vertebra(segmentation)) == [1, 2, 4, 5]
    assert any("was edited since it was created" in m for m in kept.messages)
    # With the user's agreement the result replaces it.
    replaced = session.run(volume, segmentation_node=segmentation, replace_edited=True)
    assert replaced.segmentation_node is segmentation
    assert sorted(segment_ids_by_vertebra(segmentation)) == [1, 2, 3, 4, 5]

    # Exports of what is in the scene; the metrics measured now.
    assert [p.name for p in session.export_stl(kept.segmentation_node, tmp_path / "stl")] == \
        [f"{kept.segmentation_node.GetName()}_L{i}.stl" for i in range(1, 6)]
    assert session.export_labelmap(segmentation, volume, tmp_path / "labels.nii.gz").is_file()
    assert session.compute_metrics(segmentation, volume).GetNumberOfRows() == 5
    assert "Last error: none" in session.diagnostics(slicer_version="test")


def test_a_failed_run_is_one_line_and_the_scene_is_unchanged():
    from LumbarSegLib.scene.engine_job import EngineRunError

    scene = new_scene()
    mr_like = sitk.Image(32, 32, 32, sitk.sitkUInt8)  # all zero: not a CT in Hounsfield units
    volume = sitk_to_volume_node(scene, mr_like, "not a CT")
    session = StudySession(scene, device="cpu", python=sys.executable)
    before = node_ids(scene)
    with pytest.raises(EngineRunError) as failed:
        session.run(volume)
    assert "\n" not in str(failed.value) and "not a CT" in str(failed.value)
    assert node_ids(scene) == before and session.last_error is failed.value
    assert session.result_alert() is None
