"""The two-stage inference pipeline: localize the lumbar spine, crop, segment L1-L5, post-process.

Every result is written back on the input's own grid. ``segment`` takes a SimpleITK image (already
read and validated by :mod:`LumbarSegLib.io`) so the CLI, the tests and the Slicer module share it.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from . import preprocess
from .constants import LABEL_NAMES, NUM_CLASSES
from .errors import Cancelled, InputError
from .models import LumbarSegModel, load_model, resolve_device

# Below this heatmap peak the localizer saw no lumbar spine (a trained localizer peaks near 1 on one).
MIN_HEATMAP_PEAK = 0.35
# A vertebra whose largest piece is smaller than this is not reported. A whole lumbar vertebra is 25-90 mL
# (about 1-2 mL per mm of its height), so 8 mL is the last 5-7 mm of one at the edge of the field of view,
# too little to name or to plan on. The real thoracic series in ../shared (T11/T12, no lumbar vertebra)
# drew lumbar pieces of 0.1-4 mL from the networks trained with real CT; whole vertebrae are never that small.
MIN_VERTEBRA_ML = 8.0
# Vertebrae are solid: the network's uncertain voxels inside cancellous bone leave pits and holes in a
# vertebra that a closing of this radius and a 3D hole fill close (into background voxels only).
CLOSING_MM = 2.0


@dataclass
class SegmentationResult:
    labels: sitk.Image  # uint8 on the input's grid: 0 background, 1..5 = L1..L5
    found: list[str]
    box_index: tuple | None  # (lo, hi) voxel indices (x, y, z) in the canonical LPS image, hi exclusive
    box_lps: tuple | None  # (min_xyz, max_xyz) physical LPS bounds of the crop box, mm
    heatmap_peak: float
    timings: dict[str, float] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    trained: bool = True
    device: str = ""  # where the networks actually ran ("cpu" after a GPU out-of-memory fallback)


class _Stages:
    """Times stages, reports progress and honours cancellation between (and inside) stages."""

    def __init__(self, progress, cancel):
        self.progress, self.cancel, self.timings = progress, cancel, {}
        self._name, self._t0 = None, 0.0

    def check(self):
        if self.cancel is not None and self.cancel():
            raise Cancelled("Segmentation cancelled by the user.")

    def start(self, name: str):
        self.finish()
        self.check()
        self._name, self._t0 = name, time.perf_counter()
        if self.progress:
            self.progress(name, 0.0)

    def finish(self):
        if self._name is not None:
            self.timings[self._name] = time.perf_counter() - self._t0
            if self.progress:
                self.progress(self._name, 1.0)
            self._name = None


def index_box_to_lps(image: sitk.Image, lo, hi) -> tuple[tuple, tuple]:
    """Axis-aligned LPS bounds (mm) of the voxel box [lo, hi), measured at the voxels' outer faces."""
    lo, hi = np.asarray(lo, float) - 0.5, np.asarray(hi, float) - 0.5
    corners = [image.TransformContinuousIndexToPhysicalPoint([(lo, hi)[bx][0], (lo, hi)[by][1], (lo, hi)[bz][2]])
               for bx in (0, 1) for by in (0, 1) for bz in (0, 1)]
    corners = np.asarray(corners)
    return tuple(corners.min(axis=0).tolist()), tuple(corners.max(axis=0).tolist())


def lps_box_to_index(image: sitk.Image, box_lps) -> tuple[np.ndarray, np.ndarray]:
    """Voxel box [lo, hi) of ``image`` covering LPS bounds (min_xyz, max_xyz), clipped to the image."""
    mn, mx = (np.asarray(v, float) for v in box_lps)
    if mn.shape != (3,) or mx.shape != (3,) or not np.all(np.isfinite([mn, mx])) or np.any(mx <= mn):
        raise InputError(f"Crop box {box_lps} is not a valid (min_xyz, max_xyz) box in mm.")
    corners = [image.TransformPhysicalPointToContinuousIndex([(mn, mx)[bx][0], (mn, mx)[by][1], (mn, mx)[bz][2]])
               for bx in (0, 1) for by in (0, 1) for bz in (0, 1)]
    corners = np.asarray(corners)
    size = np.asarray(image.GetSize())
    lo = np.clip(np.floor(corners.min(axis=0) + 0.5), 0, size).astype(int)
    hi = np.clip(np.ceil(corners.max(axis=0) + 0.5), 0, size).astype(int)
    if np.any(hi - lo < 2):
        raise InputError(f"Crop box {box_lps} lies outside the image or is thinner than 2 voxels.")
    return lo, hi


def run_localizer(canonical: sitk.Image, model: LumbarSegModel, device: torch.device) -> np.ndarray:
    x = preprocess.localizer_input(canonical, model.config)
    with torch.inference_mode():
        heat = model.localizer(torch.from_numpy(x)[None, None].to(device))
    return heat[0, 0].float().cpu().numpy()


def run_xunet(canonical: sitk.Image, lo, hi, model: LumbarSegModel, device: torch.device) -> np.ndarray:
    """Labels (z, y, x) uint8 of the box [lo, hi) at the canonical image's resolution."""
    x = preprocess.crop_input(canonical, lo, hi, model.config)
    with torch.inference_mode():
        probs = torch.softmax(model.xunet(torch.from_numpy(x)[None, None].to(device)), dim=1)[0].float().cpu()
        return preprocess.probabilities_to_labels(probs, np.asarray(hi) - np.asarray(lo))


def clean_labels(labels: np.ndarray, spacing_xyz, messages: list[str], context_classes=()) -> np.ndarray:
    """Keep each vertebra's largest connected piece; drop islands and slivers; name the vertebrae in order.

    ``labels`` is (z, y, x) in LPS orientation (a larger z index is more superior) with 0 background,
    1..5 L1..L5 and, after them, the model's ``context_classes`` (networks.CONTEXT_CLASSES), which are
    used to anchor the names (:func:`anchor_names`) and then folded into background.
    """
    voxel_ml = float(np.prod(spacing_xyz)) / 1000.0
    min_voxels = max(1, int(MIN_VERTEBRA_ML / voxel_ml))
    out = np.zeros_like(labels)
    extents = {}  # label -> (lowest z, centroid z, highest z) of its kept piece
    radius = np.maximum(np.round(CLOSING_MM / np.asarray(spacing_xyz, float)[::-1]).astype(int), 1)  # (z, y, x)
    objects = ndimage.find_objects(labels, max_label=NUM_CLASSES - 1)
    for label, region in enumerate(objects, start=1):
        if region is None:
            continue
        mask = preprocess.largest_component(labels[region] == label)
        if mask.sum() < min_voxels:
            continue
        out[region][mask] = label
        _close_and_fill(out, labels, label, region, radius)
        zs = np.flatnonzero(mask.any(axis=(1, 2))) + region[0].start
        extents[label] = (zs[0], ndimage.center_of_mass(mask)[0] + region[0].start, zs[-1])
    # Anatomical order: L1 must be the most superior. If the network swapped identities, keep its set of
    # labels but hand them out again from superior to inferior.
    by_height = sorted(extents, key=lambda lab: -extents[lab][1])
    remap = np.arange(NUM_CLASSES, dtype=np.uint8)
    if by_height != sorted(extents):
        messages.append("Vertebra identities were out of anatomical order (" +
                        ", ".join(LABEL_NAMES[lab] for lab in by_height) + " from superior to inferior); "
                        "they were renumbered from superior to inferior. Check the labels.")
        for new, old in zip(sorted(extents), by_height):
            remap[old] = new
        extents = {int(remap[old]): ext for old, ext in extents.items()}
    shift = anchor_names(labels, extents, spacing_xyz, context_classes, min_voxels, messages)
    if shift:
        remap = np.where(remap > 0, remap.astype(int) + shift, 0).astype(np.uint8)
    return remap[out]


def _close_and_fill(out: np.ndarray, labels: np.ndarray, label: int, region, radius) -> None:
    """Close ``label``'s kept piece in ``out`` (ellipsoid of ``radius`` voxels) and fill its enclosed holes,
    in place, taking only voxels the network called background."""
    box = tuple(slice(max(r.start - k, 0), min(r.stop + k, n)) for r, k, n in zip(region, radius, labels.shape))
    mask = out[box] == label
    zz, yy, xx = np.ogrid[tuple(slice(-k, k + 1) for k in radius)]
    ball = (zz / radius[0]) ** 2 + (yy / radius[1]) ** 2 + (xx / radius[2]) ** 2 <= 1.0
    solid = ndimage.binary_fill_holes(ndimage.binary_closing(mask, structure=ball, border_value=0))
    out[box][solid & (labels[box] == 0) & (out[box] == 0)] = label


# A context vertebra (thoracic above, sacrum/L6 below) this close to the end of the lumbar column counts as
# its neighbour: intervertebral discs are 5-15 mm high, the predicted surfaces a few mm off.
ANCHOR_GAP_MM = 20.0


def anchor_names(labels: np.ndarray, extents: dict, spacing_xyz, context_classes, min_voxels: int,
                 messages: list[str]) -> int:
    """The shift of the lumbar names that the neighbouring context vertebrae call for (0: none).

    The network names each vertebra from its looks and its place in the crop; on a partial scan the place
    misleads. Its context classes see the neighbours by their own features: a thoracic vertebra (ribs) right
    above the top lumbar vertebra makes that vertebra L1; a sacrum (or L6) right below the lowest makes it
    L5. When both anchors are seen they must agree, and a shift must keep every name within L1..L5;
    otherwise the names stay as predicted and a message says why.
    """
    if not extents or not context_classes:
        return 0
    sz = float(spacing_xyz[2])
    first, last = min(extents), max(extents)  # in anatomical order: the most superior and most inferior
    wanted = {}
    for k, name in enumerate(context_classes, start=NUM_CLASSES):
        mask = labels == k
        if mask.sum() < min_voxels:
            continue
        zs = np.flatnonzero(mask.any(axis=(1, 2)))
        if name == "thoracic":
            # thoracic voxels above the top lumbar vertebra's centroid, ending near its upper edge
            above = zs[zs > extents[first][1]]
            if above.size and (above[0] - extents[first][2]) * sz <= ANCHOR_GAP_MM:
                wanted[name] = 1 - first
        elif name == "caudal":
            below = zs[zs < extents[last][1]]
            if below.size and (extents[last][0] - below[-1]) * sz <= ANCHOR_GAP_MM:
                wanted[name] = 5 - last
    shifts = {v for v in wanted.values() if v}
    if not shifts:
        return 0
    names = ", ".join(LABEL_NAMES[lab] for lab in sorted(extents))
    if len(set(wanted.values())) > 1:
        messages.append(f"The vertebra names ({names}) disagree with both neighbours (a thoracic vertebra above "
                        "and the sacrum below call for different names); they were kept. Check the labels.")
        return 0
    shift = shifts.pop()
    if first + shift < 1 or last + shift > 5:
        messages.append(f"The vertebra names ({names}) disagree with the {' and '.join(wanted)} neighbour(s), "
                        "but renaming would leave L1-L5; they were kept. Check the labels.")
        return 0
    new = ", ".join(LABEL_NAMES[lab + shift] for lab in sorted(extents))
    neighbour = " and ".join({"thoracic": "the thoracic vertebra above", "caudal": "the sacrum below"}[n]
                             for n in wanted)
    messages.append(f"Vertebrae renamed {names} -> {new} to follow {neighbour}. Check the labels.")
    return shift


def segment(image: sitk.Image, model: LumbarSegModel | None = None, device: str = "auto", box_lps=None,
            progress=None, cancel=None) -> SegmentationResult:
    """Segment L1-L5 in a CT (HU). ``box_lps`` = (min_xyz, max_xyz) in LPS mm skips the localizer.

    ``progress(stage, fraction)`` is called as stages start and end; ``cancel()`` returning True stops
    the run with :class:`Cancelled` at the next check. When the GPU runs out of memory the whole run is
    repeated on the CPU and the result's first message says so (``result.device`` is then "cpu").
    """
    stages = _Stages(progress, cancel)
    stages.start("load")
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64) and \
            not np.isfinite(sitk.GetArrayViewFromImage(image)).all():
        # NaN makes every network output NaN and the run would end in a confident "no lumbar spine".
        raise InputError("The image holds NaN or infinite voxels; prepare it with io.prepare_ct (which sets "
                         "them to air and says so) before segmenting.")
    torch_device = resolve_device(device)
    model = model or load_model()
    try:
        return _segment_on(image, _model_on(model, torch_device), torch_device, box_lps, stages)
    except torch.cuda.OutOfMemoryError as exc:
        if torch_device.type == "cpu":
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "out of memory"
        del exc  # drop the traceback's references to the GPU tensors before freeing the cache
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        stages.start("load")
        cpu = torch.device("cpu")
        result = _segment_on(image, _model_on(model, cpu), cpu, box_lps, stages)
        result.messages.insert(0, f"The GPU ({torch_device}) ran out of memory ({reason}); the segmentation was "
                                  "run again on the CPU, which is slower but gives the same result.")
        return result


def _model_on(model: LumbarSegModel, device: torch.device) -> LumbarSegModel:
    """``model`` on ``device``. A CPU model is copied to another device, not moved, so that it is still
    there (with its weights) for a CPU rerun after an out-of-memory error and for the next caller."""
    current = next(model.localizer.parameters()).device
    if current.type == "cpu" and device.type != "cpu":
        return copy.deepcopy(model).to(device)
    return model.to(device)  # also puts the networks in eval mode


def _segment_on(image: sitk.Image, model: LumbarSegModel, torch_device: torch.device, box_lps,
                stages: _Stages) -> SegmentationResult:
    messages: list[str] = []
    if not model.trained:
        messages.append("WARNING: running with randomly initialised weights (no trained model found); "
                        "the segmentation is meaningless.")
    canonical = preprocess.to_canonical(image)
    size = np.asarray(canonical.GetSize())

    peak = float("nan")
    if box_lps is None:
        stages.start("localize")
        heatmap = run_localizer(canonical, model, torch_device)
        peak = float(heatmap.max())
        box = preprocess.heatmap_box(heatmap, size) if peak >= MIN_HEATMAP_PEAK else None
    else:
        box = lps_box_to_index(canonical, box_lps)
        messages.append("Used the given crop box; the localizer was skipped.")

    labels_canonical = np.zeros(canonical.GetSize()[::-1], dtype=np.uint8)
    if box is not None:
        lo, hi = box
        stages.start("segment")
        box_labels = run_xunet(canonical, lo, hi, model, torch_device)
        stages.start("postprocess")
        box_labels = clean_labels(box_labels, canonical.GetSpacing(), messages, model.config.context_classes)
        labels_canonical[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] = box_labels
    else:
        stages.start("postprocess")

    found = [LABEL_NAMES[lab] for lab in sorted(set(np.unique(labels_canonical).tolist()) - {0})]
    if not found:
        messages.append("No lumbar spine found in this image: no L1-L5 vertebra was detected "
                        "(e.g. a thoracic-only or non-spine field of view).")
    elif len(found) < 5:
        missing = [n for n in LABEL_NAMES.values() if n not in found]
        messages.append(f"Partial field of view: found {', '.join(found)}; not found: {', '.join(missing)}.")

    out = sitk.GetImageFromArray(labels_canonical)
    out.CopyInformation(canonical)
    if out.GetDirection() != image.GetDirection() or out.GetSize() != image.GetSize():
        # A pure axis permutation/flip: nearest-neighbour resampling onto the input grid is exact.
        out = sitk.Resample(out, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    stages.finish()

    box_index = box_lps_out = None
    if box is not None:
        box_index = (tuple(int(v) for v in box[0]), tuple(int(v) for v in box[1]))
        box_lps_out = index_box_to_lps(canonical, *box)
    return SegmentationResult(out, found, box_index, box_lps_out, peak, stages.timings, messages, model.trained,
                              str(torch_device))
