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

    class ScriptedLoadableModuleTest:
        pass

    class VTKObservationMixin:
        def __init__(self):
            pass


MODULE_DIR = os.path.dirname(os.path.abspath(__file__))

PYTHON_REQUIREMENTS = {  # import name -> pip requirement
    "torch": "torch>=2.1",
    "SimpleITK": "SimpleITK>=2.3",
    "scipy": "scipy>=1.10",
    "numpy": "numpy>=1.24",
}

DEVICES = ["auto", "cpu", "cuda"]  # deviceComboBox order
ROI_MODES = ["auto", "always", "never"]  # roiModeComboBox order


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


def slicerLib(name):
    """The ``LumbarSegLib.slicer`` module ``name`` ("volumes", "roi", "segments", "run", ...), imported on first use."""
    ensureLibImportable()
    import importlib

    return importlib.import_module("LumbarSegLib.slicer." + name)


#
# Module
#


class LumbarSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "LumbarSeg"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["LumbarSeg contributors"]
        self.parent.helpText = (
            "Automatic segmentation of the lumbar vertebrae L1-L5 in CT. A localizer network finds the lumbar "
            "spine (heatmap) and places a crop box (the 'Lumbar crop' ROI); an XUNet segments L1-L5 inside it "
            "(Lu et al., J Appl Clin Med Phys 2023).<br>"
            "Move or resize the ROI and segment again to use your own box. Edit the result in the Segment "
            "Editor, recompute metrics, export STL (one file per vertebra) or a label map.<br>"
            "Research software, not for clinical use."
        )
        self.parent.acknowledgementText = (
            "Method: Lu et al., 'Automatic segmentation of lumbar vertebrae in CT with a two-stage deep learning "
            "approach', Journal of Applied Clinical Medical Physics, 2023. Module layout follows 3D Slicer's "
            "scripted module template."
        )


#
# Widget
#


class LumbarSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    POLL_MS = 100

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._updatingGUIFromParameterNode = False
        self._worker = None
        self._runContext = None
        self._timer = None

    # --- setup and parameter node -----------------------------------------------------------------

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LumbarSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LumbarSegLogic()

        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_MS)
        self._timer.connect("timeout()", self.onPollWorker)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # Widgets -> parameter node
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateParameterNodeFromGUI)
        self.ui.referenceSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)",
                                                      self.updateParameterNodeFromGUI)
        self.ui.outputSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateParameterNodeFromGUI)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.updateParameterNodeFromGUI)
        self.ui.roiModeComboBox.connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.smoothingSliderWidget.connect("valueChanged(double)", self.onSmoothingChanged)
        self.ui.exportFolderButton.connect("directoryChanged(QString)", self.updateParameterNodeFromGUI)

        # Buttons
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.recomputeMetricsButton.connect("clicked(bool)", self.onRecomputeMetrics)
        self.ui.editButton.connect("clicked(bool)", self.onEditButton)
        self.ui.exportStlButton.connect("clicked(bool)", self.onExportStl)
        self.ui.exportLabelmapButton.connect("clicked(bool)", self.onExportLabelmap)

        self.ui.progressBar.setVisible(False)
        self.updateDependencyStatus()
        self.initializeParameterNode()

    def cleanup(self):
        if self._worker is not None:
            self._worker.cancel()
        if self._timer is not None:
            self._timer.stop()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode is not None:
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)

    def onSceneStartClose(self, caller, event):
        if self._worker is not None:
            self._worker.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.GetNodeReference("InputVolume"):
            volume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if volume is not None and not volume.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.SetNodeReferenceID("InputVolume", volume.GetID())

    def setParameterNode(self, inputParameterNode):
        if inputParameterNode is not None:
            self.logic.setDefaultParameters(inputParameterNode)
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
            self.ui.inputVolumeSelector.setCurrentNode(p.GetNodeReference("InputVolume"))
            self.ui.referenceSegmentationSelector.setCurrentNode(p.GetNodeReference("ReferenceSegmentation"))
            self.ui.outputSegmentationSelector.setCurrentNode(p.GetNodeReference("OutputSegmentation"))
            self.ui.deviceComboBox.setCurrentIndex(max(0, DEVICES.index(p.GetParameter("Device"))
                                                       if p.GetParameter("Device") in DEVICES else 0))
            useFile = p.GetParameter("ModelMode") == "file"
            self.ui.modelComboBox.setCurrentIndex(1 if useFile else 0)
            self.ui.modelPathLineEdit.setEnabled(useFile)
            self.ui.modelPathLabel.setEnabled(useFile)
            if p.GetParameter("ModelPath"):
                self.ui.modelPathLineEdit.currentPath = p.GetParameter("ModelPath")
            mode = p.GetParameter("ROIMode")
            self.ui.roiModeComboBox.setCurrentIndex(ROI_MODES.index(mode) if mode in ROI_MODES else 0)
            self.ui.smoothingSliderWidget.value = float(p.GetParameter("Smoothing") or 0.5)
            if p.GetParameter("ExportFolder"):
                self.ui.exportFolderButton.directory = p.GetParameter("ExportFolder")

            table = p.GetNodeReference("MetricsTable")
            self.ui.metricsTableView.setMRMLTableNode(table)
            self.updateButtonStates()
        finally:
            self._updatingGUIFromParameterNode = False

    def updateParameterNodeFromGUI(self, *args):
        if self._parameterNode is None or self._updatingGUIFromParameterNode:
            return
        p = self._parameterNode
        wasModified = p.StartModify()
        p.SetNodeReferenceID("InputVolume", self.ui.inputVolumeSelector.currentNodeID)
        p.SetNodeReferenceID("ReferenceSegmentation", self.ui.referenceSegmentationSelector.currentNodeID)
        p.SetNodeReferenceID("OutputSegmentation", self.ui.outputSegmentationSelector.currentNodeID)
        p.SetParameter("Device", DEVICES[max(0, self.ui.deviceComboBox.currentIndex)])
        p.SetParameter("ModelMode", "file" if self.ui.modelComboBox.currentIndex == 1 else "bundled")
        p.SetParameter("ModelPath", self.ui.modelPathLineEdit.currentPath or "")
        p.SetParameter("ROIMode", ROI_MODES[max(0, self.ui.roiModeComboBox.currentIndex)])
        p.SetParameter("Smoothing", str(self.ui.smoothingSliderWidget.value))
        p.SetParameter("ExportFolder", self.ui.exportFolderButton.directory or "")
        p.EndModify(wasModified)

    def updateButtonStates(self):
        p = self._parameterNode
        running = self._worker is not None
        volume = p.GetNodeReference("InputVolume") if p else None
        segmentation = p.GetNodeReference("OutputSegmentation") if p else None
        self.ui.applyButton.enabled = volume is not None and not running
        self.ui.applyButton.toolTip = ("Locate the lumbar spine, crop, and segment L1-L5." if volume is not None
                                       else "Select a CT volume first.")
        self.ui.cancelButton.enabled = running
        hasResult = segmentation is not None and not running
        for button in (self.ui.recomputeMetricsButton, self.ui.editButton, self.ui.exportStlButton,
                       self.ui.exportLabelmapButton):
            button.enabled = hasResult

    def onSmoothingChanged(self, value):
        self.updateParameterNodeFromGUI()
        segmentation = self._parameterNode.GetNodeReference("OutputSegmentation") if self._parameterNode else None
        if segmentation is not None and self._worker is None:
            self.logic.setSmoothing(segmentation, value)

    # --- dependencies -----------------------------------------------------------------------------

    def updateDependencyStatus(self):
        missing = missingPackages()
        if missing:
            self.ui.dependencyStatusLabel.text = (
                "Missing Python packages: " + ", ".join(missing) + ". Click the button below to install them "
                "(PyTorch is large: about 200 MB for CPU, 2+ GB with CUDA).")
            self.ui.installDependenciesButton.visible = True
            self.ui.advancedCollapsibleButton.collapsed = False
        else:
            self.ui.dependencyStatusLabel.text = ""
            self.ui.installDependenciesButton.visible = False
        return missing

    def onInstallDependencies(self):
        missing = missingPackages()
        if not missing:
            self.updateDependencyStatus()
            return True
        text = ("LumbarSeg needs these Python packages: " + ", ".join(missing) + ".\n\n")
        if "torch" in missing:
            text += ("PyTorch will be installed with the PyTorch extension (it picks the CUDA build that fits "
                     "your GPU driver) if that extension is installed. Otherwise it is installed from PyPI: "
                     "on Windows and macOS that build runs on the CPU only; on Linux it includes CUDA. The "
                     "bundled model runs in seconds on a CPU, so a GPU is optional.\n\n")
        text += "Install now? This can take several minutes."
        if not slicer.util.confirmOkCancelDisplay(text, windowTitle="LumbarSeg: install dependencies"):
            return False
        self.ui.statusLabel.text = "Installing " + ", ".join(missing) + "..."
        try:
            with slicer.util.WaitCursor():
                self.logic.installDependencies(missing, status=self.showStatus)
        except Exception as exc:
            logging.exception("LumbarSeg dependency installation failed")
            slicer.util.errorDisplay(f"Installing {', '.join(missing)} failed: {exc}\n\nInstall PyTorch with the "
                                     "PyTorch extension (Extensions Manager) or from the Python console with "
                                     "slicer.util.pip_install('torch').")
            return False
        finally:
            self.updateDependencyStatus()
        self.ui.statusLabel.text = "Dependencies installed."
        return not missingPackages()

    def showStatus(self, text):
        self.ui.statusLabel.text = text
        slicer.app.processEvents()

    # --- run --------------------------------------------------------------------------------------

    def onApplyButton(self):
        if missingPackages() and not self.onInstallDependencies():
            self.ui.statusLabel.text = "PyTorch (and other dependencies) must be installed to segment."
            return
        p = self._parameterNode
        volume = p.GetNodeReference("InputVolume")
        if volume is None:
            slicer.util.errorDisplay("No volume selected: choose a CT volume in 'CT volume'.")
            return
        segmentation = p.GetNodeReference("OutputSegmentation")
        overwrite = False
        if segmentation is not None and self.logic.isUserEdited(segmentation):
            box = qt.QMessageBox(slicer.util.mainWindow())
            box.setWindowTitle("LumbarSeg")
            box.setText(f"'{segmentation.GetName()}' was edited since LumbarSeg created it.")
            box.setInformativeText("Keep your edits and put the new result in a new segmentation?")
            keep = box.addButton("New segmentation (keep edits)", qt.QMessageBox.AcceptRole)
            overwriteButton = box.addButton("Overwrite", qt.QMessageBox.DestructiveRole)
            box.addButton(qt.QMessageBox.Cancel)
            box.setDefaultButton(keep)
            box.exec_()
            if box.clickedButton() == overwriteButton:
                overwrite = True
            elif box.clickedButton() != keep:
                return
        if p.GetParameter("ModelMode") == "file" and not os.path.isfile(p.GetParameter("ModelPath")):
            slicer.util.errorDisplay("Choose an existing model file (.pt), or select 'Bundled model'.")
            return
        try:
            context = self.logic.startSegmentation(
                slicer.mrmlScene, volume, segmentationNode=segmentation, roiMode=p.GetParameter("ROIMode"),
                device=p.GetParameter("Device"), modelPath=self.modelPath(), overwriteEdited=overwrite,
                smoothing=float(p.GetParameter("Smoothing") or 0.5))
        except Exception as exc:
            slicer.util.errorDisplay(slicerLib("run").friendly_error(exc, p.GetParameter("Device")))
            return
        self._runContext = context
        self._worker = context["worker"]
        self.ui.progressBar.setVisible(True)
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = ("Using your crop box (the localizer is skipped)..." if context["box_lps"]
                                    else "Starting...")
        self.updateButtonStates()
        self._timer.start()

    def modelPath(self):
        p = self._parameterNode
        return p.GetParameter("ModelPath") if p.GetParameter("ModelMode") == "file" else None

    def onCancelButton(self):
        if self._worker is not None:
            self._worker.cancel()
            self.ui.statusLabel.text = "Cancelling (stops at the end of the current step)..."
            self.ui.cancelButton.enabled = False

    def onPollWorker(self):
        worker = self._worker
        if worker is None:
            self._timer.stop()
            return
        for stage, fraction in worker.poll():
            overall, text = slicerLib("worker").overall_progress(stage, fraction)
            self.ui.progressBar.value = int(round(100 * overall))
            if not worker.cancelled:
                self.ui.statusLabel.text = text
        if worker.running():
            return
        self._timer.stop()
        self._worker = None
        context, self._runContext = self._runContext, None
        self.ui.progressBar.setVisible(False)
        self.updateButtonStates()
        from LumbarSegLib.errors import Cancelled

        if worker.cancelled or isinstance(worker.error, Cancelled):
            self.ui.statusLabel.text = "Cancelled. Nothing was changed."
            return
        if worker.error is not None:
            logging.error("LumbarSeg failed", exc_info=worker.error)
            message = slicerLib("run").friendly_error(worker.error, context["device"])
            self.ui.statusLabel.text = message
            slicer.util.errorDisplay(message)
            return
        try:
            with slicer.util.WaitCursor():
                outcome = self.logic.finishSegmentation(slicer.mrmlScene, context)
        except Exception as exc:
            logging.exception("LumbarSeg could not put the result into the scene")
            slicer.util.errorDisplay(slicerLib("run").friendly_error(exc))
            return
        self.showResult(context["volume"], outcome, worker.result)

    def showResult(self, volume, outcome, result):
        p = self._parameterNode
        if outcome.segmentation_node is not None:
            p.SetNodeReferenceID("OutputSegmentation", outcome.segmentation_node.GetID())
        if outcome.roi_node is not None:
            p.SetNodeReferenceID("CropROI", outcome.roi_node.GetID())
        if result.found:
            self.onRecomputeMetrics()
        slicer.util.setSliceViewerLayers(background=volume)
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None and layoutManager.threeDViewCount > 0:
            layoutManager.threeDWidget(0).threeDView().resetFocalPoint()
        seconds = sum(result.timings.values())
        found = ", ".join(result.found) if result.found else "none"
        lines = [f"Found: {found} ({seconds:.1f} s)."] + outcome.messages
        self.ui.statusLabel.text = "\n".join(lines)
        if not result.found:
            slicer.util.warningDisplay("\n".join(outcome.messages), windowTitle="LumbarSeg: no lumbar spine found")

    # --- results ----------------------------------------------------------------------------------

    def onRecomputeMetrics(self):
        p = self._parameterNode
        segmentation = p.GetNodeReference("OutputSegmentation")
        volume = p.GetNodeReference("InputVolume")
        if segmentation is None or volume is None:
            return
        try:
            with slicer.util.WaitCursor():
                table = self.logic.computeMetrics(slicer.mrmlScene, segmentation, volume,
                                                  p.GetNodeReference("ReferenceSegmentation"),
                                                  p.GetNodeReference("MetricsTable"))
        except Exception as exc:
            logging.exception("LumbarSeg metrics failed")
            slicer.util.errorDisplay(slicerLib("run").friendly_error(exc))
            return
        p.SetNodeReferenceID("MetricsTable", table.GetID())
        self.ui.metricsTableView.setMRMLTableNode(table)

    def onEditButton(self):
        p = self._parameterNode
        segmentation, volume = p.GetNodeReference("OutputSegmentation"), p.GetNodeReference("InputVolume")
        if segmentation is None:
            return
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.SegmentEditorWidget.editor
        editor.setSegmentationNode(segmentation)
        if volume is not None:
            if hasattr(editor, "setSourceVolumeNode"):
                editor.setSourceVolumeNode(volume)
            else:  # Slicer < 5.2
                editor.setMasterVolumeNode(volume)

    def onExportStl(self):
        p = self._parameterNode
        segmentation = p.GetNodeReference("OutputSegmentation")
        folder = self.ui.exportFolderButton.directory
        if segmentation is None or not folder:
            slicer.util.errorDisplay("Choose an export folder first.")
            return
        try:
            with slicer.util.WaitCursor():
                files = self.logic.exportStl(segmentation, folder)
        except Exception as exc:
            slicer.util.errorDisplay(f"STL export failed: {exc}")
            return
        self.ui.statusLabel.text = f"Wrote {len(files)} STL file(s) to {folder}."

    def onExportLabelmap(self):
        p = self._parameterNode
        segmentation, volume = p.GetNodeReference("OutputSegmentation"), p.GetNodeReference("InputVolume")
        if segmentation is None or volume is None:
            return
        start = os.path.join(self.ui.exportFolderButton.directory or "", segmentation.GetName() + ".nii.gz")
        path = qt.QFileDialog.getSaveFileName(
            slicer.util.mainWindow(), "Export label map", start,
            "NIfTI label map (*.nii.gz);;NRRD label map (*.nrrd);;Slicer segmentation (*.seg.nrrd)")
        if not path:
            return
        try:
            with slicer.util.WaitCursor():
                written = self.logic.exportLabelmap(slicer.mrmlScene, segmentation, volume, path)
        except Exception as exc:
            slicer.util.errorDisplay(f"Label map export failed: {exc}")
            return
        self.ui.statusLabel.text = f"Wrote {written}."


#
# Logic
#


class LumbarSegLogic(ScriptedLoadableModuleLogic):
    """Scene-level operations of the module; every method takes the scene (or nodes) explicitly.

    Works without the Slicer application (headless tests with the slicer-core wheel); only
    ``getParameterNode`` (inherited) and ``installDependencies`` need the running application.
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._models = {}
        import threading

        self._modelLock = threading.Lock()

    def setDefaultParameters(self, parameterNode):
        defaults = {"Device": "auto", "ModelMode": "bundled", "ModelPath": "", "ROIMode": "auto",
                    "Smoothing": "0.5", "ExportFolder": ""}
        for name, value in defaults.items():
            if not parameterNode.GetParameter(name):
                parameterNode.SetParameter(name, value)

    # --- dependencies

    def installDependencies(self, missing=None, status=None):
        """Install missing packages; torch through the PyTorch extension (PyTorchUtils) when present."""
        missing = missingPackages() if missing is None else list(missing)
        status = status or logging.info
        if "torch" in missing:
            status("Installing PyTorch (this can take several minutes)...")
            try:
                import PyTorchUtils  # the PyTorch extension picks the right CUDA/CPU build
            except ImportError:
                PyTorchUtils = None
            if PyTorchUtils is not None:
                torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                    askConfirmation=False, torchVersionRequirement=">=2.1")
                if torch is None:
                    raise RuntimeError("the PyTorch extension did not install PyTorch")
            else:
                slicer.util.pip_install(PYTHON_REQUIREMENTS["torch"])
        for name in missing:
            if name != "torch":
                status(f"Installing {name}...")
                slicer.util.pip_install(PYTHON_REQUIREMENTS[name])
        import importlib

        importlib.invalidate_caches()

    # --- model

    def loadModel(self, path=None):
        """Load (and cache) a model bundle; ``None`` = bundled model or random weights (warned about)."""
        key = os.path.abspath(path) if path else ""
        with self._modelLock:
            model = self._models.get(key)
            if model is None:
                ensureLibImportable()
                from LumbarSegLib.models import load_model

                model = load_model(path)
                self._models[key] = model
            return model

    # --- segmentation

    def process(self, scene, volumeNode, segmentationNode=None, roiMode="auto", device="auto", modelPath=None,
                overwriteEdited=False, progress=None, cancel=None, segmentFunction=None):
        """Synchronous run (scripting, tests): returns (SegmentationResult, ApplyOutcome)."""
        return slicerLib("run").run_segmentation(
            scene, volumeNode, model=self.loadModel(modelPath), device=device, segmentation_node=segmentationNode,
            roi_mode=roiMode, overwrite_edited=overwriteEdited, progress=progress, cancel=cancel,
            segment_fn=segmentFunction)

    def startSegmentation(self, scene, volumeNode, segmentationNode=None, roiMode="auto", device="auto",
                          modelPath=None, overwriteEdited=False, smoothing=0.5, segmentFunction=None):
        """Start a background run; returns a context dict for :meth:`finishSegmentation`.

        The scene is read here, on the calling (main) thread; the worker thread only runs the engine.
        """
        ensureLibImportable()
        from LumbarSegLib import pipeline  # noqa: F401  (first torch import on the main thread, not the worker)

        roiNode = slicerLib("roi").find_crop_roi(scene, volumeNode)
        inputs = slicerLib("run").prepare_run(volumeNode, roiNode, roiMode or "auto")
        worker = slicerLib("worker").SegmentationWorker(segment_fn=segmentFunction, model_loader=self.loadModel)
        worker.start(inputs.image, model_path=modelPath, device=device or "auto", box_lps=inputs.box_lps)
        return {"worker": worker, "volume": volumeNode, "segmentation": segmentationNode, "roi": roiNode,
                "box_lps": inputs.box_lps, "device": device, "overwrite": overwriteEdited,
                "smoothing": smoothing}

    def finishSegmentation(self, scene, context):
        """Main-thread part after the worker finished: put its result into the scene."""
        worker = context["worker"]
        if worker.error is not None:
            raise worker.error
        return slicerLib("run").apply_result(
            scene, context["volume"], worker.result, context["segmentation"], context["roi"],
            overwrite_edited=context["overwrite"], smoothing=context["smoothing"], user_box_lps=context["box_lps"])

    def isUserEdited(self, segmentationNode):
        return slicerLib("segments").is_user_edited(segmentationNode)

    def setSmoothing(self, segmentationNode, value):
        segmentation = segmentationNode.GetSegmentation()
        segmentation.SetConversionParameter("Smoothing factor", str(float(value)))
        closed = slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()
        if segmentation.ContainsRepresentation(closed):
            segmentationNode.RemoveClosedSurfaceRepresentation()
            segmentationNode.CreateClosedSurfaceRepresentation()
        # A smoothing change does not touch voxels, so the content hash (edit detection) stays valid.

    # --- results

    def computeMetrics(self, scene, segmentationNode, volumeNode, referenceNode=None, tableNode=None):
        rows = slicerLib("metrics_table").compute_metrics(segmentationNode, volumeNode, referenceNode)
        name = segmentationNode.GetName() + " metrics"
        return slicerLib("metrics_table").fill_metrics_table(scene, rows, tableNode, name=name)

    def exportStl(self, segmentationNode, folder):
        return slicerLib("export").export_stl(segmentationNode, folder)

    def exportLabelmap(self, scene, segmentationNode, volumeNode, path):
        return slicerLib("export").export_labelmap(scene, segmentationNode, volumeNode, path)


#
# Test (runs inside Slicer: Developer mode -> "Reload and Test", or Slicer --python-code)
#


class LumbarSegTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
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

    def test_LumbarSeg_FullFlow(self):
        import tempfile

        import numpy as np
        import SimpleITK as sitk

        self.delayDisplay("Synthetic CT")
        ensureLibImportable()
        from LumbarSegLib import pipeline

        ct, labels = self._phantom()
        volume = slicerLib("volumes").sitk_to_volume_node(slicer.mrmlScene, ct, "LumbarSeg test CT")
        logic = LumbarSegLogic()

        self.delayDisplay("Segmenting with the engine (bundled model, else random weights)")
        result, outcome = logic.process(slicer.mrmlScene, volume, device="cpu")
        segmentation = outcome.segmentation_node
        if result.found:
            names = [segmentation.GetSegmentation().GetNthSegment(i).GetName()
                     for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]
            self.assertEqual(sorted(names), sorted(result.found))
        else:
            self.assertIsNone(segmentation)

        self.delayDisplay("Known labels into the scene")
        box = pipeline.index_box_to_lps(ct, (5, 5, 5), (50, 43, 75))
        known = pipeline.SegmentationResult(labels, ["L1", "L2", "L3", "L4", "L5"], None, box, 1.0, {}, [], True)
        outcome = slicerLib("run").apply_result(slicer.mrmlScene, volume, known, segmentation, outcome.roi_node,
                                  overwrite_edited=True)
        segmentation = outcome.segmentation_node
        self.assertEqual(segmentation.GetSegmentation().GetNumberOfSegments(), 5)
        np.testing.assert_array_equal(slicerLib("segments").segmentation_to_label_array(segmentation, volume),
                                      sitk.GetArrayViewFromImage(labels))
        self.assertEqual(outcome.roi_node.GetName(), slicerLib("roi").ROI_NAME)

        self.delayDisplay("Metrics against itself as reference")
        table = logic.computeMetrics(slicer.mrmlScene, segmentation, volume, segmentation)
        rows = slicerLib("metrics_table").table_to_dict(table)
        self.assertEqual(sorted(rows), ["L1", "L2", "L3", "L4", "L5"])
        for row in rows.values():
            self.assertAlmostEqual(row["DSC"], 1.0)
            self.assertGreater(row["Volume"], 1.0)

        self.delayDisplay("Export")
        with tempfile.TemporaryDirectory() as folder:
            files = logic.exportStl(segmentation, folder)
            self.assertEqual(len(files), 5)
            path = logic.exportLabelmap(slicer.mrmlScene, segmentation, volume, os.path.join(folder, "l.nii.gz"))
            np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))),
                                          sitk.GetArrayViewFromImage(labels))
        self.delayDisplay("Full flow passed")

    def test_LumbarSeg_BackgroundRunAndCancel(self):
        import time

        ct, _ = self._phantom()  # makes LumbarSegLib importable
        from LumbarSegLib.errors import Cancelled

        volume = slicerLib("volumes").sitk_to_volume_node(slicer.mrmlScene, ct, "LumbarSeg test CT")
        logic = LumbarSegLogic()
        context = logic.startSegmentation(slicer.mrmlScene, volume, device="cpu")
        while context["worker"].running():
            slicer.app.processEvents()  # the GUI keeps running while the engine works
            time.sleep(0.02)
        outcome = logic.finishSegmentation(slicer.mrmlScene, context)
        self.assertEqual(outcome.segmentation_node is not None, bool(context["worker"].result.found))

        context = logic.startSegmentation(slicer.mrmlScene, volume, device="cpu")
        context["worker"].cancel()
        context["worker"].wait(60)
        self.assertIsInstance(context["worker"].error, Cancelled)
        self.delayDisplay("Background run and cancel passed")
