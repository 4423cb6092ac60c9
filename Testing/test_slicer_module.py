"""The scripted module without Qt: import guards, .ui consistency and the Logic class on a real MRML scene
(the widget driven headless: test_slicer_widget.py; CMake, parameter node and self-test: test_slicer_extension.py)."""

import dis
import inspect
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import MODULE_FILE, ROOT, load_module, run_python, ui_widgets  # noqa: E402  shared helpers


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


# --------------------------------------------------------------------------------------------------
# Import without Qt / without work


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
    result = run_python(code, cwd="/")
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
    result = run_python(code, cwd=str(tmp_path))
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


