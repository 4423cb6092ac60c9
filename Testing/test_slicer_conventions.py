"""Slicer conventions on a real MRML scene (slicer-core): results in the CT's study, the shipped
terminology loaded by Slicer's own terminology logic, provenance attributes and the research notice on
every result, the diagnostics text, the model card summary and the bundled Sample Data file."""

import hashlib
import json
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")

from LumbarSegLib.constants import (LABEL_COLORS, LABEL_NAMES, RESEARCH_NOTICE, SNOMED_BONE_CATEGORY,  # noqa: E402
                                    SNOMED_VERTEBRA)
from LumbarSegLib.constants import default_model_path  # noqa: E402
from LumbarSegLib.results.model_card import model_summary, summary_text  # noqa: E402
from LumbarSegLib.scene import provenance, sample_data  # noqa: E402
from LumbarSegLib.scene.metrics_table import compute_metrics, fill_metrics_table  # noqa: E402
from LumbarSegLib.scene.run import run_segmentation  # noqa: E402
from LumbarSegLib.scene.scene import ATTR_NOTICE  # noqa: E402
from LumbarSegLib.scene.segments import TERMINOLOGY_CONTEXT, TERMINOLOGY_FILE_NAME, load_terminology  # noqa: E402
from LumbarSegLib.io.images import validate_ct  # noqa: E402
from LumbarSegLib.scene.volumes import sitk_to_volume_node  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TERMINOLOGY_FILE = ROOT / "LumbarSeg" / "Resources" / TERMINOLOGY_FILE_NAME


@pytest.fixture(scope="module")
def segmented():
    from conftest import fake_engine, labels_box_lps, new_scene, phantom

    ct, labels = phantom(seed=5)
    scene = new_scene()
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Anonymous")
    study = hierarchy.CreateStudyItem(patient, "CT abdomen")
    volume = sitk_to_volume_node(scene, ct, "CT")
    hierarchy.CreateItem(study, volume)  # as the DICOM module places a loaded series
    result, outcome = run_segmentation(scene, volume, segment_fn=fake_engine(labels, labels_box_lps(labels)))
    table = fill_metrics_table(scene, compute_metrics(outcome.segmentation_node, volume), volume_node=volume)
    return scene, hierarchy, study, volume, result, outcome, table


def test_results_are_placed_in_the_ct_study(segmented):
    scene, hierarchy, study, volume, _, outcome, table = segmented
    for node in (outcome.segmentation_node, outcome.roi_node, table):
        item = hierarchy.GetItemByDataNode(node)
        assert item, node.GetName()
        assert hierarchy.GetItemParent(item) == study, node.GetName()
    assert hierarchy.GetItemLevel(study) == "Study"


def test_results_stay_put_when_the_ct_is_in_no_hierarchy():
    from conftest import fake_engine, labels_box_lps, new_scene, phantom

    ct, labels = phantom(seed=5)
    scene = new_scene()
    volume = sitk_to_volume_node(scene, ct, "CT")
    _, outcome = run_segmentation(scene, volume, segment_fn=fake_engine(labels, labels_box_lps(labels)))
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    assert outcome.segmentation_node is not None
    assert not hierarchy.GetItemByDataNode(outcome.segmentation_node)  # nothing invented


def test_every_result_carries_the_research_notice(segmented):
    _, _, _, _, _, outcome, table = segmented
    assert outcome.segmentation_node.GetAttribute(ATTR_NOTICE) == RESEARCH_NOTICE
    assert table.GetAttribute(ATTR_NOTICE) == RESEARCH_NOTICE
    assert "not a medical device" in RESEARCH_NOTICE


# --------------------------------------------------------------------------------------------------
# Terminology


def test_terminology_file_has_the_five_codes_and_colours():
    doc = json.loads(TERMINOLOGY_FILE.read_text(encoding="utf-8"))
    assert doc["SegmentationCategoryTypeContextName"] == TERMINOLOGY_CONTEXT
    categories = doc["SegmentationCodes"]["Category"]
    assert len(categories) == 1
    category = categories[0]
    assert (category["CodingSchemeDesignator"], category["CodeValue"], category["CodeMeaning"]) == \
        ("SCT", *SNOMED_BONE_CATEGORY)
    types = {t["CodeValue"]: t for t in category["Type"]}
    assert sorted(types) == sorted(code for code, _ in SNOMED_VERTEBRA.values())
    assert {"66794005", "14293000", "36470004", "11994002", "49668003"} == set(types)
    for label, (code, meaning) in SNOMED_VERTEBRA.items():
        entry = types[code]
        assert entry["CodeMeaning"] == meaning and entry["CodingSchemeDesignator"] == "SCT"
        assert entry["recommendedDisplayRGBValue"] == [round(255 * c) for c in LABEL_COLORS[label]]
        assert entry["3dSlicerLabel"] == LABEL_NAMES[label]


def test_slicer_terminology_logic_loads_the_file_and_segments_are_tagged_against_it(segmented):
    import vtk

    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    assert load_terminology(logic, TERMINOLOGY_FILE) == TERMINOLOGY_CONTEXT
    names = vtk.vtkStringArray()
    logic.GetLoadedTerminologyNames(names)
    assert TERMINOLOGY_CONTEXT in [names.GetValue(i) for i in range(names.GetNumberOfValues())]
    category = slicer.vtkSlicerTerminologyCategory()
    assert logic.GetNthCategoryInTerminology(TERMINOLOGY_CONTEXT, 0, category)
    assert category.GetCodeValue() == SNOMED_BONE_CATEGORY[0]
    assert logic.GetNumberOfTypesInTerminologyCategory(TERMINOLOGY_CONTEXT, category) == 5

    segmentation = segmented[5].segmentation_node.GetSegmentation()
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        if segment.GetName().endswith(" ROI"):
            continue  # the trabecular ROI segments (test_trabecular_slicer)
        label = next(k for k, v in LABEL_NAMES.items() if v == segment.GetName())
        tag = segment.GetTerminology()
        entry = slicer.vtkSlicerTerminologyEntry()
        assert logic.DeserializeTerminologyEntry(tag, entry)
        assert entry.GetTerminologyContextName() == TERMINOLOGY_CONTEXT
        assert entry.GetTypeObject().GetCodeValue() == SNOMED_VERTEBRA[label][0]
        assert entry.GetCategoryObject().GetCodeValue() == SNOMED_BONE_CATEGORY[0]
        # The loaded terminology knows this type, with the segment's colour.
        found = slicer.vtkSlicerTerminologyEntry()
        assert logic.FindTypeInTerminologyBy3dSlicerLabel(TERMINOLOGY_CONTEXT, LABEL_NAMES[label], found)
        assert found.GetTypeObject().GetCodeMeaning() == SNOMED_VERTEBRA[label][1]
        rgb = found.GetTypeObject().GetRecommendedDisplayRGBValue()
        np.testing.assert_allclose(np.asarray(rgb) / 255.0, segment.GetColor(), atol=0.5 / 255 + 1e-6)


def test_a_terminology_file_with_another_context_is_refused(tmp_path):
    doc = json.loads(TERMINOLOGY_FILE.read_text(encoding="utf-8"))
    doc["SegmentationCategoryTypeContextName"] = "Something else"
    other = tmp_path / "other.term.json"
    other.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(RuntimeError, match="Could not load the LumbarSeg terminology"):
        load_terminology(slicer.vtkSlicerTerminologiesModuleLogic(), other)


# --------------------------------------------------------------------------------------------------
# Model card, provenance, diagnostics


def test_model_summary_of_the_bundled_model():
    if not default_model_path().is_file():
        pytest.skip("no bundled model")
    summary = model_summary()
    card = json.loads(default_model_path().with_suffix(".json").read_text(encoding="utf-8"))
    assert summary["name"] == "lumbarseg_cpu.pt" and summary["bundled"] and summary["exists"]
    assert summary["matches_card"] is True  # the shipped file is the one the card describes
    assert summary["mean_dsc"] == pytest.approx(card["evaluation"]["overall"]["DSC"]["mean"])
    assert f"{card['evaluation']['overall']['DSC']['mean']:.2f}" in summary["accuracy"]
    real = (card["training"]["training_data"] or {}).get("real")
    assert ("no real CT" in summary["trained_on"]) == (not real)
    if real:
        assert f"{len(real['cases'])} real labelled CTs" in summary["trained_on"]
    loo = (card.get("real_leave_one_out") or {}).get("summary")
    if loo:  # the panel quotes the leave-one-case-out real-CT accuracy next to the phantom number
        assert f"mean DSC {loo['mean_dsc']:.2f} on {loo['cases']} real CTs" in summary["accuracy"]
    assert summary["card_url"].startswith("file://") and summary["card_url"].endswith("lumbarseg_cpu.md")
    text = summary_text(summary)
    assert "Model: lumbarseg_cpu.pt (bundled)" in text and "Accuracy: mean DSC" in text


def test_model_summary_notices_a_file_that_is_not_the_carded_one(tmp_path):
    if not default_model_path().is_file():
        pytest.skip("no bundled model")
    model = tmp_path / "mine.pt"
    model.write_bytes(default_model_path().read_bytes() + b"\0")
    shutil.copy(default_model_path().with_suffix(".json"), tmp_path / "mine.json")
    summary = model_summary(model)
    assert summary["matches_card"] is False and not summary["bundled"]
    assert "differs from the one its model card describes" in summary_text(summary)
    bare = tmp_path / "bare.pt"
    bare.write_bytes(b"x")
    assert "not measured" in model_summary(bare)["accuracy"]
    assert model_summary(tmp_path / "missing.pt")["accuracy"] == "model file not found"


def test_provenance_attributes_on_the_result(segmented):
    """The attributes copy report.json's provenance (what the run wrote), plus the front end's settings."""
    _, _, _, _, result, outcome, _ = segmented
    node = outcome.segmentation_node
    summary = model_summary()
    report_provenance = {"lumbarseg_version": "9.9.9", "notice": RESEARCH_NOTICE, "device": "cpu",
                         "model": {"name": summary["name"], "sha256": summary["sha256"], "configuration": "cpu",
                                   "trained": True},
                         "options": {"smoothing": 0.5, "stl": False}, "warnings": ["WARNING: a warning"]}
    stored = provenance.record_provenance(node, report_provenance, {"device_requested": "auto", "smoothing": 0.5},
                                          result)
    back = provenance.read_provenance(node)
    assert back["model"] == summary["name"] and back["model_sha256"] == (summary["sha256"] or "")
    assert back["version"] == "9.9.9" and back["notice"] == RESEARCH_NOTICE  # the run's version, not ours
    assert back["report"] == report_provenance
    assert back["settings"] == json.loads(json.dumps(stored))
    assert back["settings"]["device_requested"] == "auto" and back["settings"]["found"] == result.found
    assert back["settings"]["device_used"] == "cpu" and back["settings"]["options"]["smoothing"] == 0.5


def test_diagnostics_text_has_what_a_bug_report_needs(segmented):
    _, _, _, _, result, _, _ = segmented
    try:
        raise ValueError("boom in stage 2")
    except ValueError as exc:
        error = exc
    text = provenance.diagnostics_text(model_summary(), last_result=result, last_error=error,
                                       settings={"device_requested": "auto"}, slicer_version="5.8.1",
                                       log_lines=["line one", "line two"])
    for needle in ("LumbarSeg 0.1.0", "3D Slicer: 5.8.1", "Python:", "torch ", "SimpleITK ", "Device:",
                   "Model: ", "Last run: found L1, L2, L3, L4, L5", "Last error: ValueError: boom in stage 2",
                   "test_diagnostics_text_has_what_a_bug_report_needs", "line two", RESEARCH_NOTICE):
        assert needle in text, needle
    assert "Last error: none" in provenance.diagnostics_text()


# --------------------------------------------------------------------------------------------------
# Sample data

# The parameters of SampleData.SampleDataLogic.registerCustomSampleDataSource as Slicer defines them
# (Modules/Scripted/SampleData/SampleData.py), read from Slicer's source at the tags v5.8.0 and v5.10.0 and on
# main (2026): the same twelve names in all three. There is no "sampleDescription" (only SampleDataSource
# has one); passing it raises TypeError, which Slicer's start-up hook only logs, and the sample never appears.
REGISTER_CUSTOM_SAMPLE_DATA_SOURCE_PARAMETERS = {
    version: ["category", "sampleName", "uris", "fileNames", "nodeNames", "customDownloader", "thumbnailFileName",
              "loadFileTypes", "loadFiles", "loadFileProperties", "checksums", "loadFileType"]
    for version in ("5.8.0", "5.10.0", "main")
}


def test_sample_file_matches_its_recorded_checksum_and_is_small():
    path = sample_data.SAMPLE_FILE
    assert path.is_file()
    algo, digest = sample_data.recorded_checksum(path).split(":")
    assert algo == "SHA256" and hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert path.stat().st_size < 2_000_000


def test_sample_data_registration_loads_offline_as_sample_data_would(tmp_path):
    icon = ROOT / "LumbarSeg" / "Resources" / "Icons" / "LumbarSeg.png"
    arguments = sample_data.sample_data_source_arguments(thumbnail=icon)
    for version, parameters in REGISTER_CUSTOM_SAMPLE_DATA_SOURCE_PARAMETERS.items():
        assert set(arguments) <= set(parameters), (version, sorted(set(arguments) - set(parameters)))
    assert "loadFileType" not in arguments  # deprecated, and an error together with loadFileTypes
    assert len({len(arguments[k]) for k in ("uris", "fileNames", "nodeNames", "checksums", "loadFileTypes")}) == 1
    assert Path(arguments["thumbnailFileName"]).is_file()
    # What SampleDataLogic.downloadFile does: urllib copies the URI into the cache, then the checksum is checked.
    cached = tmp_path / arguments["fileNames"][0]
    urllib.request.urlretrieve(arguments["uris"][0], cached)
    algo, digest = arguments["checksums"][0].split(":")
    assert hashlib.new(algo.lower(), cached.read_bytes()).hexdigest() == digest
    # Then it is loaded as a volume node (Slicer's volume storage node reads the NRRD) and is a usable CT.
    scene = slicer.vtkMRMLScene()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", arguments["nodeNames"][0])
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(cached))
    assert storage.ReadData(volume)
    from LumbarSegLib.scene.volumes import volume_node_to_sitk

    image = volume_node_to_sitk(volume)
    validate_ct(image)  # a usable CT: raises InputError otherwise
    # Slicer's reader may order the slices differently; in physical space it is the same CT.
    stored = sitk.ReadImage(str(sample_data.SAMPLE_FILE))
    same_grid = sitk.Resample(image, stored, sitk.Transform(), sitk.sitkNearestNeighbor, -2000)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(same_grid), sitk.GetArrayFromImage(stored))


def test_register_sample_data_calls_slicers_registration_with_those_arguments():
    calls = []

    class SampleDataLogic:  # the one SampleData entry point register_sample_data uses, with Slicer's parameters
        @staticmethod
        def registerCustomSampleDataSource(category="Custom", sampleName=None, uris=None, fileNames=None,
                                           nodeNames=None, customDownloader=None, thumbnailFileName=None,
                                           loadFileTypes=None, loadFiles=None, loadFileProperties={},
                                           checksums=None, loadFileType=None):
            given = {"category": category, "sampleName": sampleName, "uris": uris, "fileNames": fileNames,
                     "nodeNames": nodeNames, "thumbnailFileName": thumbnailFileName, "loadFileTypes": loadFileTypes,
                     "checksums": checksums, "loadFileType": loadFileType}
            calls.append({k: v for k, v in given.items() if v is not None})

    import inspect

    assert list(inspect.signature(SampleDataLogic.registerCustomSampleDataSource).parameters) == \
        REGISTER_CUSTOM_SAMPLE_DATA_SOURCE_PARAMETERS["main"]

    class SampleDataModule:
        pass

    SampleDataModule.SampleDataLogic = SampleDataLogic
    assert sample_data.register_sample_data(SampleDataModule, thumbnail=None)  # TypeError for a wrong keyword
    expected = {k: v for k, v in sample_data.sample_data_source_arguments().items() if v is not None}
    assert calls == [expected]
    assert expected["sampleName"] == sample_data.SAMPLE_NAME  # what the Sample Data button shows


def test_make_sample_data_tool_records_the_checksum_it_writes(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_sample_data", ROOT / "tools" / "make_sample_data.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    path = tmp_path / "LumbarSegSampleCT.nrrd"
    digest = tool.write_sample(path)
    assert sample_data.recorded_checksum(path) == "SHA256:" + digest
    image = sitk.ReadImage(str(path))
    assert image.GetPixelID() == sitk.sitkInt16 and image.GetSpacing() == pytest.approx(tool.SPACING)
