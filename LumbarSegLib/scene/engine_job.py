"""A segmentation of a volume node by the command line in a subprocess (:mod:`LumbarSegLib.study.engine_process`).

:func:`start_job` reads the scene on the calling (main) thread - the CT as a file the subprocess can read,
the user's crop box if one is to be used - and starts ``lumbarseg segment`` in a private work folder. The
GUI's timer calls ``job.process.poll()``; :func:`finish_job` then puts the result into the scene on the main
thread with the same functions as always (:func:`.run.apply_result`: segments, ROI; the module adds the
metrics table), and :func:`cancel_job` ends the process. Nothing touches the scene before
:func:`finish_job`, so a cancelled or failed run leaves the scene as it was; the work folder is removed
either way.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..study.engine_process import EngineProcess, EngineResult
from ..errors import Cancelled, LumbarSegError
from .provenance import record_provenance
from .metrics_table import (add_naming_rows, add_trabecular_rows, compute_metrics, fill_metrics_table,
                            rows_from_measurements)
from .roi import box_for_run, find_crop_roi
from .segments import DEFAULT_SMOOTHING, segmentation_content_hash
from .volumes import volume_lps_geometry, volume_node_to_sitk

# Files the command reads that Slicer also writes; a volume loaded from one of them is handed over as it is.
READABLE_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
INPUT_NAME = "input_ct.nrrd"


class EngineRunError(LumbarSegError):
    """The command failed; the message is its one-line error (e.g. the CT is not in Hounsfield units)."""


@dataclass
class EngineJob:
    """What :func:`finish_job` needs after the process ended (the scene is not read again)."""

    process: EngineProcess
    work_dir: Path
    ct_path: Path  # the CT file the command reads (the volume's own file, or a temporary one in work_dir)
    volume_node: object
    segmentation_node: object
    roi_node: object
    box_lps: tuple | None  # the user's crop box, or None (the localizer's)
    overwrite: bool | str  # the agreement to overwrite an edited segmentation (see run.apply_result)
    smoothing: float
    settings: dict = field(default_factory=dict)  # recorded as provenance


def _corner_centres(size, spacing, origin, direction) -> np.ndarray:
    """The physical (LPS) centres of a grid's 8 corner voxels."""
    axes = np.asarray(direction, float).reshape(3, 3) @ np.diag(np.asarray(spacing, float))
    corners = np.array([[i, j, k] for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)])
    return np.asarray(origin, float) + corners @ axes.T


def _same_geometry(path: Path, volume_node) -> bool:
    """The file's header describes the node's voxel grid in physical space: the same voxel centres, maybe
    stored in another axis order or direction (Slicer's reader flips some files' slice order)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return False
    image_data = volume_node.GetImageData()
    if reader.GetDimension() != 3 or reader.GetNumberOfComponents() != 1 or image_data is None:
        return False
    spacing, origin, direction = volume_lps_geometry(volume_node)
    size = image_data.GetDimensions()
    if sorted(zip(reader.GetSize(), np.round(reader.GetSpacing(), 5))) != sorted(zip(size, np.round(spacing, 5))):
        return False
    file_corners = _corner_centres(reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())
    node_corners = _corner_centres(size, spacing, origin, direction)
    distances = np.linalg.norm(file_corners[:, None, :] - node_corners[None, :, :], axis=2)
    return bool((distances.min(axis=1) < 1e-3).all() and (distances.min(axis=0) < 1e-3).all())


def unmodified_source_file(volume_node) -> Path | None:
    """The file the volume was read from, when the command can read it and the node still holds exactly it
    (not modified since read, same grid in the header); else None."""
    storage = volume_node.GetStorageNode()
    name = storage.GetFileName() if storage is not None else None
    if not name or volume_node.GetModifiedSinceRead():
        return None
    path = Path(name)
    if not path.is_file() or not path.name.lower().endswith(READABLE_SUFFIXES):
        return None
    return path if _same_geometry(path, volume_node) else None


def input_ct_file(volume_node, folder) -> Path:
    """A file holding the volume for the command: its own file when that is unchanged (no copy), else the
    voxels written to ``folder/input_ct.nrrd`` with the node's geometry (its local frame, LPS header)."""
    source = unmodified_source_file(volume_node)
    if source is not None:
        return source
    path = Path(folder) / INPUT_NAME
    sitk.WriteImage(volume_node_to_sitk(volume_node), str(path), useCompression=False)
    return path


def start_job(scene, volume_node, *, segmentation_node=None, roi_mode: str = "auto", device: str = "auto",
              model_path=None, overwrite_edited: bool = False, smoothing: float = DEFAULT_SMOOTHING,
              python: str | None = None, launcher=None) -> EngineJob:
    """Start ``lumbarseg segment`` on ``volume_node`` (its crop ROI is used as the box per ``roi_mode``).

    Raises :class:`errors.InputError` at once for what the scene already shows to be wrong (no volume, no
    voxels); everything the command checks (a CT not in HU, a crop box outside the CT, ...) is reported by
    the process as its one-line error (:func:`finish_job`).
    """
    from ..errors import InputError

    if volume_node is None:
        raise InputError("No input volume selected: choose a CT volume.")
    roi_node = find_crop_roi(scene, volume_node)
    box = box_for_run(roi_node, volume_node, roi_mode or "auto")
    # Overwriting is agreed for the segmentation as it is now; edits made during the run are kept.
    overwrite = (segmentation_content_hash(segmentation_node)
                 if overwrite_edited and segmentation_node is not None else False)
    work_dir = Path(tempfile.mkdtemp(prefix="LumbarSeg-"))
    try:
        ct_path = input_ct_file(volume_node, work_dir)
        process = EngineProcess(ct_path, work_dir / "result", device=device or "auto",
                                model=str(model_path) if model_path else None, crop_box_lps=box,
                                python=python, launcher=launcher).start()
    except BaseException:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise
    settings = {"device_requested": device or "auto", "roi_mode": roi_mode,
                "crop_box": "user" if box else "localizer", "smoothing": smoothing,
                "model_path": str(model_path) if model_path else None}
    return EngineJob(process, work_dir, ct_path, volume_node, segmentation_node, roi_node, box, overwrite,
                     smoothing, settings)


def result_from_output(engine_result: EngineResult):
    """The command's result folder as an engine :class:`pipeline.SegmentationResult` for the scene; its
    messages are the report's (input notes such as NaN voxels, plausibility warnings, ...)."""
    from ..inference.pipeline import SegmentationResult

    report = engine_result.report
    box = report.get("crop_box") or {}
    box_lps = ((tuple(box["lps_min_mm"]), tuple(box["lps_max_mm"]))
               if box.get("lps_min_mm") and box.get("lps_max_mm") else None)
    if box.get("canonical_index_lo_xyz"):  # the engine's own (internal) grid, as SegmentationResult holds it
        box_index = (tuple(box["canonical_index_lo_xyz"]), tuple(box["canonical_index_hi_xyz"]))
    elif box.get("index_lo_xyz") and "canonical" in str(box.get("index_space", "")):  # an older report
        box_index = (tuple(box["index_lo_xyz"]), tuple(box["index_hi_xyz"]))
    else:
        box_index = None
    messages = list(report.get("messages", []))
    peak = report.get("heatmap_peak")
    labels = sitk.ReadImage(str(engine_result.labels_path))
    return SegmentationResult(labels, list(report.get("found", [])), box_index, box_lps,
                              float("nan") if peak is None else float(peak),
                              {k: float(v) for k, v in (report.get("timings_s") or {}).items()}, messages,
                              bool((report.get("model") or {}).get("trained", True)), str(report.get("device", "")))


def finish_job(scene, job: EngineJob, reference_node=None, table_node=None):
    """After the process ended: its result into the scene (main thread) - segments, surfaces, ROI, the
    report's provenance on the segmentation (:func:`.provenance.record_provenance`) and the metrics table
    (``table_node`` reused when given), with how each vertebra's level was decided (the report's ``naming``). Returns (result, ApplyOutcome).

    The table is filled from the report's measurements: the command measured the same voxels on the same CT,
    so they are not measured again; with a ``reference_node`` (agreement metrics) they are computed here.
    Raises :class:`errors.Cancelled` for a cancelled run and :class:`EngineRunError` with the command's
    one-line error for a failed one; the scene is then unchanged. The work folder is removed in all cases.
    """
    from .run import apply_result

    process = job.process
    try:
        if process.running:
            raise RuntimeError("The segmentation process is still running.")
        if process.state == "cancelled":
            raise Cancelled(process.error)
        if process.state != "done":
            message = process.error or "The segmentation process failed."
            if job.ct_path.parent == job.work_dir:  # the user never saw that temporary file: name the volume
                message = message.replace(str(job.ct_path), f"The volume '{job.volume_node.GetName()}'")
            raise EngineRunError(message)
        result = result_from_output(process.result)
        outcome = apply_result(scene, job.volume_node, result, job.segmentation_node, job.roi_node,
                               overwrite_edited=job.overwrite, smoothing=job.smoothing, user_box_lps=job.box_lps,
                               check_plausibility=False)
        if outcome.segmentation_node is not None and result.found:
            record_provenance(outcome.segmentation_node, process.result.report.get("provenance") or {},
                              job.settings, result)
            rows = (compute_metrics(outcome.segmentation_node, job.volume_node, reference_node)
                    if reference_node is not None else
                    add_trabecular_rows(rows_from_measurements(process.result.report.get("measurements") or {}),
                                        outcome.segmentation_node, job.volume_node))
            add_naming_rows(rows, process.result.report)  # how each level was decided, as the report says
            outcome.metrics_table = fill_metrics_table(scene, rows, table_node, volume_node=job.volume_node,
                                                       name=outcome.segmentation_node.GetName() + " metrics")
    finally:
        if not process.running:
            shutil.rmtree(job.work_dir, ignore_errors=True)
    return result, outcome


def cancel_job(job: EngineJob) -> None:
    """End the process (and its children) and remove the work folder; the scene was never touched."""
    job.process.cancel()
    shutil.rmtree(job.work_dir, ignore_errors=True)
