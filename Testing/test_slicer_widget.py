"""The module's Widget driven headless (LumbarSeg.py loaded down its Slicer branch with stand-ins for Qt),
connectGui's bindings read from the .ui, and the panel's decisions (LumbarSegLib.scene.panel, .module_logic)."""

import importlib.util
import types
import typing
import unittest
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import MODULE_FILE, ROOT, UI_FILE, load_module, ui_widgets  # noqa: E402  shared helpers


# --------------------------------------------------------------------------------------------------
# connectGui's bindings, read from the .ui


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


def test_a_run_that_ends_while_the_user_is_in_another_module_is_loaded_all_the_same(monkeypatch):
    """exit() lets go of the parameter node and the run goes on (the timer keeps polling): its result goes into
    the scene's parameter node, not into an AttributeError that lost it."""
    import contextlib

    module, widget = gui_widget(monkeypatch)
    slicer = sys.modules["slicer"]
    shown = []
    for name, stand_in in (("WaitCursor", contextlib.nullcontext), ("setSliceViewerLayers", lambda **kw: None),
                           ("resetThreeDViews", lambda: None), ("errorDisplay", shown.append),
                           ("warningDisplay", lambda *a, **kw: shown.append(a))):
        monkeypatch.setattr(slicer.util, name, stand_in, raising=False)
    monkeypatch.setattr(slicer, "mrmlScene", "scene", raising=False)  # the application's scene
    p, widget._parameterNode = widget._parameterNode, None
    widget.addObserver = widget.removeObserver = lambda node, event, method: None
    widget.setParameterNode(p)  # the module entered
    widget.exit()  # the user went to another module
    assert widget._parameterNode is None
    session = SimpleNamespace(poll=lambda: [], result_text=lambda: "Found L1.", result_alert=lambda: None)
    finished = []

    def finish(scene, job, reference, table):
        finished.append((reference, table))
        return SimpleNamespace(segmentation_node="segmentation", roi_node="roi", metrics_table="table")

    widget.logic.getParameterNode, widget.logic.session, widget.logic.finishSegmentation = (lambda: p,
                                                                                            lambda: session, finish)
    widget._timer = SimpleNamespace(stop=lambda: None)
    widget._job = SimpleNamespace(process=SimpleNamespace(running=False), settings={}, volume_node="ct")
    widget.onPollJob()
    assert shown == [] and finished == [(None, None)]
    assert (p.outputSegmentation, p.cropROI, p.metricsTable) == ("segmentation", "roi", "table")
    assert widget.ui.statusLabel.text == "Found L1."
