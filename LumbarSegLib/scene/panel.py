"""What the Slicer module's panel shows and does, decided without Qt.

The widget in ``LumbarSeg/LumbarSeg.py`` is bindings only. Slicer's ``connectGui`` ties the ``.ui``'s widgets
to the parameter node by their ``SlicerParameterName`` property (:data:`CONNECTED` lists them); the choices
are the enums below, whose ``label`` is what the combo box shows. The widget shows the texts and states these
functions return. Widgets and the parameter node are duck-typed here, so the tests drive all of it with
stand-ins (Testing/test_slicer_widget.py).
"""

from __future__ import annotations

import enum
import os


class _Choice(str, enum.Enum):
    """A combo box's choice: its value is what the engine takes; ``label()`` is what the box shows (Slicer's
    connectGui fills the box from the enum, in this order)."""

    def label(self) -> str:
        return tr(self._labels()[self.value])


class Device(_Choice):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"

    @staticmethod
    def _labels():
        return {"auto": "Auto", "cpu": "CPU", "cuda": "CUDA"}


class ModelMode(_Choice):
    bundled = "bundled"
    file = "file"

    @staticmethod
    def _labels():
        return {"bundled": "Bundled model", "file": "Model file..."}


class RoiMode(_Choice):
    auto = "auto"
    always = "always"
    never = "never"

    @staticmethod
    def _labels():
        return {"auto": "Use the ROI once I move or draw it", "always": "Always use the ROI",
                "never": "Always locate the spine automatically"}


# The widgets connectGui ties to the parameter node (their SlicerParameterName in the .ui names the field).
# The model file's line edit is not among them: connectGui reads a path as pathlib.Path, whose empty value is
# ".", and writing it would wipe the path ctkPathLineEdit remembers between sessions (its settingKey); the
# widget copies that one itself (:func:`show_model_path`).
CONNECTED = {
    "inputVolumeSelector": "inputVolume",
    "referenceSegmentationSelector": "referenceSegmentation",
    "outputSegmentationSelector": "outputSegmentation",
    "deviceComboBox": "device",
    "modelComboBox": "modelMode",
    "roiModeComboBox": "roiMode",
    "smoothingSliderWidget": "smoothing",
}

# Buttons and the widget method each one's clicked(bool) calls.
BUTTONS = {
    "applyButton": "onApplyButton", "cancelButton": "onCancelButton",
    "installDependenciesButton": "onInstallDependencies", "recomputeMetricsButton": "onRecomputeMetrics",
    "editButton": "onEditButton", "exportStlButton": "onExportStl", "exportLabelmapButton": "onExportLabelmap",
    "copyDiagnosticsButton": "onCopyDiagnostics",
}
RESULT_BUTTONS = ("recomputeMetricsButton", "editButton", "exportStlButton", "exportLabelmapButton")


def tr(text: str) -> str:
    """Slicer's translation of ``text`` (Slicer >= 5.4), else the text itself."""
    try:
        from slicer.i18n import tr as slicer_tr
    except ImportError:
        return text
    return slicer_tr(text)


def show_model_path(parameters, ui) -> None:
    """The model file's line edit: enabled for "Model file...", and showing the parameter node's path (an
    empty one leaves the path the line edit remembers)."""
    use_file = parameters.modelMode == ModelMode.file
    ui.modelPathLineEdit.setEnabled(use_file)
    ui.modelPathLabel.setEnabled(use_file)
    if parameters.modelPath and ui.modelPathLineEdit.currentPath != parameters.modelPath:
        ui.modelPathLineEdit.currentPath = parameters.modelPath


def choose_input_volume(parameters, scene) -> None:
    """With no CT chosen yet, take the scene's first scalar volume that is not a label map."""
    if parameters.inputVolume is None:
        nodes = scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
        volumes = [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]
        parameters.inputVolume = next((v for v in volumes if not v.IsA("vtkMRMLLabelMapVolumeNode")), None)


def model_path(parameters):
    """The model file the user chose, or None for the bundled model."""
    if parameters is not None and parameters.modelMode == ModelMode.file and parameters.modelPath:
        return parameters.modelPath
    return None


def button_states(has_volume: bool, has_segmentation: bool, running: bool) -> dict:
    """{button: enabled} and the Segment button's tooltip (under "applyButton.toolTip")."""
    states = {"applyButton": has_volume and not running, "cancelButton": running,
              "applyButton.toolTip": tr("Locate the lumbar spine, crop, and segment L1-L5.") if has_volume
              else tr("Select a CT volume first.")}
    states.update({name: has_segmentation and not running for name in RESULT_BUTTONS})
    return states


def show_button_states(ui, parameters, running: bool) -> None:
    """Enable the buttons that can act now (:func:`button_states`)."""
    states = button_states(parameters is not None and parameters.inputVolume is not None,
                           parameters is not None and parameters.outputSegmentation is not None, running)
    ui.applyButton.toolTip = states.pop("applyButton.toolTip")
    for name, enabled in states.items():
        getattr(ui, name).enabled = enabled


def dependency_status(missing, problem) -> str:
    """The text above the install button ("" when everything is installed: the button is hidden then)."""
    if not missing and not problem:
        return ""
    return ((problem or "") + " " + tr(
        "Missing Python packages: {packages}. Click the button below to install them through the PyTorch "
        "extension (about 200 MB for CPU, 2+ GB with CUDA).").format(packages=", ".join(missing) or "-")).strip()


def apply_outcome(outcome, parameters) -> None:
    """A finished run's nodes into the parameter node (what it did not make stays as it was)."""
    for field, node in (("outputSegmentation", outcome.segmentation_node), ("cropROI", outcome.roi_node),
                        ("metricsTable", outcome.metrics_table)):
        if node is not None:
            setattr(parameters, field, node)


def show_dependency_status(ui, missing, problem) -> None:
    """The dependency line and the install button, shown (the Advanced section opened) only when needed."""
    text = dependency_status(missing, problem)
    ui.dependencyStatusLabel.text = text
    ui.installDependenciesButton.visible = bool(text)
    if text:
        ui.advancedCollapsibleButton.collapsed = False


def install_question(requirement: str) -> str:
    return tr("LumbarSeg needs PyTorch ({requirement}). It is installed by the PyTorch extension, which picks "
              "the build that fits your GPU driver (or the CPU build). The bundled model runs in seconds on a CPU, "
              "so a GPU is optional.\n\nInstall now? The download can take several minutes; Slicer stays usable "
              "and the Log section shows the progress.").format(requirement=requirement)


def run_problem(parameters) -> str | None:
    """Why Segment cannot start with these parameters (shown as an error), or None."""
    if parameters.inputVolume is None:
        return tr("No volume selected: choose a CT volume in 'CT volume'.")
    if parameters.modelMode == ModelMode.file and not os.path.isfile(parameters.modelPath or ""):
        return tr("Choose an existing model file (.pt), or select 'Bundled model'.")
    return None


def start_text(job) -> str:
    return tr("Using your crop box (the localizer is skipped)...") if job.box_lps else tr("Starting...")


def progress_percent(event) -> int:
    return int(round(100 * event.overall))


def ask_keep_edits(qt, parent, segmentation_name: str):
    """Ask, before a run into an edited segmentation, whether to keep the edits (the result goes to a new
    segmentation: returns False) or overwrite them (True); None: cancelled. ``qt`` is Slicer's Qt module."""
    box = qt.QMessageBox(parent)
    box.setWindowTitle("LumbarSeg")
    box.setText(tr("'{name}' was edited since LumbarSeg created it.").format(name=segmentation_name))
    box.setInformativeText(tr("Keep your edits and put the new result in a new segmentation?"))
    keep = box.addButton(tr("New segmentation (keep edits)"), qt.QMessageBox.AcceptRole)
    overwrite = box.addButton(tr("Overwrite"), qt.QMessageBox.DestructiveRole)
    box.addButton(qt.QMessageBox.Cancel)
    box.setDefaultButton(keep)
    box.exec_()
    clicked = box.clickedButton()
    return True if clicked == overwrite else False if clicked == keep else None


CANCELLED = "Cancelled. Nothing was changed."
DIAGNOSTICS_COPIED = "Diagnostics copied to the clipboard: paste them into your bug report."


def remember_export_folder(parameters, directory) -> None:
    """Only a folder the user picked is remembered: a directory button says "." until then."""
    from .export import chosen_folder

    chosen = chosen_folder(directory)
    if parameters is not None and chosen is not None:
        parameters.exportFolder = str(chosen)


def export_folder(chosen, app=None):
    """Where exports go: the folder the user chose, else Slicer's default scene folder. A directory button's
    "." (nothing chosen yet) is never used."""
    from .export import chosen_folder, default_export_folder

    return chosen_folder(chosen) or default_export_folder(app)
