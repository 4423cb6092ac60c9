"""LumbarSeg: automatic L1-L5 segmentation of CT in 3D Slicer (two-stage method of Lu et al. 2023).

This file is the Slicer scripted module (Module, Widget, Logic, Test). All the work on the scene is in
``LumbarSegLib.scene`` (plain functions taking the scene, tested headless). The segmentation runs as the
command line ``lumbarseg segment`` in a subprocess (``LumbarSegLib.study.engine_process``, started with Slicer's
PythonSlicer): Slicer's main thread holds Python's GIL in the Qt event loop, so a worker thread would crawl,
while a process runs at full speed, is polled by a timer without blocking, and ends at once on Cancel.
This file adds the GUI around that.

Importing this file does no work: Slicer-only modules (qt, ctk, slicer.ScriptedLoadableModule) are
imported under a guard so that the file also imports (for tests) where they do not exist, and
``LumbarSegLib`` is found lazily: beside this file in an installed extension, or at the repository root
(the parent of ``LumbarSeg/``) when the module is loaded from a source checkout.
"""

import logging
import os
import sys

try:  # inside 3D Slicer
    import ctk
    import qt
    import slicer
    import vtk
    from slicer.ScriptedLoadableModule import (
        ScriptedLoadableModule,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
        ScriptedLoadableModuleWidget,
    )
    from slicer.util import VTKObservationMixin

    SLICER_GUI = True
except ImportError:  # plain Python (tests, slicer-core wheel without Qt): logic only
    import unittest

    SLICER_GUI = False
    ctk = qt = None
    try:
        import slicer  # slicer-core: MRML and module logic, no application
        import vtk
    except ImportError:
        slicer = vtk = None

    class ScriptedLoadableModule:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        def __init__(self, *args, **kwargs):
            pass

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=None):
            logging.info(message)

    class VTKObservationMixin:
        def __init__(self):
            pass

try:  # Slicer's translation functions (Slicer >= 5.4); the text itself where they do not exist
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:
    def _(text):
        return text

    def translate(context, text):
        return text


MODULE_DIR = os.path.dirname(os.path.abspath(__file__))

DEVICES = ["auto", "cpu", "cuda"]  # deviceComboBox order
ROI_MODES = ["auto", "always", "never"]  # roiModeComboBox order
MODEL_MODES = ["bundled", "file"]  # modelComboBox order


def ensureLibImportable():
    """Make ``LumbarSegLib`` importable: beside this file (installed) or at the repository root (source)."""
    for candidate in (MODULE_DIR, os.path.dirname(MODULE_DIR)):
        if os.path.isfile(os.path.join(candidate, "LumbarSegLib", "__init__.py")):
            if candidate not in sys.path:
                sys.path.insert(0, candidate)
            return candidate
    return None


def missingPackages():
    """Import names of required Python packages that are not installed (nothing is imported)."""
    return slicerLib("dependencies").missing_packages()


def torchProblem():
    """Why the model cannot run here (None when PyTorch is importable and recent enough); imports nothing."""
    return slicerLib("dependencies").torch_problem()


def slicerLib(name):
    """The ``LumbarSegLib.scene`` module ``name`` ("volumes", "roi", "segments", "run", ...), imported on first use."""
    ensureLibImportable()
    import importlib

    return importlib.import_module("LumbarSegLib.scene." + name)


def reloadLibrary():
    """Reload every loaded ``LumbarSegLib`` module, lower layers first, so that "Reload" in Developer mode
    picks up edits to the engine and the scene layer, not only to this file. Returns the names reloaded."""
    import importlib

    layers = ("errors", "constants", "io", "inference", "measures", "results", "study", "scene")  # lowest first

    def order(name):
        part = name.split(".")[1] if "." in name else ""
        return (layers.index(part) + 1 if part in layers else len(layers) + 1, name.count("."), name)

    names = sorted((n for n in sys.modules if n == "LumbarSegLib" or n.startswith("LumbarSegLib.")), key=order)
    for name in names:
        if sys.modules.get(name) is not None:
            importlib.reload(sys.modules[name])
    return names


def registerTerminology(terminologiesLogic=None):
    """Load the L1-L5 terminology this extension ships into Slicer's Terminologies module (its logic, or
    ``terminologiesLogic``)."""
    segments = slicerLib("segments")  # makes LumbarSegLib importable first (a source checkout has it one up)
    path = os.path.join(MODULE_DIR, "Resources", segments.TERMINOLOGY_FILE_NAME)
    return segments.load_terminology(terminologiesLogic or slicer.modules.terminologies.logic(), path)


def registerSampleData():
    """Register the bundled synthetic CT as the *LumbarSeg* sample in Sample Data (offline, checksummed)."""
    import SampleData

    icon = os.path.join(MODULE_DIR, "Resources", "Icons", "LumbarSeg.png")
    return slicerLib("sample_data").register_sample_data(SampleData, thumbnail=icon)


#
# Module
#


class LumbarSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("LumbarSeg")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["LumbarSeg developers (see the repository history)"]
        self.parent.helpText = _(
            "Automatic segmentation of the lumbar vertebrae L1-L5 in CT. A localizer network finds the lumbar "
            "spine (heatmap) and places a crop box (the 'Lumbar crop' ROI); an XUNet segments L1-L5 inside it "
            "(Lu et al., J Appl Clin Med Phys 2023).<br>"
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

    from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

    @parameterNodeWrapper
    class LumbarSegParameterNode:
        """The module's state, saved with the scene."""

        inputVolume: slicer.vtkMRMLScalarVolumeNode
        referenceSegmentation: slicer.vtkMRMLSegmentationNode
        outputSegmentation: slicer.vtkMRMLSegmentationNode
        metricsTable: slicer.vtkMRMLTableNode
        cropROI: slicer.vtkMRMLMarkupsROINode
        device: Annotated[str, Choice(DEVICES)] = "auto"
        modelMode: Annotated[str, Choice(MODEL_MODES)] = "bundled"
        modelPath: str = ""
        roiMode: Annotated[str, Choice(ROI_MODES)] = "auto"
        smoothing: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
        exportFolder: str = ""


#
# Widget
#


class LumbarSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin GUI: every button calls one :class:`LumbarSegLogic` method; the widget only shows results."""

    POLL_MS = 100

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._updatingGUIFromParameterNode = False
        self._job = None  # the running segmentation (LumbarSegLib.scene.engine_job.EngineJob)
        self._timer = None

    # --- setup and parameter node -----------------------------------------------------------------

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LumbarSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LumbarSegLogic()
        self.logic.logCallback = self.appendLog

        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_MS)
        self._timer.connect("timeout()", self.onPollJob)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # Widgets -> parameter node
        for selector in (self.ui.inputVolumeSelector, self.ui.referenceSegmentationSelector,
                         self.ui.outputSegmentationSelector):
            selector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateParameterNodeFromGUI)
        for combo in (self.ui.deviceComboBox, self.ui.modelComboBox, self.ui.roiModeComboBox):
            combo.connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.updateParameterNodeFromGUI)
        self.ui.smoothingSliderWidget.connect("valueChanged(double)", self.onSmoothingChanged)
        self.ui.exportFolderButton.connect("directoryChanged(QString)", self.onExportFolderChanged)

        # Buttons
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.recomputeMetricsButton.connect("clicked(bool)", self.onRecomputeMetrics)
        self.ui.editButton.connect("clicked(bool)", self.onEditButton)
        self.ui.exportStlButton.connect("clicked(bool)", self.onExportStl)
        self.ui.exportLabelmapButton.connect("clicked(bool)", self.onExportLabelmap)
        self.ui.copyDiagnosticsButton.connect("clicked(bool)", self.onCopyDiagnostics)

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
        if self._parameterNode is not None:
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)

    def onSceneStartClose(self, caller, event):
        self.stopRunningJob()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            volume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if volume is not None and not volume.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = volume

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode is not None:
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = inputParameterNode
        if self._parameterNode is not None:
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None):
        if self._parameterNode is None or self._updatingGUIFromParameterNode:
            return
        self._updatingGUIFromParameterNode = True
        try:
            p = self._parameterNode
            self.ui.inputVolumeSelector.setCurrentNode(p.inputVolume)
            self.ui.referenceSegmentationSelector.setCurrentNode(p.referenceSegmentation)
            self.ui.outputSegmentationSelector.setCurrentNode(p.outputSegmentation)
            self.ui.deviceComboBox.setCurrentIndex(DEVICES.index(p.device))
            self.ui.modelComboBox.setCurrentIndex(MODEL_MODES.index(p.modelMode))
            useFile = p.modelMode == "file"
            self.ui.modelPathLineEdit.setEnabled(useFile)
            self.ui.modelPathLabel.setEnabled(useFile)
            if p.modelPath:
                self.ui.modelPathLineEdit.currentPath = p.modelPath
            self.ui.roiModeComboBox.setCurrentIndex(ROI_MODES.index(p.roiMode))
            self.ui.smoothingSliderWidget.value = p.smoothing
            # The button shows the folder exports go to: the one the user chose, else a real default folder.
            self.ui.exportFolderButton.directory = str(self.exportFolder())
            self.ui.metricsTableView.setMRMLTableNode(p.metricsTable)
            self.updateModelInfo()
            self.updateButtonStates()
        finally:
            self._updatingGUIFromParameterNode = False

    def updateParameterNodeFromGUI(self, *args):
        if self._parameterNode is None or self._updatingGUIFromParameterNode:
            return
        p = self._parameterNode
        with slicer.util.NodeModify(p.parameterNode):
            p.inputVolume = self.ui.inputVolumeSelector.currentNode()
            p.referenceSegmentation = self.ui.referenceSegmentationSelector.currentNode()
            p.outputSegmentation = self.ui.outputSegmentationSelector.currentNode()
            p.device = DEVICES[max(0, self.ui.deviceComboBox.currentIndex)]
            p.modelMode = MODEL_MODES[max(0, self.ui.modelComboBox.currentIndex)]
            p.modelPath = self.ui.modelPathLineEdit.currentPath or ""
            p.roiMode = ROI_MODES[max(0, self.ui.roiModeComboBox.currentIndex)]
            p.smoothing = float(self.ui.smoothingSliderWidget.value)

    def updateButtonStates(self):
        p = self._parameterNode
        running = self._job is not None
        volume = p.inputVolume if p else None
        segmentation = p.outputSegmentation if p else None
        self.ui.applyButton.enabled = volume is not None and not running
        self.ui.applyButton.toolTip = (_("Locate the lumbar spine, crop, and segment L1-L5.") if volume is not None
                                       else _("Select a CT volume first."))
        self.ui.cancelButton.enabled = running
        hasResult = segmentation is not None and not running
        for button in (self.ui.recomputeMetricsButton, self.ui.editButton, self.ui.exportStlButton,
                       self.ui.exportLabelmapButton):
            button.enabled = hasResult

    def updateModelInfo(self):
        self.ui.modelInfoLabel.text = self.logic.modelInfoHtml(self.modelPath())

    def onSmoothingChanged(self, value):
        if self._updatingGUIFromParameterNode:  # loading settings into the GUI is not a user's change
            return
        self.updateParameterNodeFromGUI()
        segmentation = self._parameterNode.outputSegmentation if self._parameterNode else None
        if segmentation is not None and self._job is None:
            self.logic.setSmoothing(segmentation, value)

    # --- log ----------------------------------------------------------------------------------------

    def appendLog(self, line):
        self.ui.logTextEdit.appendPlainText(line)

    def showStatus(self, text):
        self.ui.statusLabel.text = text
        self.logic.log(text)
        slicer.app.processEvents()

    def onCopyDiagnostics(self):
        text = self.logic.diagnostics(slicerVersion=slicer.app.applicationVersion, modelPath=self.modelPath())
        qt.QApplication.clipboard().setText(text)
        self.ui.statusLabel.text = _("Diagnostics copied to the clipboard: paste them into your bug report.")

    # --- dependencies -----------------------------------------------------------------------------

    def updateDependencyStatus(self):
        missing = missingPackages()
        problem = torchProblem()
        if missing or problem:
            self.ui.dependencyStatusLabel.text = (problem or "") + " " + _(
                "Missing Python packages: {packages}. Click the button below to install them through the PyTorch "
                "extension (about 200 MB for CPU, 2+ GB with CUDA).").format(packages=", ".join(missing) or "-")
            self.ui.installDependenciesButton.visible = True
            self.ui.advancedCollapsibleButton.collapsed = False
        else:
            self.ui.dependencyStatusLabel.text = ""
            self.ui.installDependenciesButton.visible = False
        return missing

    def onInstallDependencies(self):
        if not missingPackages() and not torchProblem():
            self.updateDependencyStatus()
            return True
        requirement = slicerLib("dependencies").TORCH_REQUIREMENT
        text = _("LumbarSeg needs PyTorch ({requirement}). It is installed by the PyTorch extension, which picks "
                 "the build that fits your GPU driver (or the CPU build). The bundled model runs in seconds on a CPU, "
                 "so a GPU is optional.\n\nInstall now? The download can take several minutes; Slicer stays usable "
                 "and the Log section shows the progress.").format(requirement=requirement)
        if not slicer.util.confirmOkCancelDisplay(text, windowTitle=_("LumbarSeg: install dependencies")):
            return False
        self.ui.installDependenciesButton.enabled = False
        self.ui.applyButton.enabled = False
        self.ui.logCollapsibleButton.collapsed = False
        try:
            # PyTorchUtils runs pip through slicer.util.pip_install, which logs pip's output and lets Qt process
            # events while it runs, so the window repaints and this status text shows the progress.
            self.logic.installDependencies(status=self.showStatus)
        except Exception as exc:
            self.logic.recordError(exc)
            logging.exception("LumbarSeg dependency installation failed")
            slicer.util.errorDisplay(_("Installing PyTorch failed: {error}\n\nInstall the PyTorch extension from the "
                                       "Extensions Manager, restart Slicer, and try again.").format(error=exc))
            return False
        finally:
            self.ui.installDependenciesButton.enabled = True
            self.updateDependencyStatus()
            self.updateButtonStates()
        self.ui.statusLabel.text = _("Dependencies installed.")
        return not missingPackages() and not torchProblem()

    # --- run --------------------------------------------------------------------------------------

    def onApplyButton(self):
        if (missingPackages() or torchProblem()) and not self.onInstallDependencies():
            self.ui.statusLabel.text = _("PyTorch must be installed to segment.")
            return
        p = self._parameterNode
        volume = p.inputVolume
        if volume is None:
            slicer.util.errorDisplay(_("No volume selected: choose a CT volume in 'CT volume'."))
            return
        segmentation = p.outputSegmentation
        overwrite = False
        if self.logic.session().must_ask_before_replacing(segmentation):
            box = qt.QMessageBox(slicer.util.mainWindow())
            box.setWindowTitle("LumbarSeg")
            box.setText(_("'{name}' was edited since LumbarSeg created it.").format(name=segmentation.GetName()))
            box.setInformativeText(_("Keep your edits and put the new result in a new segmentation?"))
            keep = box.addButton(_("New segmentation (keep edits)"), qt.QMessageBox.AcceptRole)
            overwriteButton = box.addButton(_("Overwrite"), qt.QMessageBox.DestructiveRole)
            box.addButton(qt.QMessageBox.Cancel)
            box.setDefaultButton(keep)
            box.exec_()
            if box.clickedButton() == overwriteButton:
                overwrite = True
            elif box.clickedButton() != keep:
                return
        if p.modelMode == "file" and not os.path.isfile(p.modelPath):
            slicer.util.errorDisplay(_("Choose an existing model file (.pt), or select 'Bundled model'."))
            return
        try:
            job = self.logic.startSegmentation(
                slicer.mrmlScene, volume, segmentationNode=segmentation, roiMode=p.roiMode, device=p.device,
                modelPath=self.modelPath(), overwriteEdited=overwrite, smoothing=p.smoothing)
        except Exception as exc:
            self.logic.recordError(exc)
            slicer.util.errorDisplay(slicerLib("run").friendly_error(exc, p.device))
            return
        self._job = job
        self.ui.progressBar.setVisible(True)
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = (_("Using your crop box (the localizer is skipped)...") if job.box_lps
                                    else _("Starting..."))
        self.updateButtonStates()
        self._timer.start()

    def modelPath(self):
        p = self._parameterNode
        return p.modelPath if p is not None and p.modelMode == "file" and p.modelPath else None

    def onCancelButton(self):
        if self._job is not None:
            self.stopRunningJob()
            self._timer.stop()
            self.ui.progressBar.setVisible(False)
            self.ui.statusLabel.text = _("Cancelled. Nothing was changed.")
            self.updateButtonStates()

    def onPollJob(self):
        """Timer callback: read the subprocess's progress (never blocks); load its result when it ended."""
        job = self._job
        if job is None:
            self._timer.stop()
            return
        for event in job.process.poll():
            self.ui.progressBar.value = int(round(100 * event.overall))
            if event.fraction <= 0.0:
                self.logic.log(event.text)
            self.ui.statusLabel.text = event.text
        if job.process.running:
            return
        self._timer.stop()
        self._job = None
        self.ui.progressBar.setVisible(False)
        self.updateButtonStates()
        try:
            with slicer.util.WaitCursor():
                p = self._parameterNode
                outcome = self.logic.finishSegmentation(slicer.mrmlScene, job, p.referenceSegmentation,
                                                        p.metricsTable)
        except Exception as exc:
            logging.info("LumbarSeg run failed: %s", exc)
            message = slicerLib("run").friendly_error(exc, job.settings.get("device_requested", "auto"))
            self.ui.statusLabel.text = message
            slicer.util.errorDisplay(message)
            return
        self.showResult(job.volume_node, outcome, self.logic.lastResult)

    def showResult(self, volume, outcome, result):
        p = self._parameterNode
        if outcome.segmentation_node is not None:
            p.outputSegmentation = outcome.segmentation_node
        if outcome.roi_node is not None:
            p.cropROI = outcome.roi_node
        if outcome.metrics_table is not None:
            p.metricsTable = outcome.metrics_table
            self.ui.metricsTableView.setMRMLTableNode(outcome.metrics_table)
        slicer.util.setSliceViewerLayers(background=volume)
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None and layoutManager.threeDViewCount > 0:
            layoutManager.threeDWidget(0).threeDView().resetFocalPoint()
        # What to say is the session's decision (the web app shows the same); the widget only shows it.
        session = self.logic.session()
        self.ui.statusLabel.text = session.result_text()
        alert = session.result_alert()
        if alert is not None:
            slicer.util.warningDisplay(alert[1], windowTitle=alert[0])

    # --- results ----------------------------------------------------------------------------------

    def onRecomputeMetrics(self):
        p = self._parameterNode
        if p.outputSegmentation is None or p.inputVolume is None:
            return
        try:
            with slicer.util.WaitCursor():
                table = self.logic.computeMetrics(slicer.mrmlScene, p.outputSegmentation, p.inputVolume,
                                                  p.referenceSegmentation, p.metricsTable)
        except Exception as exc:
            self.logic.recordError(exc)
            logging.exception("LumbarSeg metrics failed")
            slicer.util.errorDisplay(slicerLib("run").friendly_error(exc))
            return
        p.metricsTable = table
        self.ui.metricsTableView.setMRMLTableNode(table)

    def onEditButton(self):
        p = self._parameterNode
        if p.outputSegmentation is None:
            return
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.SegmentEditorWidget.editor
        editor.setSegmentationNode(p.outputSegmentation)
        if p.inputVolume is not None:
            if hasattr(editor, "setSourceVolumeNode"):
                editor.setSourceVolumeNode(p.inputVolume)
            else:  # Slicer < 5.2
                editor.setMasterVolumeNode(p.inputVolume)

    def onExportFolderChanged(self, directory):
        """Only a folder the user picked is remembered (the button says "." until then)."""
        if self._parameterNode is None or self._updatingGUIFromParameterNode:
            return
        chosen = slicerLib("export").chosen_folder(directory)
        if chosen is not None:
            self._parameterNode.exportFolder = str(chosen)

    def exportFolder(self):
        """Where exports go: the folder the user chose, else Slicer's default scene folder (shown on the button)."""
        export = slicerLib("export")
        chosen = export.chosen_folder(self._parameterNode.exportFolder if self._parameterNode else "")
        return chosen or export.default_export_folder(slicer.app)

    def onExportStl(self):
        p = self._parameterNode
        folder = str(self.exportFolder())
        if p.outputSegmentation is None:
            return
        EarlierExportError = slicerLib("export").EarlierExportError
        try:
            try:
                with slicer.util.WaitCursor():
                    files = self.logic.exportStl(p.outputSegmentation, folder)
            except EarlierExportError as exc:  # an earlier export's files: replace them all, or keep them
                if not slicer.util.confirmOkCancelDisplay(str(exc) + "\n\n" + _("Replace them?"),
                                                          windowTitle=_("LumbarSeg: STL export")):
                    return
                with slicer.util.WaitCursor():
                    files = self.logic.exportStl(p.outputSegmentation, folder, overwrite=True)
        except Exception as exc:
            self.logic.recordError(exc)
            slicer.util.errorDisplay(_("STL export failed: {error}").format(error=exc))
            return
        self.ui.statusLabel.text = _("Wrote {count} STL file(s) to {folder}.").format(count=len(files), folder=folder)
        self.logic.log(self.ui.statusLabel.text)

    def onExportLabelmap(self):
        p = self._parameterNode
        segmentation, volume = p.outputSegmentation, p.inputVolume
        if segmentation is None or volume is None:
            return
        start = os.path.join(str(self.exportFolder()), segmentation.GetName() + ".nii.gz")
        path = qt.QFileDialog.getSaveFileName(
            slicer.util.mainWindow(), _("Export label map"), start,
            "NIfTI label map (*.nii.gz);;NRRD label map (*.nrrd);;Slicer segmentation (*.seg.nrrd)")
        if not path:
            return
        try:
            with slicer.util.WaitCursor():
                written = self.logic.exportLabelmap(slicer.mrmlScene, segmentation, volume, path)
        except Exception as exc:
            self.logic.recordError(exc)
            slicer.util.errorDisplay(_("Label map export failed: {error}").format(error=exc))
            return
        self.ui.statusLabel.text = _("Wrote {path}.").format(path=written)
        self.logic.log(self.ui.statusLabel.text)


#
# Logic
#


class LumbarSegLogic(ScriptedLoadableModuleLogic):
    """The module's logic: Slicer's parameter node and dependency installer around the shared, Qt-free study
    session (``LumbarSegLib.scene.session.StudySession``, also under the web app), which holds the run, the
    result, the log and the last error. Works without the Slicer application (headless tests)."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.pythonExecutable = None  # None: PythonSlicer inside Slicer, else this interpreter
        self.logCallback = None
        self._session = None

    def getParameterNode(self):
        return LumbarSegParameterNode(super().getParameterNode())

    def session(self, scene=None):
        """The study session on ``scene`` (made on first use: LumbarSegLib must be importable first)."""
        if self._session is None:
            self._session = slicerLib("session").StudySession(scene, on_log=lambda line: self.logCallback and
                                                              self.logCallback(line))
        if scene is not None:
            self._session.scene = scene
        self._session.python = self.pythonExecutable
        return self._session

    # What the last run left, for the widget and the diagnostics.
    logLines = property(lambda self: self.session().log_lines)
    lastResult = property(lambda self: self.session().last_result)
    lastError = property(lambda self: self.session().last_error)

    def log(self, text):
        self.session().log(text)

    def recordError(self, exc):
        self.session().record_error(exc)

    def diagnostics(self, slicerVersion=None, modelPath=None):
        """The "Copy diagnostics" text: versions, device, model, last run's stage timings, last error, log."""
        session = self.session()
        session.model = modelPath
        return session.diagnostics(slicerVersion)

    def installDependencies(self, status=None):
        """Install torch through the PyTorch extension (PyTorchUtils), then any other missing package with pip."""
        slicerLib("dependencies").install_dependencies(status or self.log,
                                                       lambda requirement: slicer.util.pip_install(requirement))

    def modelInfoHtml(self, modelPath=None):
        """What the panel shows about the model that will run, with a link to its model card."""
        ensureLibImportable()
        from LumbarSegLib.results.model_card import model_summary

        return slicerLib("provenance").model_info_html(model_summary(modelPath))

    # --- segmentation: the command line in a subprocess, through the session

    def startSegmentation(self, scene, volumeNode, segmentationNode=None, roiMode="auto", device="auto",
                          modelPath=None, overwriteEdited=False, smoothing=0.5):
        """Start ``lumbarseg segment`` on the volume in a subprocess; returns the job. Poll ``job.process`` from
        a timer, then call :meth:`finishSegmentation`."""
        session = self.session(scene)
        session.device, session.model = device or "auto", modelPath
        return session.start(volumeNode, segmentation_node=segmentationNode, roi_mode=roiMode,
                             replace_edited=overwriteEdited, smoothing=smoothing)

    def finishSegmentation(self, scene, job, referenceNode=None, tableNode=None):
        """After the process ended: its result into the scene. Returns the ApplyOutcome; raises Cancelled or
        the command's one-line error (the scene is then unchanged)."""
        session = self.session(scene)
        session.job = job
        return session.finish(referenceNode, tableNode)

    def cancelSegmentation(self, job):
        """End a running job's process (and its children) and wait for it; nothing in the scene changes."""
        session = self.session()
        session.job = job
        session.cancel()

    def process(self, scene, volumeNode, segmentationNode=None, roiMode="auto", device="auto", modelPath=None,
                overwriteEdited=False, progress=None, cancel=None, smoothing=0.5):
        """Synchronous run (scripting, tests): the same subprocess as the GUI, waited for. Returns
        (SegmentationResult, ApplyOutcome)."""
        session = self.session(scene)
        session.device, session.model = device or "auto", modelPath
        outcome = session.run(volumeNode, progress, cancel, segmentation_node=segmentationNode, roi_mode=roiMode,
                              replace_edited=overwriteEdited, smoothing=smoothing)
        return session.last_result, outcome

    def isUserEdited(self, segmentationNode):
        return slicerLib("segments").is_user_edited(segmentationNode)

    def setSmoothing(self, segmentationNode, value):
        """Set the surface smoothing; surfaces are rebuilt only when the value changes. Returns True then."""
        return self.session().set_smoothing(segmentationNode, value)

    def computeMetrics(self, scene, segmentationNode, volumeNode, referenceNode=None, tableNode=None):
        return self.session(scene).compute_metrics(segmentationNode, volumeNode, referenceNode, tableNode)

    def exportStl(self, segmentationNode, folder, overwrite=False):
        """One STL per vertebra; an earlier export of a same-named segmentation there is only replaced (as a
        whole) with ``overwrite``."""
        return self.session().export_stl(segmentationNode, folder, overwrite=overwrite)

    def exportLabelmap(self, scene, segmentationNode, volumeNode, path):
        return self.session(scene).export_labelmap(segmentationNode, volumeNode, path)


#
# Test (runs inside Slicer: Developer mode -> "Reload and Test", or Slicer --python-code; also headless against
# slicer-core, see Testing/test_slicer_module.py). The bodies are in LumbarSegLib.scene.self_test. The model
# parts need PyTorch; the extension build servers have none, so there they are skipped and say why - in
# runTest and in each model test method, which unittest may also run on its own.
#


class LumbarSegTest(ScriptedLoadableModuleTest):
    def setUp(self):
        if hasattr(slicer, "mrmlScene"):
            slicer.mrmlScene.Clear()
            self.scene = slicer.mrmlScene
        else:  # slicer-core: no application scene
            self.scene = slicer.vtkMRMLScene()
        slicerLib("scene").ensure_segmentations_logic(self.scene)

    def runTest(self):
        self.setUp()
        self.test_LumbarSeg_SceneLogic()
        self.modelSkipReason = torchProblem()
        if self.modelSkipReason:
            self.delayDisplay(f"Skipped the model part of the LumbarSeg self-test: {self.modelSkipReason}")
            return
        self.setUp()
        self.test_LumbarSeg_FullFlow()
        self.setUp()
        self.test_LumbarSeg_BackgroundRunAndCancel()

    def requireTorch(self):
        problem = torchProblem()
        if problem:
            self.skipTest(f"the model part of the LumbarSeg self-test needs PyTorch: {problem}")

    def test_LumbarSeg_SceneLogic(self):
        slicerLib("self_test").scene_logic(self, LumbarSegLogic, self.scene)

    def test_LumbarSeg_FullFlow(self):
        self.requireTorch()
        slicerLib("self_test").full_flow(self, LumbarSegLogic, self.scene)

    def test_LumbarSeg_BackgroundRunAndCancel(self):
        self.requireTorch()
        processEvents = getattr(getattr(slicer, "app", None), "processEvents", lambda: None)
        slicerLib("self_test").background_run_and_cancel(self, LumbarSegLogic, self.scene, processEvents)
