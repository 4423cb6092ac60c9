"""LumbarSeg: automatic L1-L5 segmentation of CT in 3D Slicer (two-stage method of Lu et al. 2023).

The scripted module (Module, Widget, Logic, Test), a shell over ``LumbarSegLib``. The Widget is bindings: what
it shows and enables is decided headless in ``LumbarSegLib.scene.panel``; the Logic (``scene.module_logic``)
holds the Qt-free study session ``scene.session`` that the web app shares. The segmentation runs as
``lumbarseg segment`` in a subprocess (PythonSlicer): it runs at full speed, is polled by a timer and ends at
once on Cancel. Importing this file loads no engine, and it imports without Qt (tests): of ``LumbarSegLib``
(beside this file when installed, one folder up in a source checkout) only two light modules are imported.
"""

import contextlib
import importlib
import logging
import os
import sys

try:  # inside 3D Slicer
    import qt
    import slicer
    import vtk
    from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                               ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
    from slicer.util import VTKObservationMixin

    SLICER_GUI = True
except ImportError:  # plain Python (tests, slicer-core wheel without Qt): logic only
    import unittest

    SLICER_GUI = False
    qt = None
    try:
        import slicer  # slicer-core: MRML and module logic, no application
        import vtk
    except ImportError:
        slicer = vtk = None

    class ScriptedLoadableModule:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=None):
            logging.info(message)

    ScriptedLoadableModuleWidget = ScriptedLoadableModuleLogic = ScriptedLoadableModule
    VTKObservationMixin = object

try:  # Slicer's translation functions (Slicer >= 5.4); the text itself where they do not exist
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:
    def _(text):
        return text

    def translate(context, text):
        return text


MODULE_DIR = os.path.dirname(os.path.abspath(__file__))


def ensureLibImportable():
    """Make ``LumbarSegLib`` importable: beside this file (installed) or at the repository root (source)."""
    for candidate in (MODULE_DIR, os.path.dirname(MODULE_DIR)):
        if os.path.isfile(os.path.join(candidate, "LumbarSegLib", "__init__.py")):
            if candidate not in sys.path:
                sys.path.insert(0, candidate)
            return candidate
    return None


def slicerLib(name):
    """The ``LumbarSegLib.scene`` module ``name`` ("session", "export", ...), imported on first use."""
    ensureLibImportable()
    return importlib.import_module("LumbarSegLib.scene." + name)


ensureLibImportable()
from LumbarSegLib.scene import panel  # noqa: E402  (these two import nothing heavy)
from LumbarSegLib.scene.module_logic import ModuleLogic  # noqa: E402


def missingPackages():
    """Import names of required Python packages that are not installed (nothing is imported)."""
    return slicerLib("dependencies").missing_packages()


def torchProblem():
    """Why the model cannot run here (None when PyTorch is importable and recent enough); imports nothing."""
    return slicerLib("dependencies").torch_problem()


def reloadLibrary():
    """Reload every loaded ``LumbarSegLib`` module, lower layers first (Developer mode's Reload)."""
    return slicerLib("reload").reload_library()


def registerTerminology(terminologiesLogic=None):
    """Load the L1-L5 terminology this extension ships into Slicer's Terminologies module."""
    segments = slicerLib("segments")  # makes LumbarSegLib importable first (a source checkout has it one up)
    path = os.path.join(MODULE_DIR, "Resources", segments.TERMINOLOGY_FILE_NAME)
    return segments.load_terminology(terminologiesLogic or slicer.modules.terminologies.logic(), path)


def registerSampleData():
    """Register the bundled synthetic CT as the *LumbarSeg* sample in Sample Data (offline, checksummed)."""
    import SampleData
    icon = os.path.join(MODULE_DIR, "Resources", "Icons", "LumbarSeg.png")
    return slicerLib("sample_data").register_sample_data(SampleData, thumbnail=icon)


class LumbarSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("LumbarSeg")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.contributors = ["LumbarSeg developers (see the repository history)"]
        self.parent.helpText = _(
            "Automatic segmentation of the lumbar vertebrae L1-L5 in CT. A localizer network finds the lumbar "
            "spine and places a crop box (the 'Lumbar crop' ROI); an XUNet segments L1-L5 inside it (Lu et al., "
            "J Appl Clin Med Phys 2023); where its model is installed, a per-vertebra network refines each one.<br>"
            "Move or resize the ROI and segment again to use your own box. Edit the result in the Segment "
            "Editor, recompute metrics, export STL (one file per vertebra) or a label map. For a DICOM SEG, "
            "right-click the segmentation in the Data module and choose Export to DICOM; on Slicer 5.8 and 5.10 "
            "this needs the QuantitativeReporting extension (Extensions Manager).<br>"
            "<b>Research use only, not a medical device.</b> The bundled model was trained on synthetic phantoms "
            "and a few public real CTs; its model card (under Model) gives the measured accuracy. Each result "
            "carries how it was made (model, version, options, warnings) from the run's report.json.")
        self.parent.acknowledgementText = _(
            "Method: Lu H, Li M, Yu K, Zhang Y, Yu L. Lumbar spine segmentation method based on deep learning. "
            "J Appl Clin Med Phys 2023;24(6):e13996. The method's authors did not take part in this software. "
            "Module layout follows 3D Slicer's scripted module template.")
        if SLICER_GUI:
            slicer.app.connect("startupCompleted()", self.onStartupCompleted)

    def onStartupCompleted(self):
        for register in (registerTerminology, registerSampleData):
            try:
                register()
            except Exception:  # never block Slicer's start; the log says what went wrong
                logging.exception(f"LumbarSeg: {register.__name__} failed")


if SLICER_GUI:
    from typing import Annotated

    from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper

    @parameterNodeWrapper
    class LumbarSegParameterNode:
        """The module's state, saved with the scene; connectGui ties the fields ``panel.CONNECTED`` names to the
        .ui's widgets (the combo boxes show each enum's labels)."""
        inputVolume: slicer.vtkMRMLScalarVolumeNode
        referenceSegmentation: slicer.vtkMRMLSegmentationNode
        outputSegmentation: slicer.vtkMRMLSegmentationNode
        metricsTable: slicer.vtkMRMLTableNode
        cropROI: slicer.vtkMRMLMarkupsROINode
        device: panel.Device = panel.Device.auto
        modelMode: panel.ModelMode = panel.ModelMode.bundled
        modelPath: str = ""
        roiMode: panel.RoiMode = panel.RoiMode.auto
        smoothing: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
        exportFolder: str = ""


class LumbarSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Bindings only: the .ui's widgets <-> the parameter node, buttons -> the study session (through the
    Logic). What to show and enable is decided headless in ``LumbarSegLib.scene.panel``."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = self._parameterNode = self._guiTag = self._job = self._timer = None
        self._smoothingShown = None  # the smoothing the surfaces have: a change of the slider's is the user's
        self._updatingGUIFromParameterNode = False

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LumbarSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LumbarSegLogic()
        self.logic.logCallback = self.ui.logTextEdit.appendPlainText
        self._timer = qt.QTimer()
        self._timer.setInterval(100)  # ms between polls of the run
        self._timer.connect("timeout()", self.onPollJob)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelPathChanged)
        self.ui.exportFolderButton.connect("directoryChanged(QString)", self.onExportFolderChanged)
        for buttonName, handler in panel.BUTTONS.items():
            getattr(self.ui, buttonName).connect("clicked(bool)", getattr(self, handler))
        self.ui.progressBar.setVisible(False)
        self.updateDependencyStatus()
        self.initializeParameterNode()

    def onReload(self):
        """Developer mode's Reload: stop a run, reload the library (``LumbarSegLib``), then this module."""
        self.stopRunningJob()
        reloadLibrary()
        ScriptedLoadableModuleWidget.onReload(self)

    def cleanup(self):
        self.stopRunningJob()
        if self._timer is not None:
            self._timer.stop()
        self.removeObservers()

    def stopRunningJob(self):
        """End a running segmentation and wait until its process is gone (module reload, scene close, exit)."""
        job, self._job = self._job, None
        if job is not None:
            self.logic.cancelSegmentation(job)

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event):
        self.stopRunningJob()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        panel.choose_input_volume(self._parameterNode, slicer.mrmlScene)

    def setParameterNode(self, parameterNode):
        """As Slicer's template: connectGui ties the widgets; the rest follows the node's ModifiedEvent."""
        if self._parameterNode is not None:
            self._parameterNode.disconnectGui(self._guiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode, self._guiTag = parameterNode, None
        if parameterNode is not None:
            self._guiTag = parameterNode.connectGui(self.ui)
            self._smoothingShown = parameterNode.smoothing  # a loaded scene's surfaces already have it
            self.addObserver(parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None):
        """What connectGui does not show, and a new smoothing (the user moved the slider) onto the surfaces."""
        p = self._parameterNode
        if p is None or self._updatingGUIFromParameterNode:
            return
        self._updatingGUIFromParameterNode = True
        try:
            panel.show_model_path(p, self.ui)
            self.ui.exportFolderButton.directory = str(self.exportFolder())  # chosen, else a real default folder
            self.ui.metricsTableView.setMRMLTableNode(p.metricsTable)
            self.ui.modelInfoLabel.text = self.logic.modelInfoHtml(self.modelPath())
            self.updateButtonStates()
        finally:
            self._updatingGUIFromParameterNode = False
        if p.smoothing != self._smoothingShown and p.outputSegmentation is not None and self._job is None:
            self.logic.setSmoothing(p.outputSegmentation, p.smoothing)
        self._smoothingShown = p.smoothing

    def onModelPathChanged(self, path):  # connectGui would write "." for an empty path (panel.CONNECTED)
        if self._parameterNode is not None and not self._updatingGUIFromParameterNode:
            self._parameterNode.modelPath = path or ""

    def updateButtonStates(self):
        panel.show_button_states(self.ui, self._parameterNode, running=self._job is not None)

    def modelPath(self):
        return panel.model_path(self._parameterNode)

    def setStatus(self, text, log=False):
        self.ui.statusLabel.text = text
        if log:
            self.logic.log(text)

    def confirm(self, question):
        return slicer.util.confirmOkCancelDisplay(question, windowTitle="LumbarSeg")

    @contextlib.contextmanager
    def shownErrors(self, message, waitCursor=True):
        """Slicer's tryWithErrorDisplay (a dialog with the details), and the error kept for the diagnostics."""
        try:
            with slicer.util.tryWithErrorDisplay(message, waitCursor=waitCursor):
                yield
        except Exception as exc:
            self.logic.recordError(exc)
            raise

    def onCopyDiagnostics(self):
        text = self.logic.diagnostics(slicerVersion=slicer.app.applicationVersion, modelPath=self.modelPath())
        qt.QApplication.clipboard().setText(text)
        self.setStatus(_(panel.DIAGNOSTICS_COPIED))

    def updateDependencyStatus(self):
        panel.show_dependency_status(self.ui, missingPackages(), torchProblem())

    def onInstallDependencies(self):
        def status(text):  # pip_install lets Qt process events, so this text shows the progress
            self.ui.logCollapsibleButton.collapsed = False  # the Log section shows pip's output
            self.setStatus(text, log=True)
            slicer.app.processEvents()

        self.ui.installDependenciesButton.enabled = self.ui.applyButton.enabled = False
        try:
            with self.shownErrors(_("Installing PyTorch failed. Install the PyTorch extension from the Extensions "
                                    "Manager, restart Slicer, and try again."), waitCursor=False):
                return self.logic.ensureDependencies(self.confirm, status)
        except Exception:
            return False
        finally:
            self.ui.installDependenciesButton.enabled = True
            self.updateDependencyStatus()
            self.updateButtonStates()

    def onApplyButton(self):
        p = self._parameterNode
        if not self.onInstallDependencies():
            return
        problem = panel.run_problem(p)
        if problem:
            return slicer.util.errorDisplay(problem)
        overwrite = False
        if self.logic.session().must_ask_before_replacing(p.outputSegmentation):
            overwrite = panel.ask_keep_edits(qt, slicer.util.mainWindow(), p.outputSegmentation.GetName())
            if overwrite is None:
                return
        with self.shownErrors(_("The segmentation could not start."), waitCursor=False):
            self._job = self.logic.startSegmentation(
                slicer.mrmlScene, p.inputVolume, segmentationNode=p.outputSegmentation, roiMode=p.roiMode.value,
                device=p.device.value, modelPath=self.modelPath(), overwriteEdited=overwrite, smoothing=p.smoothing)
        self.ui.progressBar.setVisible(True)
        self.ui.progressBar.value = 0
        self.setStatus(panel.start_text(self._job))
        self.updateButtonStates()
        self._timer.start()

    def onCancelButton(self):
        if self._job is not None:
            self.stopRunningJob()
            self._timer.stop()
            self.ui.progressBar.setVisible(False)
            self.setStatus(_(panel.CANCELLED))
            self.updateButtonStates()

    def onPollJob(self):
        """Timer callback: read the subprocess's progress (never blocks); load its result when it ended."""
        job = self._job
        if job is None:
            return self._timer.stop()
        session = self.logic.session()  # its job is this one
        for event in session.poll():
            self.ui.progressBar.value = panel.progress_percent(event)
            self.setStatus(event.text)
        if job.process.running:
            return
        self._timer.stop()
        self._job = None
        self.ui.progressBar.setVisible(False)
        self.updateButtonStates()
        # the user may be in another module (exit() let go of the parameter node; the run went on): the result
        # goes into the scene's parameter node all the same, and the module shows it when entered again
        p = self._parameterNode if self._parameterNode is not None else self.logic.getParameterNode()
        try:
            with slicer.util.WaitCursor():
                outcome = self.logic.finishSegmentation(slicer.mrmlScene, job, p.referenceSegmentation, p.metricsTable)
        except Exception as exc:
            message = slicerLib("run").friendly_error(exc, job.settings.get("device_requested", "auto"))
            self.setStatus(message)
            return slicer.util.errorDisplay(message)
        panel.apply_outcome(outcome, p)
        slicer.util.setSliceViewerLayers(background=job.volume_node)
        slicer.util.resetThreeDViews()
        self.setStatus(session.result_text())  # what to say is the session's decision (the web app says the same)
        if session.result_alert() is not None:
            slicer.util.warningDisplay(session.result_alert()[1], windowTitle=session.result_alert()[0])

    def onRecomputeMetrics(self):
        p = self._parameterNode
        if p.outputSegmentation is None or p.inputVolume is None:
            return
        with self.shownErrors(_("Computing the metrics failed.")):
            p.metricsTable = self.logic.computeMetrics(slicer.mrmlScene, p.outputSegmentation, p.inputVolume,
                                                       p.referenceSegmentation, p.metricsTable)

    def onEditButton(self):
        p = self._parameterNode
        if p.outputSegmentation is not None:
            slicer.util.selectModule("SegmentEditor")
            slicer.modules.SegmentEditorWidget.editor.setSegmentationNode(p.outputSegmentation)
            slicer.modules.SegmentEditorWidget.editor.setSourceVolumeNode(p.inputVolume)

    def onExportFolderChanged(self, directory):
        if not self._updatingGUIFromParameterNode:
            panel.remember_export_folder(self._parameterNode, directory)

    def exportFolder(self):  # the folder the user chose, else Slicer's default scene folder (shown on the button)
        return panel.export_folder(getattr(self._parameterNode, "exportFolder", ""), getattr(slicer, "app", None))

    def onExportStl(self):
        p, folder = self._parameterNode, str(self.exportFolder())
        if p.outputSegmentation is None:
            return
        with self.shownErrors(_("STL export failed.")):
            files = self.logic.exportStlAsking(p.outputSegmentation, folder, self.confirm)
        if files is not None:
            self.setStatus(_("Wrote {count} STL file(s) to {folder}.").format(count=len(files), folder=folder))

    def onExportLabelmap(self):
        p = self._parameterNode
        if p.outputSegmentation is None or p.inputVolume is None:
            return
        start = os.path.join(str(self.exportFolder()), p.outputSegmentation.GetName() + ".nii.gz")
        path = qt.QFileDialog.getSaveFileName(
            slicer.util.mainWindow(), _("Export label map"), start,
            "NIfTI label map (*.nii.gz);;NRRD label map (*.nrrd);;Slicer segmentation (*.seg.nrrd)")
        if path:
            with self.shownErrors(_("Label map export failed.")):
                written = self.logic.exportLabelmap(slicer.mrmlScene, p.outputSegmentation, p.inputVolume, path)
            self.setStatus(_("Wrote {path}.").format(path=written))


class LumbarSegLogic(ModuleLogic, ScriptedLoadableModuleLogic):
    """Slicer's parameter node around the Qt-free ``LumbarSegLib.scene.module_logic.ModuleLogic``."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        ModuleLogic.__init__(self)

    def getParameterNode(self):
        return LumbarSegParameterNode(ScriptedLoadableModuleLogic.getParameterNode(self))


class LumbarSegTest(ScriptedLoadableModuleTest):
    """Slicer's "Reload and Test", the build servers, headless tests; bodies in ``LumbarSegLib.scene.self_test``."""

    def setUp(self):
        slicerLib("self_test").set_up(self)

    def runTest(self):
        slicerLib("self_test").run_test(self, torchProblem)

    def test_LumbarSeg_SceneLogic(self):
        slicerLib("self_test").scene_logic(self, LumbarSegLogic, self.scene)

    def test_LumbarSeg_FullFlow(self):  # the model parts skip, saying why, without PyTorch
        slicerLib("self_test").full_flow(self, LumbarSegLogic, self.scene)

    def test_LumbarSeg_BackgroundRunAndCancel(self):
        slicerLib("self_test").background_run_and_cancel(self, LumbarSegLogic, self.scene)
