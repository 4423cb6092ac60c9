"""The scripted module without Qt: import guards, .ui consistency, the Logic class on a real MRML scene,
and the extension's CMake files (configured against a stand-in for Slicer's CMake macros)."""

import dis
import importlib.util
import inspect
import os
import types
import typing
import unittest
import re
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import load_module  # noqa: E402  shared test helpers

ROOT = Path(__file__).resolve().parent.parent
MODULE_FILE = ROOT / "LumbarSeg" / "LumbarSeg.py"
UI_FILE = ROOT / "LumbarSeg" / "Resources" / "UI" / "LumbarSeg.ui"


def ui_widgets():
    root = ET.parse(UI_FILE).getroot()
    return {w.get("name"): w.get("class") for w in root.iter("widget")}, root


# --------------------------------------------------------------------------------------------------
# .ui and widget names


def test_ui_parses_and_declares_its_custom_widgets():
    widgets, root = ui_widgets()
    assert root.tag == "ui" and root.find("class").text == "LumbarSeg"
    assert widgets["LumbarSeg"] == "qMRMLWidget"
    declared = {c.find("class").text for c in root.iter("customwidget")}
    qt_builtin = {"QLabel", "QComboBox", "QPushButton", "QProgressBar", "QWidget", "QPlainTextEdit"}
    for name, cls in widgets.items():
        assert cls in declared or cls in qt_builtin, f"{name}: {cls} is not declared as a custom widget"
    for connection in root.iter("connection"):
        assert connection.find("sender").text in widgets
        assert connection.find("receiver").text in widgets
    # every qMRML widget gets the scene
    receivers = {c.find("receiver").text for c in root.iter("connection")
                 if c.find("slot").text == "setMRMLScene(vtkMRMLScene*)"}
    assert {n for n, c in widgets.items() if c in ("qMRMLNodeComboBox", "qMRMLTableView")} <= receivers


def _ui_names_used(functions, holder):
    """Widget names read as ``<holder>.ui.X`` (or ``ui.X`` for holder None) in the compiled functions, nested
    code included: the bytecode, not the source text."""
    used, stack = set(), [f.__code__ for f in functions]
    while stack:
        code = stack.pop()
        stack += [c for c in code.co_consts if hasattr(c, "co_code")]
        ins = list(dis.get_instructions(code))
        for a, b, c in zip(ins, ins[1:], ins[2:]):
            if holder and a.argval == holder and b.opname in ("LOAD_ATTR", "LOAD_METHOD") and b.argval == "ui" \
                    and c.opname in ("LOAD_ATTR", "LOAD_METHOD"):
                used.add(c.argval)
            if not holder and a.opname == "LOAD_FAST" and a.argval == "ui" and b.opname in ("LOAD_ATTR", "LOAD_METHOD"):
                used.add(b.argval)
    return used


def test_every_widget_the_module_uses_exists_in_the_ui():
    from LumbarSegLib.scene import panel

    widgets, root = ui_widgets()
    module = load_module()
    methods = [f for f in vars(module.LumbarSegWidget).values() if inspect.isfunction(f)]
    used = _ui_names_used(methods, "self") | _ui_names_used(
        [f for f in vars(panel).values() if inspect.isfunction(f)], None)
    used |= set(panel.CONNECTED) | set(panel.BUTTONS) | set(panel.RESULT_BUTTONS)
    assert "applyButton" in used and "statusLabel" in used, "the Widget should use self.ui.*"
    missing = sorted(used - set(widgets))
    assert not missing, f"used by the module but absent from the .ui: {missing}"
    for handler in panel.BUTTONS.values():
        assert callable(getattr(module.LumbarSegWidget, handler)), handler
    # the selectors restrict to the right node types
    types = {w.get("name"): [s.text for s in w.iter("string")] for w in root.iter("widget")
             if w.get("class") == "qMRMLNodeComboBox"}
    assert "vtkMRMLScalarVolumeNode" in types["inputVolumeSelector"]
    assert "vtkMRMLSegmentationNode" in types["referenceSegmentationSelector"]


# What Slicer's connectGui (slicer/parameterNodeWrapper/guiConnectors.py) can tie: the widget class and the kind
# of parameter-node field. A widget it cannot represent fails at connectGui in Slicer, not here.
CONNECTABLE = {"qMRMLNodeComboBox": "node", "QComboBox": "enum", "ctkSliderWidget": "bounded float"}


def _field_kind(hint):
    import enum

    base, extras = (typing.get_args(hint)[0], typing.get_args(hint)[1:]) if typing.get_origin(hint) is \
        typing.Annotated else (hint, ())
    if isinstance(base, type) and issubclass(base, enum.Enum):
        return "enum"
    if base is float and any(e and e[0] == "WithinRange" for e in extras):
        return "bounded float"
    return "node" if getattr(base, "__name__", "").startswith("vtkMRML") else repr(base)


def test_connect_gui_finds_each_bound_widget_in_the_ui_by_its_parameter_name(monkeypatch):
    """connectGui ties a .ui widget to the field its SlicerParameterName names: every field panel.CONNECTED
    lists has exactly that widget, of a class connectGui can tie to that kind of field, and each choice has
    a label for its combo box (connectGui fills the box from the enum)."""
    from LumbarSegLib.scene import panel

    _, root = ui_widgets()
    named = {w.get("name"): (w.get("class"), p.find("string").text) for w in root.iter("widget")
             for p in w.findall("property") if p.get("name") == "SlicerParameterName"}
    assert {w: f for w, (_, f) in named.items()} == panel.CONNECTED
    fields = parameter_fields(load_gui_module(monkeypatch))
    for widget, (cls, field) in named.items():
        assert CONNECTABLE.get(cls) == _field_kind(fields[field][0]), (widget, cls, field)
    for choice in (panel.Device, panel.ModelMode, panel.RoiMode):
        labels = [c.label() for c in choice]
        assert all(labels) and len(set(labels)) == len(labels)
    assert panel.Device.cuda.label() == "CUDA" and panel.Device("cpu") == "cpu"


# --------------------------------------------------------------------------------------------------
# Import without Qt / without work


def _run_python(code: str, cwd=None):
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=env, timeout=120)


def test_module_imports_without_qt_and_does_no_work_at_import():
    # qt, ctk and slicer.ScriptedLoadableModule are made unimportable even if present.
    code = f"""
        import sys, importlib.util
        for name in ("qt", "ctk", "slicer.ScriptedLoadableModule"):
            sys.modules[name] = None
        before = set(sys.modules)
        path0 = list(sys.path)
        spec = importlib.util.spec_from_file_location("LumbarSeg", {str(MODULE_FILE)!r})
        m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
        assert m.SLICER_GUI is False
        new = set(sys.modules) - before
        heavy = {{"torch", "SimpleITK", "scipy"}} & new
        assert not heavy, heavy
        lib = {{n for n in new if n.startswith("LumbarSegLib")}}
        assert lib <= {{"LumbarSegLib", "LumbarSegLib.scene", "LumbarSegLib.scene.panel",
                        "LumbarSegLib.scene.module_logic"}}, lib
        assert set(sys.path) - set(path0) <= {{{str(ROOT)!r}}}  # at most the source checkout, found
        for cls in ("LumbarSeg", "LumbarSegWidget", "LumbarSegLogic", "LumbarSegTest"):
            assert hasattr(m, cls), cls
        print("ok")
    """
    result = _run_python(code, cwd="/")
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


def test_module_has_slicer_structure():
    module = load_module()
    assert issubclass(module.LumbarSeg, module.ScriptedLoadableModule)
    assert issubclass(module.LumbarSegWidget, module.ScriptedLoadableModuleWidget)
    assert issubclass(module.LumbarSegLogic, module.ScriptedLoadableModuleLogic)
    assert issubclass(module.LumbarSegTest, module.ScriptedLoadableModuleTest)
    parent = SimpleNamespace()
    module.LumbarSeg(parent)
    assert parent.title == "LumbarSeg" and parent.categories == ["Segmentation"]
    assert "L1-L5" in parent.helpText
    assert hasattr(module.LumbarSegTest, "runTest") and callable(module.LumbarSegWidget.onReload)


def test_lib_is_found_from_source_tree_and_installed_layout(tmp_path):
    module = load_module()
    assert Path(module.ensureLibImportable()) == ROOT  # source checkout: repository root
    # Installed extension: LumbarSegLib beside LumbarSeg.py (qt-scripted-modules/).
    installed = tmp_path / "qt-scripted-modules"
    installed.mkdir()
    shutil.copy(MODULE_FILE, installed / "LumbarSeg.py")
    shutil.copytree(ROOT / "LumbarSegLib", installed / "LumbarSegLib",
                    ignore=shutil.ignore_patterns("__pycache__"))
    code = f"""
        import sys, importlib.util
        sys.modules["qt"] = None
        spec = importlib.util.spec_from_file_location("LumbarSeg", {str(installed / 'LumbarSeg.py')!r})
        m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
        print(m.ensureLibImportable())
        print(m.slicerLib("run").__file__)
    """
    result = _run_python(code, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.split()
    assert lines[0] == str(installed)
    assert lines[1].startswith(str(installed / "LumbarSegLib"))


def test_missing_packages_detection(monkeypatch):
    module = load_module()
    from LumbarSegLib.scene import dependencies

    assert module.missingPackages() == []  # this environment has everything
    import importlib.util as iu

    real = iu.find_spec
    monkeypatch.setattr(iu, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    assert module.missingPackages() == ["torch"]
    assert dependencies.PYTHON_REQUIREMENTS["torch"].startswith("torch")


# --------------------------------------------------------------------------------------------------
# Logic class on a real scene (slicer-core)


def test_logic_class_runs_the_flow_on_a_real_scene(tmp_path):
    """What the buttons do after a run (the run itself, a subprocess, is in test_slicer_subprocess.py)."""
    slicer = pytest.importorskip("slicer")
    import SimpleITK as sitk
    from conftest import fake_engine, labels_box_lps, new_scene, phantom

    from LumbarSegLib.scene.roi import ROI_NAME
    from LumbarSegLib.scene.run import run_segmentation
    from LumbarSegLib.scene.volumes import sitk_to_volume_node

    module = load_module()
    logic = module.LumbarSegLogic()
    ct, labels = phantom(seed=7)
    scene = new_scene()
    volume = sitk_to_volume_node(scene, ct, "CT")
    result, outcome = run_segmentation(scene, volume, segment_fn=fake_engine(labels, labels_box_lps(labels)))
    assert outcome.roi_node.GetName() == ROI_NAME
    segmentation = outcome.segmentation_node
    # Smoothing: surfaces are rebuilt for a new value only, and voxels (and the edit detection) stay intact.
    assert logic.setSmoothing(segmentation, 0.2)
    assert segmentation.GetSegmentation().GetConversionParameter("Smoothing factor") == "0.2"
    assert not logic.setSmoothing(segmentation, 0.2)
    assert not logic.isUserEdited(segmentation)
    # Metrics and export.
    table = logic.computeMetrics(scene, segmentation, volume)
    assert table.GetNumberOfRows() == 5
    assert len(logic.exportStl(segmentation, tmp_path)) == 5
    path = logic.exportLabelmap(scene, segmentation, volume, tmp_path / "labels.nii.gz")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))),
                                  sitk.GetArrayViewFromImage(labels))
    # The exports in the log, and the diagnostics built from it (a run's lines and provenance come from the
    # subprocess: test_slicer_subprocess.py, test_study_session.py).
    assert any("Wrote 5 STL file(s)" in line for line in logic.logLines)
    text = logic.diagnostics(slicerVersion="test")
    assert "Last error: none" in text and "Wrote 5 STL file(s)" in text
    html = logic.modelInfoHtml()
    assert "lumbarseg_cpu.pt" in html and "Model card" in html and "Measured accuracy" in html


def test_smoothing_is_not_rebuilt_when_the_value_does_not_change():
    """Loading settings into the GUI sets the slider; that must not rebuild every surface (bug 7)."""
    slicer = pytest.importorskip("slicer")
    from conftest import new_scene, phantom

    from LumbarSegLib.scene.segments import labels_to_segmentation
    from LumbarSegLib.scene.volumes import sitk_to_volume_node

    logic = load_module().LumbarSegLogic()
    ct, labels = phantom(seed=7)
    scene = new_scene()
    segmentation = labels_to_segmentation(scene, labels, sitk_to_volume_node(scene, ct, "CT"), smoothing=0.5)
    closed = slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()
    segment = segmentation.GetSegmentation().GetNthSegment(0)
    surface = segment.GetRepresentation(closed)
    logic.setSmoothing(segmentation, 0.5)  # the value it has
    assert segment.GetRepresentation(closed) is surface  # the same surface object: nothing was rebuilt
    logic.setSmoothing(segmentation, 0.1)
    assert segment.GetRepresentation(closed) is not surface
    # The widget's side (a value loaded into the GUI is no change): test_widget_keeps_the_gui_and_...


@pytest.mark.slow
def test_logic_keeps_edits_made_while_a_run_is_going():
    """'Overwrite' was answered for the segmentation as it was at the start; painting while the subprocess
    runs is kept (the result goes to a new node), and the run's messages reach the module (NaN voxels)."""
    slicer = pytest.importorskip("slicer")
    from conftest import paint_block, fake_engine, labels_box_lps, new_scene, phantom, with_nan_rows

    from LumbarSegLib.scene.run import run_segmentation
    from LumbarSegLib.scene.segments import segmentation_to_label_array
    from LumbarSegLib.scene.volumes import sitk_to_volume_node

    logic = load_module().LumbarSegLogic()
    logic.pythonExecutable = sys.executable
    ct, labels = phantom(seed=7)
    scene = new_scene()
    volume = sitk_to_volume_node(scene, with_nan_rows(ct), "CT")
    _, outcome = run_segmentation(scene, volume, segment_fn=fake_engine(labels, labels_box_lps(labels)))
    seg = outcome.segmentation_node
    paint_block(seg, ct, "L2", np.s_[5:9, 5:9, 5:9])
    job = logic.startSegmentation(scene, volume, segmentationNode=seg, overwriteEdited=True, device="cpu")
    paint_block(seg, ct, "L3", np.s_[12:15, 12:15, 12:15])  # while the process runs
    edited = segmentation_to_label_array(seg, volume).copy()
    assert job.process.wait(300) and job.process.state == "done", job.process.error
    finished = logic.finishSegmentation(scene, job)
    np.testing.assert_array_equal(segmentation_to_label_array(seg, volume), edited)
    if finished.segmentation_node is not None:  # the model found something: it went to a new node
        assert finished.segmentation_node is not seg and finished.created_new
    assert any("set to air" in m for m in finished.messages + logic.lastResult.messages)


def test_logic_reports_a_volume_without_voxels_at_once():
    slicer = pytest.importorskip("slicer")

    from LumbarSegLib.errors import InputError

    module = load_module()
    scene = slicer.vtkMRMLScene()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Empty")
    with pytest.raises(InputError, match="no voxel data"):
        module.LumbarSegLogic().startSegmentation(scene, volume)


def test_stl_export_refuses_the_working_folder_a_directory_button_reports(tmp_path, monkeypatch):
    """ctkDirectoryButton.directory is "." until the user picks a folder (bug 4): never export there."""
    slicer = pytest.importorskip("slicer")
    from conftest import new_scene, phantom

    from LumbarSegLib.errors import InputError
    from LumbarSegLib.scene import export
    from LumbarSegLib.scene.segments import labels_to_segmentation
    from LumbarSegLib.scene.volumes import sitk_to_volume_node

    logic = load_module().LumbarSegLogic()
    ct, labels = phantom(seed=7)
    scene = new_scene()
    segmentation = labels_to_segmentation(scene, labels, sitk_to_volume_node(scene, ct, "CT"))
    monkeypatch.chdir(tmp_path)
    for folder in (".", "", "exports"):
        with pytest.raises(InputError, match="Choose an export folder"):
            logic.exportStl(segmentation, folder)
    assert list(tmp_path.iterdir()) == []
    assert export.chosen_folder(".") is None and export.chosen_folder(str(tmp_path)) == tmp_path
    start = export.default_export_folder(None)
    assert start.is_absolute() and start.is_dir()
    assert export.default_export_folder(type("App", (), {"defaultScenePath": str(tmp_path)})()) == tmp_path
    # The widget shows and uses that folder: test_widget_keeps_the_gui_and_the_parameter_node_in_step.


# --------------------------------------------------------------------------------------------------
# CMake: configure the extension against a stand-in for Slicer's macros


SLICER_STUB = r"""
set(Slicer_FOUND 1)
set(Slicer_USE_FILE ${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake)
set(Slicer_EXTENSION_GENERATE_CONFIG ${CMAKE_CURRENT_LIST_DIR}/empty.cmake)
set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/cpack.cmake)
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.13/qt-scripted-modules)
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.13/qt-scripted-modules)
function(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY "WITH_GENERIC_TESTS;WITH_SUBDIR" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  set(out "NAME ${MY_NAME}\n")
  foreach(f ${MY_SCRIPTS})
    if(IS_ABSOLUTE ${f})
      file(RELATIVE_PATH tgt ${CMAKE_CURRENT_BINARY_DIR} ${f})
      set(src ${f})
    else()
      set(tgt ${f})
      set(src ${CMAKE_CURRENT_SOURCE_DIR}/${f})
    endif()
    if(NOT EXISTS ${src})
      message(FATAL_ERROR "missing script ${src}")
    endif()
    string(APPEND out "SCRIPT ${tgt}\n")
  endforeach()
  foreach(f ${MY_RESOURCES})
    if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${f})
      message(FATAL_ERROR "missing resource ${f}")
    endif()
    string(APPEND out "RESOURCE ${f}\n")
  endforeach()
  file(WRITE ${CMAKE_BINARY_DIR}/manifest.txt "${out}")
endfunction()
function(slicer_add_python_unittest)
  cmake_parse_arguments(MY "" "SCRIPT" "" ${ARGN})
  file(WRITE ${CMAKE_BINARY_DIR}/unittest.txt "${MY_SCRIPT}")
endfunction()
"""


def test_cmake_extension_configures(tmp_path):
    """The extension configures, and installs LumbarSeg.py with the engine's runtime only (read back from the
    list of scripts CMake hands to Slicer's macro)."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake not installed")
    stub = tmp_path / "SlicerStub"
    stub.mkdir()
    (stub / "SlicerConfig.cmake").write_text(SLICER_STUB)
    (stub / "UseSlicer.cmake").write_text("")
    (stub / "empty.cmake").write_text("")
    (stub / "cpack.cmake").write_text(
        'file(WRITE ${CMAKE_BINARY_DIR}/meta.txt "${EXTENSION_CATEGORY}|${EXTENSION_HOMEPAGE}|'
        '${EXTENSION_ICONURL}|${EXTENSION_SCREENSHOTURLS}|${EXTENSION_CONTRIBUTORS}|${EXTENSION_DESCRIPTION}|'
        '${EXTENSION_DEPENDS}")\n')
    build = tmp_path / "build"
    result = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), f"-DSlicer_DIR={stub}",
                             "-DBUILD_TESTING=ON"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    manifest = (build / "manifest.txt").read_text(encoding="utf-8").split("\n")
    scripts = {line.split(" ", 1)[1] for line in manifest if line.startswith("SCRIPT ")}
    every = {p.relative_to(ROOT).as_posix() for p in (ROOT / "LumbarSegLib").rglob("*.py")}
    left_out = ("training", "phantoms", "web", "batch")  # not the runtime: never on Slicer's module path
    lib = {rel for rel in every if rel.split("/")[1] not in left_out}
    assert "LumbarSegLib/scene/run.py" in lib and "LumbarSegLib/study/runner.py" in lib
    assert "LumbarSegLib/inference/pipeline.py" in lib and "LumbarSegLib/cli.py" in lib
    assert scripts == {"LumbarSeg.py"} | lib  # the runtime installs beside the module, all of it
    assert not {s for s in scripts if s.split("/")[1:2] and s.split("/")[1] in left_out}
    for rel in lib:
        assert (build / "LumbarSeg" / rel).read_bytes() == (ROOT / rel).read_bytes()
    resources = {line.split(" ", 1)[1] for line in manifest if line.startswith("RESOURCE ")}
    assert resources == {"Resources/Icons/LumbarSeg.png", "Resources/UI/LumbarSeg.ui",
                         "Resources/SegmentationCategoryTypeModifier-LumbarSeg.term.json"}
    # Model bundles with their cards, and the sample CT with its checksum, beside the engine package.
    installed = build / "lib" / "Slicer-5.13" / "qt-scripted-modules" / "Resources"
    for rel in ("Models/lumbarseg_cpu.pt", "Models/lumbarseg_cpu.json", "Models/lumbarseg_cpu.md",
                "SampleData/LumbarSegSampleCT.nrrd", "SampleData/LumbarSegSampleCT.nrrd.sha256"):
        if (ROOT / "Resources" / rel).is_file():
            assert (installed / rel).read_bytes() == (ROOT / "Resources" / rel).read_bytes(), rel
    assert (build / "unittest.txt").read_text(encoding="utf-8") == "LumbarSeg.py"
    meta = (build / "meta.txt").read_text(encoding="utf-8").split("|")
    category, homepage, icon, screenshot, contributors, description, depends = meta
    assert category == "Segmentation" and contributors and "L1-L5" in description
    assert "not a medical device" in description and "developers" in contributors
    assert depends == "PyTorch"  # torch comes through the PyTorch extension's PyTorchUtils
    assert homepage.startswith("https://") and icon.endswith("LumbarSeg/Resources/Icons/LumbarSeg.png")
    assert screenshot.endswith("docs/screenshot.png")
    for url_path in ("LumbarSeg/Resources/Icons/LumbarSeg.png", "docs/screenshot.png"):
        assert (ROOT / url_path).is_file()
    assert "trained on synthetic CTs" not in description and "real" in description


# The Extensions Index's checker (Slicer/ExtensionsIndex scripts/check_description_files.py) reads the top-level
# CMakeLists.txt as plain text with these patterns; CMake variables are not expanded there.
INDEX_PROJECT = r'project\s*\(\s*([^\s\)\n\r]+)'
INDEX_ICONURL = r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"[ ]*\)'
INDEX_SCREENSHOTURLS = r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)'
# Slicer's Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json: required keys, allowed keys (no others).
CATALOG_REQUIRED = {"$schema", "category", "scm_url"}
CATALOG_ALLOWED = CATALOG_REQUIRED | {"scm_revision", "scm_type", "build_dependencies", "build_subdirectory",
                                      "enabled", "tier"}
REPOSITORY = "https://github.com/lumbarseg/SlicerLumbarSeg"


def test_extensions_index_reads_the_cmake_file_and_the_catalog_entry_as_it_must():
    import json

    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    flags = re.IGNORECASE | re.MULTILINE
    project = re.findall(INDEX_PROJECT, text, flags)[0]
    entries = sorted((ROOT / "ExtensionsIndex").glob("*.json"))
    assert [e.name for e in entries] == [f"{project}.json"]  # the entry's file name is the extension's name
    assert not project.lower().startswith("slicer")  # the Index: the extension name does not start with Slicer,
    entry = json.loads(entries[0].read_text(encoding="utf-8"))
    repository_name = entry["scm_url"].rstrip("/").split("/")[-1].removesuffix(".git")
    assert repository_name == "Slicer" + project  # ... the repository's name does
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert CATALOG_REQUIRED <= set(entry) <= CATALOG_ALLOWED
    assert entry["build_dependencies"] == ["PyTorch"] == re.findall(r'set\(EXTENSION_DEPENDS "([^"]*)"\)', text)[0].split()
    assert entry["category"] == re.findall(r'set\(EXTENSION_CATEGORY "([^"]*)"\)', text)[0]
    assert entry["scm_url"] == REPOSITORY and entry["scm_revision"] == "main" and entry["tier"] == 1
    raw = REPOSITORY.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    icon = re.findall(INDEX_ICONURL, text, flags)
    screenshots = re.findall(INDEX_SCREENSHOTURLS, text, flags)
    assert icon and screenshots, "the checker finds no icon or screenshot URL"
    for url in [icon[0], *screenshots[0].split()]:
        assert url.startswith(raw) and "${" not in url, url
        assert (ROOT / url[len(raw):]).is_file(), url  # the file the URL will serve once pushed
    assert re.findall(r'set\(EXTENSION_HOMEPAGE "([^"]*)"\)', text)[0] == REPOSITORY + "#readme"


# --------------------------------------------------------------------------------------------------
# Parameter node, PyTorch checks, the self-test with and without torch, licence


def test_torch_version_requirement():
    from LumbarSegLib.scene.dependencies import torch_version_problem

    assert torch_version_problem("2.13.0+cpu") is None
    assert torch_version_problem("2.1.0") is None
    assert "needs torch>=2.1" in torch_version_problem("1.13.1+cu117")
    assert "not installed" in torch_version_problem(None)
    assert load_module().torchProblem() is None  # this environment has torch 2.x


SELF_TEST = """
    import sys, unittest, logging, importlib.util
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    for name in ("qt", "ctk", "slicer.ScriptedLoadableModule"):
        sys.modules[name] = None
    {block_torch}
    spec = importlib.util.spec_from_file_location("LumbarSeg", {module!r})
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    print("torchProblem:", m.torchProblem())
    test = m.LumbarSegTest("runTest")
    result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(test)
    print("skip reason:", getattr(test, "modelSkipReason", None))
    print("torch imported:", "torch" in sys.modules and sys.modules["torch"] is not None)
    {after}
    sys.exit(0 if result.wasSuccessful() else 1)
"""

# Makes every "import torch" fail, as on the extension build servers (importlib.util.find_spec raises
# ValueError for a module set to None in sys.modules, so a finder that reports it absent is used instead).
BLOCK_TORCH = """
    import importlib.abc, importlib.machinery
    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ModuleNotFoundError("No module named 'torch'", name="torch")
            return None
    sys.meta_path.insert(0, NoTorch())
    _find_spec = importlib.util.find_spec
    importlib.util.find_spec = lambda name, *a: None if name.split(".")[0] == "torch" else _find_spec(name, *a)
"""


def test_self_test_passes_without_torch_and_says_why_the_model_part_was_skipped():
    pytest.importorskip("slicer")
    after = """
    try:
        m.LumbarSegLogic().installDependencies()
    except RuntimeError as exc:
        print("install:", exc)
    """
    code = SELF_TEST.format(block_torch=textwrap.indent(textwrap.dedent(BLOCK_TORCH), "    ").strip(),
                            module=str(MODULE_FILE), after=textwrap.indent(textwrap.dedent(after), "    ").strip())
    result = _run_python(code, cwd="/")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "torchProblem: PyTorch is not installed." in out
    assert "Skipped the model part of the LumbarSeg self-test: PyTorch is not installed." in out
    assert "Scene logic passed" in out and "skip reason: PyTorch is not installed." in out
    assert "torch imported: False" in out
    assert "install: the PyTorch extension is not installed" in out  # no PyTorchUtils outside Slicer
    assert "OK" in out


@pytest.mark.slow
def test_self_test_runs_the_model_part_when_torch_is_there():
    pytest.importorskip("slicer")
    code = SELF_TEST.format(block_torch="", module=str(MODULE_FILE), after="")
    result = _run_python(code, cwd="/")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "skip reason: None" in out
    for step in ("Scene logic passed", "Full flow passed", "Background run and cancel passed"):
        assert step in out, step


def test_each_self_test_method_skips_without_torch_when_unittest_runs_it_directly():
    """The build servers' unittest runs every test_* method on its own, bypassing runTest's torch guard (bug 3):
    without torch the model methods must be skipped, saying why, and the scene-logic one must pass."""
    pytest.importorskip("slicer")
    code = f"""
    import sys, unittest, importlib.util
    for name in ("qt", "ctk", "slicer.ScriptedLoadableModule"):
        sys.modules[name] = None
    {textwrap.indent(textwrap.dedent(BLOCK_TORCH), "    ").strip()}
    spec = importlib.util.spec_from_file_location("LumbarSeg", {str(MODULE_FILE)!r})
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    suite = unittest.TestLoader().loadTestsFromTestCase(m.LumbarSegTest)
    names = sorted(t._testMethodName for t in suite)
    result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(suite)
    print("methods:", names)
    print("skipped:", sorted(t._testMethodName for t, _ in result.skipped))
    print("reasons:", sorted(set(r for _, r in result.skipped)))
    sys.exit(0 if result.wasSuccessful() else 1)
    """
    result = _run_python(code, cwd="/")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "methods: ['test_LumbarSeg_BackgroundRunAndCancel', 'test_LumbarSeg_FullFlow', " \
           "'test_LumbarSeg_SceneLogic']" in out
    assert "skipped: ['test_LumbarSeg_BackgroundRunAndCancel', 'test_LumbarSeg_FullFlow']" in out
    assert "needs PyTorch: PyTorch is not installed." in out


def test_terminology_registers_from_a_source_checkout(tmp_path):
    """In a source checkout LumbarSegLib is one folder up from LumbarSeg.py and only importable after
    ensureLibImportable() (bug 6): registerTerminology must work there, with Slicer's terminology logic."""
    pytest.importorskip("slicer")
    checkout = tmp_path / "SlicerLumbarSeg"
    shutil.copytree(ROOT / "LumbarSeg", checkout / "LumbarSeg", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "LumbarSegLib", checkout / "LumbarSegLib", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "Resources", checkout / "Resources", ignore=shutil.ignore_patterns("Models"))
    code = f"""
        import sys, importlib.util
        sys.modules["qt"] = None
        # Only the checkout may provide LumbarSegLib: not this repository's editable install.
        sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()
                            and "editable" not in getattr(f, "__name__", "").lower()]
        # (a virtual environment inside the repository keeps its site-packages: slicer-core, torch ...)
        sys.path[:] = [p for p in sys.path if not p.startswith({str(ROOT)!r}) or "site-packages" in p]
        assert importlib.util.find_spec("LumbarSegLib") is None
        import types
        import slicer
        logic = slicer.vtkSlicerTerminologiesModuleLogic()  # Slicer's own terminology logic (real)
        # Inside Slicer it is reached through the application's module registry, which slicer-core has not.
        slicer.modules = types.SimpleNamespace(terminologies=types.SimpleNamespace(logic=lambda: logic))
        spec = importlib.util.spec_from_file_location("LumbarSeg", {str(checkout / "LumbarSeg" / "LumbarSeg.py")!r})
        m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
        context = m.registerTerminology()
        print("context:", context)
        print("lib:", sys.modules["LumbarSegLib"].__file__)
    """
    result = _run_python(code, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    from LumbarSegLib.constants import TERMINOLOGY_CONTEXT

    assert f"context: {TERMINOLOGY_CONTEXT}" in result.stdout
    assert f"lib: {checkout / 'LumbarSegLib'}" in result.stdout


def test_no_second_segmentations_logic_doubles_the_converter_rules():
    """Every vtkSlicerSegmentationsModuleLogic registers the converter rules again (bug 7): inside Slicer the
    Segmentations module's logic has registered them; headless one logic is made once for all scenes."""
    pytest.importorskip("slicer")
    code = """
        import slicer
        from LumbarSegLib.scene.scene import ensure_segmentations_logic
        factory = slicer.vtkSegmentationConverterFactory.GetInstance()
        for scene in (slicer.vtkMRMLScene(), slicer.vtkMRMLScene()):
            ensure_segmentations_logic(scene)
        print("headless:", len(factory.GetConverterRules()))
    """
    result = _run_python(code, cwd="/")
    assert result.returncode == 0, result.stderr[-3000:]
    code_app = """
        import slicer
        factory = slicer.vtkSegmentationConverterFactory.GetInstance()
        own = slicer.vtkSlicerSegmentationsModuleLogic()  # as Slicer's Segmentations module makes at start-up
        own.SetMRMLScene(slicer.vtkMRMLScene())
        rules = len(factory.GetConverterRules())
        from LumbarSegLib.scene.scene import ensure_segmentations_logic
        ensure_segmentations_logic(slicer.vtkMRMLScene())
        print("app:", rules, len(factory.GetConverterRules()))
    """
    result_app = _run_python(code_app, cwd="/")
    assert result_app.returncode == 0, result_app.stderr[-3000:]
    single = int(result_app.stdout.split("app:")[1].split()[0])
    assert single > 0
    assert f"headless: {single}" in result.stdout
    assert f"app: {single} {single}" in result_app.stdout


def test_help_says_dicom_seg_export_needs_quantitative_reporting_on_older_slicer():
    parent = SimpleNamespace()
    load_module().LumbarSeg(parent)
    assert "QuantitativeReporting" in parent.helpText and "5.8" in parent.helpText


def test_license_is_the_apache_2_0_text_pyproject_names():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text) > 10000
    assert 'license = { text = "Apache-2.0" }' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")


def test_reload_reloads_the_library_lower_layers_first():
    """Developer mode's Reload runs reloadLibrary(): every loaded LumbarSegLib module is executed again (an
    edit to the engine takes effect without restarting Slicer), lower layers before the ones using them.
    In a fresh interpreter: reloading the engine under this test process would split its classes in two."""
    script = textwrap.dedent("""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("LumbarSegModule", sys.argv[1])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        session_module = module.slicerLib("session")
        before = session_module.StudySession
        names = module.reloadLibrary()
        assert session_module.StudySession is not before, "not reloaded"
        assert sys.modules["LumbarSegLib.scene.session"] is session_module
        assert names.index("LumbarSegLib.errors") < names.index("LumbarSegLib.study.engine_process") \\
            < names.index("LumbarSegLib.scene.engine_job") < names.index("LumbarSegLib.scene.session")
        print("ok", len(names))
        """)
    result = subprocess.run([sys.executable, "-c", script, str(MODULE_FILE)], capture_output=True, text=True,
                            timeout=300, cwd=ROOT)
    assert result.returncode == 0 and result.stdout.startswith("ok"), result.stderr[-2000:]


# --------------------------------------------------------------------------------------------------
# The Widget driven headless: the module loaded down its Slicer branch with stand-ins for Qt, the scripted
# module base classes and the parameter node wrapper; widgets, parameter node and Logic are fakes.


def load_gui_module(monkeypatch):
    """LumbarSeg.py as Slicer imports it (SLICER_GUI), with stand-ins for what only the application has."""
    slicer = pytest.importorskip("slicer")
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        def __init__(self, *args):
            pass

    class ScriptedLoadableModuleTest(unittest.TestCase):
        pass

    scripted.ScriptedLoadableModule = scripted.ScriptedLoadableModuleWidget = ScriptedLoadableModule
    scripted.ScriptedLoadableModuleLogic, scripted.ScriptedLoadableModuleTest = (ScriptedLoadableModuleLogic,
                                                                                 ScriptedLoadableModuleTest)
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls
    wrapper.Choice = lambda values: ("Choice", list(values))
    wrapper.WithinRange = lambda low, high: ("WithinRange", low, high)
    monkeypatch.setitem(sys.modules, "qt", types.ModuleType("qt"))
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", scripted)
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", wrapper)
    assert hasattr(slicer.util, "VTKObservationMixin") and hasattr(slicer.util, "tryWithErrorDisplay")
    spec = importlib.util.spec_from_file_location("LumbarSegGuiUnderTest", MODULE_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.SLICER_GUI is True
    return module


def parameter_fields(module):
    """{field: (type, default)} of the module's parameter node class."""
    cls = module.LumbarSegParameterNode
    hints = typing.get_type_hints(cls, include_extras=True)
    return {name: (hint, getattr(cls, name, None)) for name, hint in hints.items()}


class FakeParameters:
    """A parameter node with exactly the declared fields: reading or writing another one fails."""

    def __init__(self, module):
        object.__setattr__(self, "_fields", parameter_fields(module))
        for name, (_, default) in self._fields.items():
            object.__setattr__(self, name, default)
        object.__setattr__(self, "parameterNode", SimpleNamespace(StartModify=lambda: 0, EndModify=lambda was: 0))
        object.__setattr__(self, "connected", [])

    def connectGui(self, ui):  # Slicer's wrapper: ties the widgets, returns a tag that undoes it
        self.connected.append(ui)
        return len(self.connected)

    def disconnectGui(self, tag):
        assert tag == len(self.connected)
        self.connected.pop()

    def __setattr__(self, name, value):
        assert name in self._fields, f"{name} is not a parameter node field"
        object.__setattr__(self, name, value)


class FakeWidget:
    """A Qt widget stand-in: keeps what is set, answers what is read."""

    def __init__(self):
        self.node, self.currentIndex, self.currentPath, self.value, self.connections = None, 0, "", 0.5, []

    def setCurrentNode(self, node):
        self.node = node

    def currentNode(self):
        return self.node

    def setCurrentIndex(self, index):
        self.currentIndex = index

    def setEnabled(self, enabled):
        self.enabled = enabled

    def setVisible(self, visible):
        self.visible = visible

    def setMRMLTableNode(self, table):
        self.table = table

    def connect(self, signal, slot):
        self.connections.append((signal, slot))


class FakeUI:
    """The .ui's widgets by name; a name the .ui does not have is an error."""

    def __init__(self):
        object.__setattr__(self, "_widgets", {name: FakeWidget() for name in ui_widgets()[0]})

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        assert name in self._widgets, f"{name} is not in LumbarSeg.ui"
        return self._widgets[name]


class FakeLogic:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: self.calls.append((name, args, kwargs))


def gui_widget(monkeypatch):
    module = load_gui_module(monkeypatch)
    widget = module.LumbarSegWidget(SimpleNamespace(isEntered=True))
    widget.ui, widget.logic, widget._parameterNode = FakeUI(), FakeLogic(), FakeParameters(module)
    widget.logic.modelInfoHtml = lambda path=None: "model"
    return module, widget


def test_parameter_node_declares_what_the_bindings_and_the_widget_use(monkeypatch):
    from LumbarSegLib.scene import panel

    module = load_gui_module(monkeypatch)
    fields = parameter_fields(module)
    assert set(panel.CONNECTED.values()) <= set(fields)
    assert fields["device"] == (panel.Device, panel.Device.auto)
    assert fields["roiMode"] == (panel.RoiMode, panel.RoiMode.auto)
    assert fields["modelMode"] == (panel.ModelMode, panel.ModelMode.bundled)
    assert fields["smoothing"] == (typing.Annotated[float, ("WithinRange", 0.0, 1.0)], 0.5)
    for node_field in ("inputVolume", "outputSegmentation", "referenceSegmentation", "metricsTable", "cropROI"):
        assert fields[node_field][0].__name__.startswith("vtkMRML")
    # The Logic wraps Slicer's parameter node in that class.
    assert module.LumbarSegLogic.getParameterNode.__qualname__ == "LumbarSegLogic.getParameterNode"


def test_widget_keeps_the_gui_and_the_parameter_node_in_step(monkeypatch, tmp_path):
    """connectGui ties the widgets when a parameter node is set (and is undone when it goes); the rest of the
    panel follows the node's changes; a smoothing the user sets reaches the surfaces once, while a loaded
    node's own smoothing (its surfaces have it: bug 7) and one set during a run do not."""
    from LumbarSegLib.scene import panel

    module, widget = gui_widget(monkeypatch)
    ui, p = widget.ui, widget._parameterNode
    widget._parameterNode, observed = None, []
    widget.addObserver = lambda node, event, method: observed.append(node)
    widget.removeObserver = lambda node, event, method: observed.remove(node)
    p.modelMode, p.roiMode, p.smoothing, p.modelPath = panel.ModelMode.file, panel.RoiMode.never, 0.2, "/m.pt"
    widget.setParameterNode(p)
    assert p.connected == [ui] and observed == [p]
    assert ui.modelPathLineEdit.enabled is True and ui.modelPathLineEdit.currentPath == "/m.pt"
    assert ui.applyButton.enabled is False and ui.applyButton.toolTip == "Select a CT volume first."
    assert ui.modelInfoLabel.text == "model" and widget.logic.calls == []  # the loaded smoothing is not re-applied
    # the export button shows a real folder, never a directory button's "." (bug 4)
    shown = Path(ui.exportFolderButton.directory)
    assert shown.is_absolute() and shown.is_dir()
    widget.onExportFolderChanged(".")
    assert p.exportFolder == ""
    widget.onExportFolderChanged(str(tmp_path))
    assert p.exportFolder == str(tmp_path) and widget.exportFolder() == tmp_path
    # the user picks a model file, then moves the slider (connectGui writes it; the node's ModifiedEvent follows)
    widget.onModelPathChanged("/other.pt")
    assert p.modelPath == "/other.pt" and widget.modelPath() == "/other.pt"
    p.outputSegmentation, p.smoothing = "segmentation", 0.7
    widget.updateGUIFromParameterNode()
    assert widget.logic.calls == [("setSmoothing", ("segmentation", 0.7), {})]
    widget.updateGUIFromParameterNode()  # another field changed: the surfaces are not rebuilt
    assert len(widget.logic.calls) == 1
    widget._job, p.smoothing = object(), 0.9  # while a run is going
    widget.updateGUIFromParameterNode()
    assert len(widget.logic.calls) == 1
    assert ui.cancelButton.enabled and not ui.exportStlButton.enabled and not ui.applyButton.enabled
    widget.setParameterNode(None)  # module left, scene closed
    assert p.connected == [] and observed == []
    p.modelMode = panel.ModelMode.bundled
    assert widget.modelPath() is None


def test_widget_cleanup_stops_and_waits_for_a_running_job(monkeypatch):
    """cleanup() (module reload, application exit), a scene close and Cancel end a running process through
    the Logic, which waits for it (tested on a real process in test_slicer_subprocess.py)."""
    module, widget = gui_widget(monkeypatch)
    widget._timer, widget._parameterNode = SimpleNamespace(stop=lambda: None), None
    widget.removeObservers = lambda: None
    for end in (widget.cleanup, lambda: widget.onSceneStartClose(None, None), widget.onCancelButton):
        job = object()
        widget._job, widget.logic.calls = job, []
        end()
        assert widget._job is None and widget.logic.calls[0] == ("cancelSegmentation", (job,), {})
    assert widget.ui.statusLabel.text == "Cancelled. Nothing was changed."
    source = (ROOT / "LumbarSegLib" / "study" / "engine_process.py").read_text(encoding="utf-8")
    cancel = source[source.index("    def cancel(self"):source.index("    # --- reading the output")]
    assert "self._process.wait(wait)" in cancel


def test_user_visible_text_goes_through_the_translation_function(monkeypatch):
    from LumbarSegLib.scene import panel

    module, widget = gui_widget(monkeypatch)
    monkeypatch.setattr(module, "_", lambda text: "<" + text + ">")
    monkeypatch.setattr(panel, "tr", lambda text: "[" + text + "]")
    widget._timer, widget._job = SimpleNamespace(stop=lambda: None), object()
    widget.onCancelButton()
    assert widget.ui.statusLabel.text == "<Cancelled. Nothing was changed.>"
    assert widget.ui.applyButton.toolTip == "[Select a CT volume first.]"
    assert panel.run_problem(widget._parameterNode).startswith("[No volume selected")
    assert "Copy diagnostics" in UI_FILE.read_text(encoding="utf-8")  # .ui strings are translated by Qt
    plain = load_module()
    assert plain._("x") == "x" and plain.translate("ctx", "y") == "y"  # plain Python: text unchanged


# --------------------------------------------------------------------------------------------------
# The panel's decisions and the Logic's questions, headless (LumbarSegLib.scene.panel, .module_logic)


def test_panel_decides_what_segment_and_the_dependency_line_show(monkeypatch, tmp_path):
    from LumbarSegLib.scene import panel

    p = SimpleNamespace(inputVolume=None, modelMode="bundled", modelPath="", outputSegmentation=None)
    assert "No volume selected" in panel.run_problem(p)
    p.inputVolume = "CT"
    assert panel.run_problem(p) is None and panel.model_path(p) is None
    p.modelMode, p.modelPath = "file", str(tmp_path / "missing.pt")
    assert "existing model file" in panel.run_problem(p)
    (tmp_path / "missing.pt").write_bytes(b"")
    assert panel.run_problem(p) is None and panel.model_path(p) == p.modelPath
    assert panel.dependency_status([], None) == ""
    text = panel.dependency_status(["torch"], "PyTorch is not installed.")
    assert text.startswith("PyTorch is not installed.") and "torch" in text
    ui = FakeUI()
    panel.show_dependency_status(ui, ["torch"], None)
    assert ui.installDependenciesButton.visible and ui.advancedCollapsibleButton.collapsed is False
    states = panel.button_states(True, True, running=False)
    assert states["applyButton"] and not states["cancelButton"] and states["exportStlButton"]
    assert panel.progress_percent(SimpleNamespace(overall=0.456)) == 46
    assert panel.start_text(SimpleNamespace(box_lps=[1])).startswith("Using your crop box")
    outcome = SimpleNamespace(segmentation_node="seg", roi_node=None, metrics_table="table")
    params = SimpleNamespace(outputSegmentation=None, cropROI="old roi", metricsTable=None)
    panel.apply_outcome(outcome, params)
    assert (params.outputSegmentation, params.cropROI, params.metricsTable) == ("seg", "old roi", "table")


def test_panel_asks_before_replacing_edits_with_three_answers():
    from LumbarSegLib.scene import panel

    class Box:
        AcceptRole, DestructiveRole, Cancel = "accept", "destructive", "cancel"

        def __init__(self, parent):
            self.buttons, self.texts = [], []

        def __getattr__(self, name):  # setWindowTitle, setText, setInformativeText, setDefaultButton, exec_
            return lambda *args: self.texts.append(args)

        def addButton(self, *args):
            self.buttons.append(args)
            return args[0]

        def clickedButton(self):
            return Box.answer

    qt = SimpleNamespace(QMessageBox=Box)
    for answer, expected in (("New segmentation (keep edits)", False), ("Overwrite", True), (None, None)):
        Box.answer = answer
        assert panel.ask_keep_edits(qt, None, "LumbarSeg L1-L5") is expected


def test_panel_chooses_the_first_ct_of_the_scene_not_a_label_map():
    pytest.importorskip("slicer")
    from conftest import new_scene

    from LumbarSegLib.scene import panel

    scene = new_scene()
    scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    p = SimpleNamespace(inputVolume=None)
    panel.choose_input_volume(p, scene)
    assert p.inputVolume is None
    ct = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    panel.choose_input_volume(p, scene)
    assert p.inputVolume is ct
    panel.choose_input_volume(p, new_scene())  # a chosen CT stays
    assert p.inputVolume is ct


def test_logic_installs_dependencies_only_when_missing_and_agreed(monkeypatch):
    from LumbarSegLib.scene import dependencies
    from LumbarSegLib.scene.module_logic import ModuleLogic

    logic, said, asked = ModuleLogic(), [], []
    monkeypatch.setattr(dependencies, "missing_packages", lambda: [])
    monkeypatch.setattr(dependencies, "torch_problem", lambda: None)
    assert logic.ensureDependencies(lambda q: asked.append(q), said.append) is True and not asked
    missing = ["torch"]
    monkeypatch.setattr(dependencies, "missing_packages", lambda: list(missing))
    assert logic.ensureDependencies(lambda q: asked.append(q) or False, said.append) is False
    assert "needs PyTorch" in asked[0] and said[-1] == "PyTorch must be installed to segment."
    monkeypatch.setattr(logic, "installDependencies", lambda status: missing.clear())
    assert logic.ensureDependencies(lambda q: True, said.append) is True and said[-1] == "Dependencies installed."


def test_logic_asks_before_replacing_an_earlier_stl_export(tmp_path):
    pytest.importorskip("slicer")
    from conftest import new_scene, phantom

    from LumbarSegLib.scene.module_logic import ModuleLogic
    from LumbarSegLib.scene.segments import labels_to_segmentation
    from LumbarSegLib.scene.volumes import sitk_to_volume_node

    ct, labels = phantom(seed=7)
    scene = new_scene()
    segmentation = labels_to_segmentation(scene, labels, sitk_to_volume_node(scene, ct, "CT"))
    logic, questions = ModuleLogic(), []
    first = logic.exportStlAsking(segmentation, str(tmp_path), lambda q: questions.append(q) or True)
    assert first and not questions
    stamps = {f: Path(f).stat().st_mtime_ns for f in first}
    assert logic.exportStlAsking(segmentation, str(tmp_path), lambda q: questions.append(q) or False) is None
    assert len(questions) == 1 and questions[0].endswith("Replace them?")
    assert {f: Path(f).stat().st_mtime_ns for f in first} == stamps  # kept
    again = logic.exportStlAsking(segmentation, str(tmp_path), lambda q: True)
    assert sorted(map(str, again)) == sorted(map(str, first))
