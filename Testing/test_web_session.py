"""The web app's logic without a browser: ``lumbarseg serve``'s checks, uploads, and
:class:`LumbarSegLib.web.session.StudySession` on a real MRML scene (slicer-core) with the real engine
subprocess. The page itself is tested in a browser (test_web_browser.py)."""

from __future__ import annotations

import sys
import zipfile

import pytest

from LumbarSegLib.errors import InputError
from LumbarSegLib.web import cli as web_cli
from LumbarSegLib.web.app import list_server_cts
from LumbarSegLib.web.session import SAMPLE_CT, EditedSegmentation, StudySession, safe_stem
from LumbarSegLib.web.uploads import display_name, save_upload, upload_suffix

slicer = pytest.importorskip("slicer")


def _serve(capsys, *args):
    from LumbarSegLib.cli import main

    code = main(["serve", *args])
    return code, capsys.readouterr().err


def test_serve_refuses_bad_arguments_with_one_line_and_exit_2(tmp_path, capsys):
    for args, expected in [(["--port", "0"], "--port 0 is not a TCP port"),
                           (["--data-dir", str(tmp_path / "nope")], "no such folder"),
                           (["--max-upload-mb", "-1"], "is negative")]:
        code, err = _serve(capsys, *args)
        assert code == 2, err
        assert err.strip().count("\n") == 0 and expected in err and "Traceback" not in err


def test_serve_without_trame_slicer_says_how_to_install_it(capsys, monkeypatch):
    # A plain `pip install -e .` has no trame-slicer; None in sys.modules makes its import fail the same way
    # (ModuleNotFoundError) in an environment that has it, so the message is checked everywhere.
    monkeypatch.setitem(sys.modules, "trame_slicer", None)
    code, err = _serve(capsys)
    assert code == 2 and "bash tools/install.sh" in err and "'.[web]'" in err and "Traceback" not in err
    assert "--web" not in err and ".venv-web" not in err  # the second environment is gone


def test_uploads_are_removed_from_the_work_dir_at_exit_unless_kept(tmp_path, capsys):
    from LumbarSegLib.web.uploads import remove_patient_data

    content = SAMPLE_CT.read_bytes()
    saved = save_upload("ct.nrrd", content, tmp_path / "uploads", max_bytes=10_000_000)
    (tmp_path / "exports").mkdir()
    (tmp_path / "exports" / "left.zip").write_bytes(b"x")
    (tmp_path / "mine.txt").write_text("the user's own file")
    assert remove_patient_data(tmp_path, keep_uploads=True) == [tmp_path / "exports"]
    assert saved.is_file() and not (tmp_path / "exports").exists()
    assert remove_patient_data(tmp_path) == [tmp_path / "uploads"]
    assert not (tmp_path / "uploads").exists() and (tmp_path / "mine.txt").is_file()
    code, err = _serve(capsys, "--keep-uploads")  # nothing to keep them in
    assert code == 2 and "--keep-uploads keeps uploads in --work-dir" in err and err.strip().count("\n") == 0


def test_loopback_is_the_default_and_other_addresses_warn_of_no_login():
    assert web_cli.DEFAULT_HOST == "127.0.0.1"
    assert web_cli.is_loopback("127.0.0.1") and web_cli.is_loopback("::1") and web_cli.is_loopback("localhost")
    assert not web_cli.is_loopback("0.0.0.0") and not web_cli.is_loopback("10.1.2.3")
    assert not web_cli.is_loopback("reading-room.example")
    assert "NO login" in web_cli.no_login_warning("0.0.0.0", 8080)


def test_upload_names_never_become_paths(tmp_path):
    content = SAMPLE_CT.read_bytes()
    for name in ("../../etc/evil.nrrd", "..\\..\\evil.NRRD", "/abs/evil.nrrd", "a\x00b.nrrd"):
        path = save_upload(name, content, tmp_path / "uploads", max_bytes=10_000_000)
        assert path.parent == tmp_path / "uploads" and path.name.startswith("upload-") and path.suffix == ".nrrd"
    assert sorted(p.name for p in tmp_path.rglob("*evil*")) == []
    assert display_name("../../etc/evil name.nrrd") == "evil name.nrrd"
    assert display_name("a\x00b.nrrd") == "a?b.nrrd"
    assert safe_stem("../x/My CT (2).nii.gz") == "My_CT_2"


def test_uploads_are_size_limited_and_of_ct_types_only(tmp_path):
    with pytest.raises(InputError, match="more than this server accepts"):
        save_upload("ct.nii", bytes(2000), tmp_path, max_bytes=1000)
    with pytest.raises(InputError, match="switched off"):
        save_upload("ct.nii", bytes(10), tmp_path, max_bytes=0)
    with pytest.raises(InputError, match="not a CT file"):
        upload_suffix("report.pdf")
    with pytest.raises(InputError, match="separate file"):
        upload_suffix("ct.mhd")
    assert upload_suffix("CT.NII.GZ") == ".nii.gz"
    assert not list(tmp_path.iterdir())  # nothing written for a refused upload


def test_server_folder_lists_cts_and_folders_by_index(tmp_path):
    (tmp_path / "b.nii.gz").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden.nrrd").write_bytes(b"x")
    (tmp_path / "dicom_series").mkdir()
    listed = list_server_cts(tmp_path)
    assert [e["title"] for e in listed] == ["b.nii.gz", "dicom_series/ (DICOM)"]
    assert [e["value"] for e in listed] == [0, 1]


def test_bad_upload_is_refused_by_the_cli_validation_and_names_the_upload_not_the_server_path(tmp_path):
    session = StudySession(slicer.vtkMRMLScene(), tmp_path)
    path = save_upload("scan.nii", b"not a nifti at all" * 10, tmp_path / "uploads", max_bytes=10_000)
    with pytest.raises(InputError) as refused:
        session.open_ct(path, "scan.nii")
    assert str(path) not in str(refused.value) and "scan.nii" in str(refused.value)
    assert session.volume_node is None


@pytest.mark.slow
def test_session_segments_cancels_keeps_edits_and_exports(tmp_path):
    scene = slicer.vtkMRMLScene()
    session = StudySession(scene, tmp_path / "exports")
    session.open_ct(SAMPLE_CT, "sample")
    nodes_before = scene.GetNumberOfNodes()

    session.start()  # cancelled at once: the scene is untouched
    session.cancel()
    assert not session.running and scene.GetNumberOfNodes() == nodes_before and session.segmentation_node is None

    session.start()
    assert session.job.process.wait(600)
    session.finish()
    rows = session.metrics_rows()
    assert [r["name"] for r in rows] == ["L1", "L2", "L3", "L4", "L5"]
    # Provenance comes from report.json, and the same lands on the segmentation node.
    from LumbarSegLib import __version__
    from LumbarSegLib.scene.provenance import read_provenance

    provenance = session.provenance()
    assert provenance["lumbarseg_version"] == __version__ and provenance["device"] == "cpu"
    assert provenance["model"]["name"] == "cpu" and len(provenance["model"]["sha256"]) == 64
    assert provenance["options"]["smoothing"] == 0.5 and provenance["warnings"] == session.report["messages"]
    assert read_provenance(session.segmentation_node)["report"] == provenance
    stage3 = provenance["stage3"]  # the web app runs the per-vertebra stage as every front end does
    assert stage3["ran"] and stage3["model"] == "lumbarseg_stage3.pt"
    finder = provenance["finder"]  # the finder's path, when a finder is bundled
    found_by = (f", vertebrae found by lumbarseg_finder.pt (sha256 {finder['sha256'][:12]})" if finder["ran"] else "")
    assert session.model_summary() == (f"Made by LumbarSeg {__version__}, model cpu "
                                       f"(sha256 {provenance['model']['sha256'][:12]}) + per-vertebra stage "
                                       f"lumbarseg_stage3.pt (sha256 {stage3['sha256'][:12]}){found_by} on cpu")
    assert not session.has_edits()

    # An edit (L3 removed, as an eraser over all of it would) is detected; opening another CT asks first.
    node = session.segmentation_node
    node.GetSegmentation().RemoveSegment(session.segment_id_of("L3"))
    assert session.has_edits()
    with pytest.raises(EditedSegmentation):
        session.open_ct(SAMPLE_CT, "again")

    with zipfile.ZipFile(session.export_stl_zip()) as archive:
        assert sorted(n.rsplit("_", 1)[-1] for n in archive.namelist() if n.endswith(".stl")) == \
            ["L1.stl", "L2.stl", "L4.stl", "L5.stl"]
    assert session.export_seg_nrrd().name == "sample.seg.nrrd"
    with pytest.raises(InputError, match="DICOM SEG needs a DICOM series"):
        session.export_dicom_seg()


def test_the_rows_and_the_naming_line_say_how_the_run_named_each_level(tmp_path):
    """report.json's "naming" in the panel's rows and line, for the run's own segmentation only."""
    import SimpleITK as sitk  # noqa: F401  (the phantom helpers hand over SimpleITK images)
    from conftest import fake_engine, labels_box_lps, new_scene, phantom

    from LumbarSegLib.constants import TRANSITIONAL
    from LumbarSegLib.results.naming_basis import naming_section
    from LumbarSegLib.scene.run import apply_result
    from LumbarSegLib.scene.volumes import sitk_to_volume_node, volume_node_to_sitk

    ct, labels = phantom(drop=("L5",))
    scene = new_scene()
    session = StudySession(scene, tmp_path)
    session.volume_node = sitk_to_volume_node(scene, ct, "CT")
    outcome = apply_result(scene, session.volume_node,
                           fake_engine(labels, labels_box_lps(labels))(volume_node_to_sitk(session.volume_node)))
    warning = f"WARNING: {TRANSITIONAL} (a sixth lumbar or a sacralised fifth vertebra?): ..."
    session.segmentation_node, session.last_outcome = outcome.segmentation_node, outcome
    session.report = {"naming": naming_section({n: "ribs" for n in ("L1", "L2", "L3", "L4")}, [warning])}
    rows = session.metrics_rows()
    assert [(r["name"], r["named_by"], r["level_check"]) for r in rows] == \
        [(n, "ribs", TRANSITIONAL) for n in ("L1", "L2", "L3", "L4")]
    assert session.naming_summary() == f"Levels named by: L1 ribs, L2 ribs, L3 ribs, L4 ribs ({TRANSITIONAL})"
    # an unanchored count asks for a check without a warning of its own
    session.report = {"naming": naming_section({n: "unanchored" for n in ("L1", "L2", "L3", "L4")}, [])}
    assert {r["level_check"] for r in session.metrics_rows()} == {"check the levels"}
    # a segmentation the run did not make shows no naming
    session.segmentation_node = apply_result(scene, session.volume_node, fake_engine(
        labels, labels_box_lps(labels))(volume_node_to_sitk(session.volume_node))).segmentation_node
    assert all(r["named_by"] is None for r in session.metrics_rows()) and session.naming_summary() == ""


def test_an_edited_segmentation_kept_hidden_still_asks_before_another_ct_is_opened(tmp_path):
    """Edited result A kept ("keep" when segmenting again), the new result B shown: opening another CT would
    remove A too, so it asks first, as for the one shown."""
    import numpy as np
    import SimpleITK as sitk

    from LumbarSegLib.scene.segments import ATTR_CONTENT_HASH, labels_to_segmentation
    from LumbarSegLib.scene.volumes import volume_node_to_sitk

    scene = slicer.vtkMRMLScene()
    session = StudySession(scene, tmp_path / "exports")
    session.open_ct(SAMPLE_CT, "sample")
    ct = volume_node_to_sitk(session.volume_node)
    box = np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.uint8)
    box[30:50, 40:60, 40:60] = 1
    labels = sitk.GetImageFromArray(box)
    labels.CopyInformation(ct)
    edited = labels_to_segmentation(scene, labels, session.volume_node, name="A")  # result A, then edited by the user
    edited.SetAttribute(ATTR_CONTENT_HASH, "what LumbarSeg made before the edit")
    shown = labels_to_segmentation(scene, labels, session.volume_node, name="B")  # result B, as LumbarSeg made it
    session.segmentation_node = shown
    assert session.has_edits() and not session.shown_is_edited()  # a new run would not ask to replace B
    with pytest.raises(EditedSegmentation):
        session.open_ct(SAMPLE_CT, "another")
    assert edited.GetScene() is scene  # nothing removed
    scene.RemoveNode(edited)
    assert not session.has_edits()
    scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")  # one an editor made and left empty: nobody's work
    assert not session.has_edits()
    session.open_ct(SAMPLE_CT, "another")
