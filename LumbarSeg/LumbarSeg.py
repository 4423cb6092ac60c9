"""LumbarSeg: automatic L1-L5 segmentation of CT in 3D Slicer (two-stage method of Lu et al. 2023).

This file is the Slicer scripted module (Module, Widget, Logic, Test). All the work on the scene is in
``LumbarSegLib.slicer`` (plain functions taking the scene, tested headless) and the segmentation
itself in ``LumbarSegLib.pipeline``; this file adds the GUI, the background run and dependency install.

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

TORCH_REQUIREMENT = ">=2.1"  # handed to PyTorchUtils; the engine needs torch 2.x (torch.cuda.OutOfMemoryError)
PYTHON_REQUIREMENTS = {  # import name -> pip requirement; torch is installed through the PyTorch extension
    "torch": "torch" + TORCH_REQUIREMENT,
    "SimpleITK": "SimpleITK>=2.3",
    "scipy": "scipy>=1.10",
    "numpy": "numpy>=1.24",
}

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
    import importlib.util

    return [name for name in PYTHON_REQUIREMENTS if importlib.util.find_spec(name) is None]


def torchVersionProblem(version, requirement=TORCH_REQUIREMENT):
    """Why the installed torch ``version`` cannot be used (None when it meets ``requirement``)."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    if version is None:
        return _("PyTorch is not installed.")
    try:
        base = Version(Version(str(version)).base_version)  # "2.13.0+cpu" -> 2.13.0
    except InvalidVersion:
        return _("PyTorch reports an unreadable version ({version}).").format(version=version)
    if base not in SpecifierSet(requirement):
        return _("PyTorch {version} is installed; LumbarSeg needs torch{requirement}.").format(
            version=version, requirement=requirement)
    return None


def torchProblem():
    """Why the model cannot run here (None when PyTorch is importable and recent enough); imports nothing."""
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return _("PyTorch is not installed.")
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        version = None
    return torchVersionProblem(version)


def slicerLib(name):
    """The ``LumbarSegLib.slicer`` module ``name`` ("volumes", "roi", "segments", "run", ...), imported on first use."""
    ensureLibImportable()
    import importlib

    return importlib.import_module("LumbarSegLib.slicer." + name)


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
            "<b>Research use only, not a medical device.</b> The bundled model was trained on synthetic CTs "
            "only; see its model card under Model.")
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
        self._job = None  # the running segmentation (LumbarSegLib.slicer.engine_job.EngineJob)
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
        self._timer.connect("timeout()", self.onPollWorker)

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
        text = _("LumbarSeg needs PyTorch ({requirement}). It is installed by the PyTorch extension, which picks "
                 "the build that fits your GPU driver (or the CPU build). The bundled model runs in seconds on a CPU, "
                 "so a GPU is optional.\n\nInstall now? The download can take several minutes; Slicer stays usable "
                 "and the Log section shows the progress.").format(requirement=TORCH_REQUIREMENT)
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
        if segmentation is not None and self.logic.isUserEdited(segmentation):
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

    def onPollWorker(self):
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
                outcome = self.logic.finishSegmentation(slicer.mrmlScene, job)
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
        if result.found:
            self.onRecomputeMetrics()
        slicer.util.setSliceViewerLayers(background=volume)
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None and layoutManager.threeDViewCount > 0:
            layoutManager.threeDWidget(0).threeDView().resetFocalPoint()
        seconds = sum(result.timings.values())
        found = ", ".join(result.found) if result.found else _("none")
        lines = [_("Found: {found} ({seconds:.1f} s on {device}).").format(
            found=found, seconds=seconds, device=result.device or "?")] + outcome.messages
        lines.append(_("Research use only, not a medical device: review every vertebra."))
        self.ui.statusLabel.text = "\n".join(lines)
        if not result.found:
            slicer.util.warningDisplay("\n".join(outcome.messages), windowTitle=_("LumbarSeg: no lumbar spine found"))
        elif any(m.startswith("WARNING") for m in outcome.messages):  # implausible sizes, NaN voxels
            slicer.util.warningDisplay("\n".join(m for m in outcome.messages if m.startswith("WARNING")),
                                       windowTitle=_("LumbarSeg: check this result"))

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
    """Scene-level operations of the module; every method takes the scene (or nodes) explicitly.

    Works without the Slicer application (headless tests with the slicer-core wheel); only
    ``getParameterNode`` and ``installDependencies`` need the running application.
    """

    LOG_LINES = 500

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        import collections

        self.pythonExecutable = None  # None: PythonSlicer inside Slicer, else this interpreter
        self.logLines = collections.deque(maxlen=self.LOG_LINES)
        self.logCallback = None
        self.lastResult = None
        self.lastError = None
        self.lastSettings = None

    def getParameterNode(self):
        return LumbarSegParameterNode(super().getParameterNode())

    # --- log and diagnostics

    def log(self, text):
        import time

        line = time.strftime("%H:%M:%S ") + str(text)
        self.logLines.append(line)
        logging.info("LumbarSeg: " + str(text))
        if self.logCallback is not None:
            self.logCallback(line)

    def recordError(self, exc):
        self.lastError = exc
        self.log(f"ERROR {type(exc).__name__}: {exc}")

    def diagnostics(self, slicerVersion=None, modelPath=None):
        """The "Copy diagnostics" text: versions, device, model, last run's stage timings, last error, log."""
        return slicerLib("provenance").diagnostics_text(
            self.modelSummary(modelPath), last_result=self.lastResult, last_error=self.lastError,
            settings=self.lastSettings, slicer_version=slicerVersion, log_lines=self.logLines)

    # --- dependencies

    def installDependencies(self, status=None):
        """Install torch through the PyTorch extension (PyTorchUtils, with the version requirement), then any
        other missing package with pip."""
        status = status or self.log
        problem = torchProblem()
        if problem:
            try:
                import PyTorchUtils  # the PyTorch extension (EXTENSION_DEPENDS) picks the right CUDA/CPU build
            except ImportError:
                raise RuntimeError(_("the PyTorch extension is not installed. Install 'PyTorch' from the Extensions "
                                     "Manager and restart Slicer.")) from None
            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            status(_("Installing PyTorch ({requirement}): {reason}").format(requirement=TORCH_REQUIREMENT,
                                                                            reason=problem))
            torch = torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT)
            if torch is None:
                raise RuntimeError(_("the PyTorch extension did not install PyTorch"))
            status(_("PyTorch {version} installed.").format(version=torch.__version__))
        for name in missingPackages():
            if name != "torch":
                status(_("Installing {package}...").format(package=name))
                slicer.util.pip_install(PYTHON_REQUIREMENTS[name])
        import importlib

        importlib.invalidate_caches()

    # --- model

    def modelSummary(self, modelPath=None):
        ensureLibImportable()
        from LumbarSegLib.model_card import model_summary

        return model_summary(modelPath)

    def modelInfoHtml(self, modelPath=None):
        """What the panel shows about the model that will run, with a link to its model card."""
        import html

        summary = self.modelSummary(modelPath)
        rows = [f"<b>{html.escape(summary['name'])}</b>" + (_(" (bundled)") if summary["bundled"] else "")]
        for key, title in (("configuration", _("Configuration")), ("trained_on", _("Trained on")),
                           ("accuracy", _("Measured accuracy"))):
            if summary.get(key):
                rows.append(f"{title}: {html.escape(str(summary[key]))}")
        if summary.get("matches_card") is False:
            rows.append("<b>" + _("Warning: this file is not the one its model card describes.") + "</b>")
        if summary.get("card_url"):
            rows.append(f'<a href="{summary["card_url"]}">' + _("Model card") + "</a>")
        return "<br>".join(rows)

    # --- segmentation: the command line in a subprocess (LumbarSegLib.engine_process)

    def startSegmentation(self, scene, volumeNode, segmentationNode=None, roiMode="auto", device="auto",
                          modelPath=None, overwriteEdited=False, smoothing=0.5):
        """Start ``lumbarseg segment`` on the volume in a subprocess; returns the job. The scene is read here
        (main thread); poll ``job.process`` from a timer, then call :meth:`finishSegmentation`."""
        job = slicerLib("engine_job").start_job(
            scene, volumeNode, segmentation_node=segmentationNode, roi_mode=roiMode or "auto",
            device=device or "auto", model_path=modelPath, overwrite_edited=overwriteEdited, smoothing=smoothing,
            python=self.pythonExecutable)
        self.log(f"Segmenting '{volumeNode.GetName()}' (device {device or 'auto'}, crop box "
                 f"{'yours' if job.box_lps else 'from the localizer'}) in process {job.process.pid}")
        return job

    def finishSegmentation(self, scene, job):
        """Main-thread part after the process ended: its result into the scene. Returns the ApplyOutcome;
        raises Cancelled or the command's one-line error (the scene is then unchanged)."""
        try:
            result, outcome = slicerLib("engine_job").finish_job(scene, job)
        except Exception as exc:
            self.recordError(exc)
            raise
        self._recordRun(outcome, result, job.settings, job.settings.get("model_path"))
        return outcome

    def cancelSegmentation(self, job):
        """End a running job's process (and its children) and wait for it; nothing in the scene changes."""
        slicerLib("engine_job").cancel_job(job)
        self.log("Segmentation cancelled")

    def process(self, scene, volumeNode, segmentationNode=None, roiMode="auto", device="auto", modelPath=None,
                overwriteEdited=False, progress=None, cancel=None, smoothing=0.5):
        """Synchronous run (scripting, tests): the same subprocess as the GUI, waited for. ``progress(stage,
        fraction)`` gets each progress event; ``cancel()`` returning True ends the run (raises Cancelled).
        Returns (SegmentationResult, ApplyOutcome)."""
        job = self.startSegmentation(scene, volumeNode, segmentationNode, roiMode, device, modelPath,
                                     overwriteEdited, smoothing)
        try:
            while job.process.running:
                job.process.wait_for_output(0.1)  # blocks in the OS on the pipe; no sleep
                for event in job.process.poll():
                    if progress is not None:
                        progress(event.stage, event.fraction)
                if cancel is not None and cancel():
                    self.cancelSegmentation(job)
        except BaseException:
            if job.process.running:
                self.cancelSegmentation(job)
            raise
        outcome = self.finishSegmentation(scene, job)
        return self.lastResult, outcome

    def _recordRun(self, outcome, result, settings, modelPath):
        self.lastResult, self.lastSettings = result, settings
        if outcome.segmentation_node is not None:
            slicerLib("provenance").record_provenance(outcome.segmentation_node, self.modelSummary(modelPath),
                                                      result, settings)
        timings = ", ".join(f"{k} {v:.2f} s" for k, v in result.timings.items())
        self.log(f"Found {', '.join(result.found) or 'none'} on {result.device or '?'} ({timings})")
        for message in outcome.messages:
            self.log(message)

    def isUserEdited(self, segmentationNode):
        return slicerLib("segments").is_user_edited(segmentationNode)

    def setSmoothing(self, segmentationNode, value):
        """Set the surface smoothing; surfaces are rebuilt only when the value changes. Returns True then."""
        segmentation = segmentationNode.GetSegmentation()
        text = str(float(value))
        if segmentation.GetConversionParameter("Smoothing factor") == text:
            return False
        segmentation.SetConversionParameter("Smoothing factor", text)
        closed = slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()
        if segmentation.ContainsRepresentation(closed):
            segmentationNode.RemoveClosedSurfaceRepresentation()
            segmentationNode.CreateClosedSurfaceRepresentation()
        # A smoothing change does not touch voxels, so the content hash (edit detection) stays valid.
        return True

    # --- results

    def computeMetrics(self, scene, segmentationNode, volumeNode, referenceNode=None, tableNode=None):
        metrics = slicerLib("metrics_table")
        rows = metrics.compute_metrics(segmentationNode, volumeNode, referenceNode)
        name = segmentationNode.GetName() + " metrics"
        return metrics.fill_metrics_table(scene, rows, tableNode, name=name, volume_node=volumeNode)

    def exportStl(self, segmentationNode, folder, overwrite=False):
        """One STL per segment; an earlier export of a same-named segmentation there is only replaced (as a
        whole) with ``overwrite`` (:func:`LumbarSegLib.slicer.export.export_stl`)."""
        return slicerLib("export").export_stl(segmentationNode, folder, overwrite=overwrite)

    def exportLabelmap(self, scene, segmentationNode, volumeNode, path):
        return slicerLib("export").export_labelmap(scene, segmentationNode, volumeNode, path)


#
# Test (runs inside Slicer: Developer mode -> "Reload and Test", or Slicer --python-code; also headless against
# slicer-core, see Testing/test_slicer_module.py). The model part needs PyTorch; the extension build servers have
# none, so there it is skipped and the test says why.
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

    def _phantom(self):
        ensureLibImportable()
        import numpy as np
        import SimpleITK as sitk

        from LumbarSegLib import phantoms
        from LumbarSegLib.constants import VERSE_LUMBAR

        ct, verse = phantoms.generate_phantom(11, shape=(56, 48, 80), spacing=(3.2, 3.2, 3.0), fov="lumbar")
        lut = np.zeros(256, np.uint8)
        for code, label in VERSE_LUMBAR.items():
            lut[code] = label
        labels = sitk.GetImageFromArray(lut[sitk.GetArrayFromImage(verse)])
        direction = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)  # flipped x: a non-trivial direction
        for image in (ct, labels):
            image.SetDirection(direction)
        labels.CopyInformation(ct)
        return ct, labels

    def test_LumbarSeg_SceneLogic(self):
        """Everything the buttons do after a run, without PyTorch: known labels into the scene (in the CT's
        study), metrics, smoothing, edit detection, exports, provenance and diagnostics."""
        import tempfile

        import numpy as np
        import SimpleITK as sitk

        self.delayDisplay("Scene logic without the model")
        ct, labels = self._phantom()
        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)
        study = hierarchy.CreateStudyItem(hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Phantom"), "CT")
        volume = slicerLib("volumes").sitk_to_volume_node(self.scene, ct, "LumbarSeg test CT")
        hierarchy.SetItemParent(hierarchy.GetItemByDataNode(volume) or hierarchy.CreateItem(study, volume), study)
        segmentation = slicerLib("segments").labels_to_segmentation(self.scene, labels, volume)
        self.assertEqual(segmentation.GetSegmentation().GetNumberOfSegments(), 5)
        self.assertEqual(hierarchy.GetItemParent(hierarchy.GetItemByDataNode(segmentation)), study)
        np.testing.assert_array_equal(slicerLib("segments").segmentation_to_label_array(segmentation, volume),
                                      sitk.GetArrayViewFromImage(labels))
        logic = LumbarSegLogic()
        self.assertFalse(logic.isUserEdited(segmentation))
        logic.setSmoothing(segmentation, 0.3)
        self.assertFalse(logic.isUserEdited(segmentation))
        table = logic.computeMetrics(self.scene, segmentation, volume, segmentation)
        rows = slicerLib("metrics_table").table_to_dict(table)
        self.assertEqual(sorted(rows), ["L1", "L2", "L3", "L4", "L5"])
        for row in rows.values():
            self.assertAlmostEqual(row["DSC"], 1.0)
        self.assertEqual(hierarchy.GetItemParent(hierarchy.GetItemByDataNode(table)), study)
        with tempfile.TemporaryDirectory() as folder:
            self.assertEqual(len(logic.exportStl(segmentation, folder)), 5)
            path = logic.exportLabelmap(self.scene, segmentation, volume, os.path.join(folder, "l.nii.gz"))
            np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))),
                                          sitk.GetArrayViewFromImage(labels))
        self.assertIn("Model", logic.modelInfoHtml())
        logic.recordError(RuntimeError("self-test error"))
        text = logic.diagnostics(slicerVersion="self-test")
        self.assertIn("Last error: RuntimeError: self-test error", text)
        self.delayDisplay("Scene logic passed")

    def test_LumbarSeg_FullFlow(self):
        import tempfile

        import numpy as np
        import SimpleITK as sitk

        self.delayDisplay("Synthetic CT")
        ct, labels = self._phantom()
        from LumbarSegLib import pipeline

        volume = slicerLib("volumes").sitk_to_volume_node(self.scene, ct, "LumbarSeg test CT")
        logic = LumbarSegLogic()

        self.delayDisplay("Segmenting with the engine (bundled model, else random weights)")
        result, outcome = logic.process(self.scene, volume, device="cpu")
        segmentation = outcome.segmentation_node
        if result.found:
            names = [segmentation.GetSegmentation().GetNthSegment(i).GetName()
                     for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]
            self.assertEqual(sorted(names), sorted(result.found))
            provenance = slicerLib("provenance").read_provenance(segmentation)
            self.assertEqual(provenance["settings"]["device_used"], "cpu")
            self.assertIn("not a medical device", provenance["notice"])
        else:
            self.assertIsNone(segmentation)

        self.delayDisplay("Known labels into the scene")
        box = pipeline.index_box_to_lps(ct, (5, 5, 5), (50, 43, 75))
        known = pipeline.SegmentationResult(labels, ["L1", "L2", "L3", "L4", "L5"], None, box, 1.0, {}, [], True)
        outcome = slicerLib("run").apply_result(self.scene, volume, known, segmentation, outcome.roi_node,
                                                overwrite_edited=True)
        segmentation = outcome.segmentation_node
        self.assertEqual(segmentation.GetSegmentation().GetNumberOfSegments(), 5)
        np.testing.assert_array_equal(slicerLib("segments").segmentation_to_label_array(segmentation, volume),
                                      sitk.GetArrayViewFromImage(labels))
        self.assertEqual(outcome.roi_node.GetName(), slicerLib("roi").ROI_NAME)

        self.delayDisplay("Export")
        with tempfile.TemporaryDirectory() as folder:
            self.assertEqual(len(logic.exportStl(segmentation, folder)), 5)
        self.delayDisplay("Full flow passed")

    def test_LumbarSeg_BackgroundRunAndCancel(self):
        import time

        ct, _ = self._phantom()  # makes LumbarSegLib importable
        from LumbarSegLib.errors import Cancelled

        processEvents = getattr(getattr(slicer, "app", None), "processEvents", lambda: None)
        volume = slicerLib("volumes").sitk_to_volume_node(self.scene, ct, "LumbarSeg test CT")
        logic = LumbarSegLogic()
        context = logic.startSegmentation(self.scene, volume, device="cpu")
        while context["worker"].running():
            processEvents()  # the GUI keeps running while the engine works
            time.sleep(0.02)
        outcome = logic.finishSegmentation(self.scene, context)
        self.assertEqual(outcome.segmentation_node is not None, bool(context["worker"].result.found))

        context = logic.startSegmentation(self.scene, volume, device="cpu")
        context["worker"].cancel()
        context["worker"].wait(60)
        self.assertIsInstance(context["worker"].error, Cancelled)
        self.delayDisplay("Background run and cancel passed")
