"""Everything the web page's buttons do, on one MRML scene, without trame (tested headless): the shared
study session (:mod:`LumbarSegLib.scene.session`, as under the Slicer module) plus the page's own parts.

One :class:`StudySession` per server: the CT that is open, the segmentation shown, the run in progress.
Opening reads and validates the CT with the command line's own code (:func:`LumbarSegLib.io.images.load_ct`);
segmenting is the one subprocess runner through :mod:`LumbarSegLib.scene.engine_job` (as in the Slicer
module), so the server's event loop only polls; the result enters the scene through
:func:`LumbarSegLib.scene.run.apply_result`, which never overwrites an edited segmentation unless the user
agreed. Exports are the Slicer module's own (:mod:`LumbarSegLib.scene.export`) and :mod:`LumbarSegLib.io.dicom_seg`.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ..constants import LABEL_COLORS, LABEL_NAMES, RESEARCH_NOTICE
from ..errors import InputError
from ..results.naming_basis import naming_line, naming_rows
from ..scene import session as scene_session
from ..scene.metrics_table import compute_metrics
from ..scene.roi import find_crop_roi
from ..scene.segments import is_user_edited, segmentation_content_hash, segmentation_to_label_array
from ..scene.volumes import label_array_to_sitk, sitk_to_volume_node

SAMPLE_CT = Path(__file__).resolve().parents[2] / "Resources" / "SampleData" / "LumbarSegSampleCT.nrrd"
# Nodes a study puts into the scene; opening another CT removes them (after asking when edits would be lost).
STUDY_NODE_CLASSES = ("vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode", "vtkMRMLMarkupsROINode",
                      "vtkMRMLTableNode")


@dataclass
class OpenedCT:
    path: Path  # the file or DICOM folder on the server (an upload: the server's own copy)
    label: str  # what the page shows (an upload's name, made printable; never used as a path)
    is_dicom: bool
    messages: list[str] = field(default_factory=list)


def hex_color(rgb) -> str:
    return "#" + "".join(f"{round(255 * c):02x}" for c in rgb)


class StudySession(scene_session.StudySession):
    """The web page's study: the shared Qt-free session (:class:`LumbarSegLib.scene.session.StudySession`:
    run, progress, cancel, result into the scene, exports) plus what only the page has - opening a CT
    from a file or an upload, several segmentations to choose from, and downloads made in ``work_dir``."""

    def __init__(self, scene, work_dir, *, device: str = "auto", model=None, python: str | None = None):
        super().__init__(scene, device=device, model=model, python=python)
        self.work_dir = Path(work_dir)
        self.ct: OpenedCT | None = None
        self.volume_node = None
        self.segmentation_node = None
        self.report_hash: str | None = None  # the segmentation's content when the last run put it there
        self.messages: list[str] = []

    # --- opening a CT

    def shown_is_edited(self) -> bool:
        """The segmentation shown was changed by the user since LumbarSeg made it (what a new run would replace)."""
        node = self.segmentation_node
        return node is not None and node.GetScene() is not None and is_user_edited(node)

    def has_edits(self) -> bool:
        """A segmentation of the study was changed by the user since LumbarSeg made it: the one shown, or an
        edited one kept (hidden) when a new run's result went into a new segmentation. Opening another CT
        removes them all, so each one counts (an empty one that holds no segment is nobody's work)."""
        return self.shown_is_edited() or any(
            is_user_edited(node) and node.GetSegmentation().GetNumberOfSegments()
            for node in list(self.scene.GetNodesByClass("vtkMRMLSegmentationNode")))

    def open_ct(self, path, label: str | None = None, *, discard_edits: bool = False):
        """Read and validate ``path`` (file or DICOM folder), replacing the open study. An edited
        segmentation is not thrown away unless ``discard_edits`` (the page asks first)."""
        from ..io import images

        if self.running:
            raise InputError("A segmentation is running; cancel it before opening another CT.")
        if self.has_edits() and not discard_edits:
            raise EditedSegmentation("The segmentation was edited; export it or agree to discard it before "
                                     "opening another CT.")
        path = Path(path)
        label = label or path.name
        try:
            loaded = images.load_ct(path)
        except InputError as exc:  # the server's own path of an upload is not the user's business
            raise InputError(str(exc).replace(str(path), f"'{label}'")) from None
        self.clear()
        self.volume_node = sitk_to_volume_node(self.scene, loaded.image, name=safe_stem(label))
        self.ct = OpenedCT(path, label, path.is_dir(), list(loaded.messages))
        self.messages = list(loaded.messages)
        return self.volume_node

    def clear(self) -> None:
        for class_name in STUDY_NODE_CLASSES:
            for node in list(self.scene.GetNodesByClass(class_name)):
                self.scene.RemoveNode(node)
        self.ct = self.volume_node = self.segmentation_node = None
        self.report = self.report_hash = None
        self.messages = []

    # --- segmenting

    def start(self, *, replace_edited: bool = False):
        """Start the engine on the open CT (its crop ROI as the box once the user moved it). An edited
        segmentation is replaced only with ``replace_edited``; otherwise the result goes into a new one."""
        if self.volume_node is None:
            raise InputError("Open a CT first (the sample CT, a file from the server's folder, or an upload).")
        return super().start(self.volume_node, segmentation_node=self.segmentation_node,
                             replace_edited=replace_edited)

    def poll(self) -> tuple[float, str]:
        """(fraction 0..1, status text) of the run; never blocks."""
        if self.job is None:
            return 0.0, ""
        super().poll()
        return self.job.process.overall, self.job.process.status_text

    def finish(self) -> list[str]:
        """After the process ended: its result into the scene; returns the messages to show. Raises
        :class:`errors.Cancelled` or :class:`engine_job.EngineRunError` (the scene is then unchanged)."""
        outcome = super().finish()
        if outcome.segmentation_node is not None:
            if self.segmentation_node is not None and outcome.segmentation_node is not self.segmentation_node:
                self._hide(self.segmentation_node)  # the edited one, kept as it was
            self.segmentation_node = outcome.segmentation_node
        self.report_hash = (segmentation_content_hash(self.segmentation_node)
                            if self.segmentation_node is not None else None)
        self.messages = list(dict.fromkeys((self.ct.messages if self.ct else []) + outcome.messages))
        return self.messages

    @staticmethod
    def _hide(node) -> None:
        display = node.GetDisplayNode()
        if display is not None:
            display.SetVisibility(False)

    # --- several segmentations (an edited one kept beside a new result)

    def segmentations(self) -> list[dict]:
        """The study's segmentation nodes, newest first: id, name and whether the user edited it."""
        nodes = [n for n in self.scene.GetNodesByClass("vtkMRMLSegmentationNode")]
        return [{"value": n.GetID(), "title": n.GetName() + (" (edited)" if is_user_edited(n) else "")}
                for n in reversed(nodes)]

    def show_segmentation(self, node_id: str):
        """Make ``node_id`` the segmentation shown, measured, edited and exported; the others are hidden."""
        node = self.scene.GetNodeByID(node_id) if node_id else None
        if node is None or not node.IsA("vtkMRMLSegmentationNode"):
            raise InputError("That segmentation is no longer there.")
        for other in self.scene.GetNodesByClass("vtkMRMLSegmentationNode"):
            if other is not node:
                self._hide(other)
        if node.GetDisplayNode() is not None:
            node.GetDisplayNode().SetVisibility(True)
        self.segmentation_node = node
        return node

    def segment_id_of(self, vertebra: str) -> str | None:
        from ..scene.segments import segment_ids_by_vertebra, vertebra_label_from_name

        if self.segmentation_node is None:
            return None
        return segment_ids_by_vertebra(self.segmentation_node).get(vertebra_label_from_name(vertebra))

    # --- what the page shows

    def metrics_rows(self) -> list[dict]:
        """One row per vertebra of the segmentation shown (measured now, so edits count): name, colour,
        volume, height, mean HU, the run's trabecular HU while the segmentation is as the run made it, and how
        the run named its level ("named_by": sacrum / ribs / both / unanchored; "level_check": what to check)."""
        node = self.segmentation_node
        if node is None or node.GetScene() is None or self.volume_node is None:
            return []
        unchanged = self.report_hash is not None and segmentation_content_hash(node) == self.report_hash
        measured_by_run = (self.report or {}).get("measurements", {}) if unchanged else {}
        # how the run named each level (report.json's "naming"), for the run's own segmentation only
        from_run = self.last_outcome is not None and self.last_outcome.segmentation_node is node
        naming = naming_rows(self.report) if from_run else {}
        rows = []
        for name, values in compute_metrics(node, self.volume_node).items():
            label = next((k for k, v in LABEL_NAMES.items() if v == name), None)
            trabecular = (measured_by_run.get(name) or {}).get("trabecular_hu")
            if isinstance(trabecular, dict):  # trabecular.py's {"median": ..., "mean": ..., "reason": ...}
                trabecular = trabecular.get("median", trabecular.get("mean"))
            rows.append({"name": name, "color": hex_color(LABEL_COLORS.get(label, (0.6, 0.6, 0.6))),
                         "volume_ml": _round(values.get("volume_ml"), 1), "height_mm": _round(values.get("height_mm"), 1),
                         "mean_hu": _round(values.get("mean_hu"), 0), "median_hu": _round(values.get("median_hu"), 0),
                         "trabecular_hu": _round(trabecular, 0),
                         "named_by": (naming.get(name) or {}).get("named_by"),
                         "level_check": (naming.get(name) or {}).get("level_check") or ""})
        return rows

    def naming_summary(self) -> str:
        """How the run named the levels of the segmentation shown (the line the console prints), or ""."""
        node = self.segmentation_node
        from_run = self.last_outcome is not None and node is not None and self.last_outcome.segmentation_node is node
        return naming_line(self.report) if from_run else ""

    def model_summary(self) -> str:
        """The provenance line shown under the result (the same line ``lumbarseg segment`` prints)."""
        return self.provenance_line()

    def warnings(self) -> list[str]:
        from ..measures.measurements import plausibility_warnings

        rows = {r["name"]: {"volume_ml": r["volume_ml"], "height_mm": r["height_mm"]} for r in self.metrics_rows()}
        return plausibility_warnings(rows) if rows else []

    # --- exports (files in a fresh folder under the work folder, for the browser to download)

    def _export_dir(self) -> Path:
        if self.segmentation_node is None or self.segmentation_node.GetScene() is None:
            raise InputError("There is no segmentation to export; segment the CT first.")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="export-", dir=self.work_dir))

    def export_stl_zip(self) -> Path:
        """One closed STL surface per vertebra (LPS mm, like the command line's) in a zip."""
        folder = self._export_dir()
        files = self.export_stl(self.segmentation_node, folder / "stl")
        path = folder / f"{self.stem()}_stl.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in files:
                archive.write(file, file.name)
            archive.writestr("NOTICE.txt", RESEARCH_NOTICE + ". Coordinates: LPS, mm.\n")
        shutil.rmtree(folder / "stl", ignore_errors=True)
        return path

    def export_seg_nrrd(self) -> Path:
        folder = self._export_dir()
        return self.export_labelmap(self.segmentation_node, self.volume_node, folder / f"{self.stem()}.seg.nrrd")

    def export_dicom_seg(self) -> Path:
        """A DICOM SEG of the segmentation shown, referencing the opened DICOM series."""
        from ..io.dicom_seg import write_dicom_seg

        if self.ct is None or not self.ct.is_dicom:
            raise InputError("A DICOM SEG needs a DICOM series as the CT (it references its instances); this CT "
                             "was opened from a file. Export .seg.nrrd or STL instead.")
        folder = self._export_dir()
        labels = label_array_to_sitk(segmentation_to_label_array(self.segmentation_node, self.volume_node),
                                     self.volume_node)
        path = write_dicom_seg(labels, self.ct.path, folder / f"{self.stem()}_seg.dcm")
        if path is None:
            raise InputError("The segmentation has no vertebra, so there is no DICOM SEG to write.")
        return path

    def stem(self) -> str:
        return (self.volume_node.GetName() if self.volume_node is not None else "LumbarSeg") or "LumbarSeg"

    def crop_roi(self):
        return find_crop_roi(self.scene, self.volume_node) if self.volume_node is not None else None


class EditedSegmentation(InputError):
    """Opening another CT would throw away a segmentation the user edited."""


def safe_stem(label: str) -> str:
    """A node (and download file) name from a shown label: letters, digits, '-' and '_' only, at most 40."""
    import re

    stem = re.split(r"[\\/]", str(label or ""))[-1].split(".")[0]
    return re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_")[:40] or "CT"


def _round(value, digits: int):
    if value is None:
        return None
    try:
        return round(float(value), digits)
    except (TypeError, ValueError):
        return None
