"""What the Slicer module's panel shows and does, decided without Qt.

The widget in ``LumbarSeg/LumbarSeg.py`` is bindings only: it connects the ``.ui``'s widgets by the tables
below, copies values between them and the parameter node with :func:`parameters_to_gui` /
:func:`gui_to_parameters`, and shows the texts and states these functions return. Widgets and the
parameter node are duck-typed here, so the tests drive all of it with stand-ins (Testing/test_slicer_module.py).
"""

from __future__ import annotations

import os

DEVICES = ["auto", "cpu", "cuda"]  # deviceComboBox order
ROI_MODES = ["auto", "always", "never"]  # roiModeComboBox order
MODEL_MODES = ["bundled", "file"]  # modelComboBox order

# (widget in the .ui, parameter node field, how the value is read): "node" a qMRMLNodeComboBox, "path" a
# ctkPathLineEdit, "value" a slider, a list a QComboBox whose index picks from that list.
BINDINGS = [
    ("inputVolumeSelector", "inputVolume", "node"),
    ("referenceSegmentationSelector", "referenceSegmentation", "node"),
    ("outputSegmentationSelector", "outputSegmentation", "node"),
    ("deviceComboBox", "device", DEVICES),
    ("modelComboBox", "modelMode", MODEL_MODES),
    ("roiModeComboBox", "roiMode", ROI_MODES),
    ("modelPathLineEdit", "modelPath", "path"),
    ("smoothingSliderWidget", "smoothing", "value"),
]
SIGNALS = {"node": "currentNodeChanged(vtkMRMLNode*)", "path": "currentPathChanged(QString)",
           "value": "valueChanged(double)", "choice": "currentIndexChanged(int)"}

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


def signal(kind) -> str:
    return SIGNALS["choice" if isinstance(kind, list) else kind]


def parameters_to_gui(parameters, ui) -> None:
    """Show the parameter node's values in the widgets (an empty model path leaves the line edit as it is)."""
    for widget_name, field, kind in BINDINGS:
        widget, value = getattr(ui, widget_name), getattr(parameters, field)
        if kind == "node":
            widget.setCurrentNode(value)
        elif kind == "path":
            if value:
                widget.currentPath = value
        elif kind == "value":
            widget.value = value
        else:
            widget.setCurrentIndex(kind.index(value))
    use_file = parameters.modelMode == "file"
    ui.modelPathLineEdit.setEnabled(use_file)
    ui.modelPathLabel.setEnabled(use_file)


def gui_to_parameters(ui, parameters) -> set:
    """Copy the widgets' values into the parameter node; returns the names of the fields that changed."""
    changed = set()
    for widget_name, field, kind in BINDINGS:
        widget = getattr(ui, widget_name)
        if kind == "node":
            value = widget.currentNode()
        elif kind == "path":
            value = widget.currentPath or ""
        elif kind == "value":
            value = float(widget.value)
        else:
            value = kind[max(0, widget.currentIndex)]
        if getattr(parameters, field) != value:
            setattr(parameters, field, value)
            changed.add(field)
    return changed


def choose_input_volume(parameters, scene) -> None:
    """With no CT chosen yet, take the scene's first scalar volume that is not a label map."""
    if parameters.inputVolume is None:
        nodes = scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
        volumes = [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]
        parameters.inputVolume = next((v for v in volumes if not v.IsA("vtkMRMLLabelMapVolumeNode")), None)


def model_path(parameters):
    """The model file the user chose, or None for the bundled model."""
    if parameters is not None and parameters.modelMode == "file" and parameters.modelPath:
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
    if parameters.modelMode == "file" and not os.path.isfile(parameters.modelPath or ""):
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
