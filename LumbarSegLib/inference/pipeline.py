"""The two-stage inference pipeline: localize the lumbar spine, crop, segment L1-L5, post-process.

Every result is written back on the input's own grid. ``segment`` takes a SimpleITK image (already
read and validated by :mod:`LumbarSegLib.io`) so the CLI, the tests and the Slicer module share it.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from . import by_vertebra, column, heap, morphology, orientation, preprocess
from . import naming as naming_module
from ..constants import LABEL_NAMES, NUM_CLASSES
from ..errors import Cancelled, InputError, ModelError
from .models import LumbarSegModel, load_model, resolve_device

# Below this heatmap peak the localizer saw no lumbar spine (a trained localizer peaks near 1 on one).
MIN_HEATMAP_PEAK = 0.35
# The sizes of vertebrae reported. A whole adult lumbar vertebra is 25-90 mL (about 1-2 mL per mm of its
# height). At least one piece must reach MIN_VERTEBRA_ML - the last 5-7 mm of an adult vertebra at the edge
# of the field of view - before anything is reported: the real thoracic series in ../shared (T11/T12, no
# lumbar vertebra) drew lumbar pieces of 0.1-4 mL from the networks trained with real CT. The other pieces
# are measured against the vertebrae found, so a child's spine (half the size: an eighth of the volume) keeps
# its vertebrae: each must reach RELATIVE_MIN_VERTEBRA of the median of those that reach MIN_VERTEBRA_ML,
# never less than MIN_SLIVER_ML and never more than MIN_VERTEBRA_ML (an adult's rule stays 8 mL).
MIN_VERTEBRA_ML = 8.0
RELATIVE_MIN_VERTEBRA = 0.25
MIN_SLIVER_ML = 1.0
# Vertebrae are solid: the network's uncertain voxels inside cancellous bone leave pits and holes in a
# vertebra that a closing of this radius and a 3D hole fill close (into background voxels only), on a
# grid bounded in size whatever the spacing (:mod:`morphology`).
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
    refined: bool = False  # stage 3 (one network per vertebra) re-segmented the vertebrae found
    counted: bool = False  # the finder found them and counting named them (:mod:`.by_vertebra`), not the XUNet
    # vertebra name -> how its level was decided: "sacrum", "ribs", "both" or "unanchored" (:mod:`naming`)
    naming: dict[str, str] = field(default_factory=dict)
    # what counting the column warned of (levels to check: transitional anatomy, a missed vertebra, unanchored)
    naming_warnings: list[str] = field(default_factory=list)


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


def check_finite_output(output: torch.Tensor, network: str) -> None:
    """A network output holding NaN or infinity is a broken model (NaN weights, an overflow), never an empty
    result: every comparison with NaN is false, so its heatmap would read as "no lumbar spine found"."""
    if not bool(torch.isfinite(output).all()):
        bad = int((~torch.isfinite(output)).sum())
        raise ModelError(f"The {network} network produced {bad} of {output.numel()} output values that are not "
                         f"numbers (NaN or infinite): the model's weights are corrupt or numerically unstable, so "
                         f"no result can be trusted. Use another model file (or the bundled one).")


def network_input(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """Arrays (n, z, y, x) as a batch of network inputs (n, 1, z, y, x) on ``device``, channels-last as the
    networks are (:meth:`.models.LumbarSegModel.to`)."""
    return torch.from_numpy(x)[:, None].to(device).contiguous(memory_format=torch.channels_last_3d)


def run_localizer(canonical: sitk.Image, model: LumbarSegModel, device: torch.device) -> np.ndarray:
    x = preprocess.localizer_input(canonical, model.config)
    with torch.inference_mode():
        heat = model.localizer(network_input(x[None], device))
        check_finite_output(heat, "localizer")
    return heat[0, 0].float().cpu().numpy()


def xunet_probabilities(canonical: sitk.Image, lo, hi, model: LumbarSegModel, device: torch.device,
                        mirrored: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """XUNet class probabilities (C, z, y, x) on its own grid for the box [lo, hi), and with ``mirrored`` those
    of the box mirrored head-to-feet, mirrored back (for :mod:`orientation`'s mirror test), else None. Both
    views go through the network as one batch: on a 2-core CPU a batch of two takes 1.1-1.4 s, two passes
    1.5-2.0 s."""
    x = preprocess.crop_input(canonical, lo, hi, model.config)
    batch = np.stack([x, x[::-1]]) if mirrored else x[None]
    with torch.inference_mode():
        logits = model.xunet(network_input(batch, device))
        check_finite_output(logits, "XUNet")
        probs = torch.softmax(logits, dim=1).float().cpu()
    return probs[0], (probs[1].flip(1) if mirrored else None)


def check_head_feet(canonical: sitk.Image, lo, hi, model: LumbarSegModel, probs: torch.Tensor,
                    mirrored: torch.Tensor) -> orientation.Verdict:
    """What the anatomy says about head and feet against the header (:mod:`orientation`): context classes on
    the wrong side, L1-L5 in reversed order, a crop that the XUNet recognises better mirrored head-to-feet
    (``mirrored``: its probabilities on the crop mirrored; ``probs``: as given, both from
    :func:`xunet_probabilities`) and whether the vertebrae narrow downwards. :func:`orientation.decide` refuses
    or warns once the vertebrae to report are known. Read on the XUNet's own grid: the checks compare mean
    heights and counts, which its labels upsampled to the box would only restate, at a cost (1.3 s of the
    benchmark CT in session 10's profile) that the finder's path would pay for nothing else."""
    grid_labels = probs.argmax(dim=0).to(torch.uint8).numpy()
    voxel_ml = float(np.prod((np.asarray(hi) - np.asarray(lo)) * np.asarray(canonical.GetSpacing()))) / 1000.0 \
        / grid_labels.size
    min_voxels = max(1, int(MIN_VERTEBRA_ML / voxel_ml))
    return orientation.Verdict(
        [orientation.context_contradiction(grid_labels, model.config.context_classes, min_voxels),
         orientation.order_contradiction(grid_labels, min_voxels)],
        mirror=orientation.mirror_contradiction(orientation.view_score(probs), orientation.view_score(mirrored),
                                                int(np.ceil(orientation.MIRROR_MIN_ML / voxel_ml))),
        narrowing=orientation.narrowing_downwards(grid_labels, (hi[2] - lo[2]) * canonical.GetSpacing()[2]))


def vertebra_minimum_ml(volumes_ml) -> float | None:
    """The smallest piece (mL) to report among pieces of ``volumes_ml``; None when none reaches
    MIN_VERTEBRA_ML, so nothing is reported (see the constants above)."""
    whole = [v for v in volumes_ml if v >= MIN_VERTEBRA_ML]
    if not whole:
        return None
    return min(MIN_VERTEBRA_ML, max(MIN_SLIVER_ML, RELATIVE_MIN_VERTEBRA * float(np.median(whole))))


def too_small_to_report(volumes: dict, messages: list[str], dropped: dict | None = None):
    """(the smallest piece to report (:func:`vertebra_minimum_ml`), label -> mL of the pieces of ``volumes``
    (label -> mL) under it), the latter named in ``messages`` and added to ``dropped``."""
    minimum = vertebra_minimum_ml(volumes.values())
    too_small = {lab: v for lab, v in volumes.items() if minimum is None or v < minimum}
    if too_small:
        messages.append(_dropped_message(too_small, minimum))
        if dropped is not None:
            dropped.update(too_small)
    return minimum, too_small


def _dropped_message(dropped: dict, minimum: float | None) -> str:
    pieces = ", ".join(f"{LABEL_NAMES[lab]} ({ml:.1f} mL)" for lab, ml in sorted(dropped.items()))
    if minimum is None:
        why = (f"no piece reached {MIN_VERTEBRA_ML:g} mL, the least of a real lumbar vertebra at the edge of the "
               f"field of view (a whole one is 25-90 mL in an adult)")
    else:
        why = (f"each is under {minimum:.1f} mL, the minimum here ({RELATIVE_MIN_VERTEBRA:g} of the median vertebra "
               f"found, at least {MIN_SLIVER_ML:g} mL, at most {MIN_VERTEBRA_ML:g} mL)")
    return f"Pieces labelled {pieces} were not reported: {why}."


def clean_labels(labels: np.ndarray, spacing_xyz, messages: list[str], context_classes=(), check=None,
                 dropped: dict | None = None, naming: dict | None = None,
                 probabilities: np.ndarray | None = None, naming_warnings: list | None = None,
                 hu: np.ndarray | None = None, hu_origin=(0, 0, 0)) -> np.ndarray:
    """Keep each vertebra's largest connected piece; drop islands and slivers; name the column by counting.

    ``labels`` is (z, y, x) in LPS orientation (a larger z index is more superior) with 0 background,
    1..5 L1..L5 and, after them, the model's ``context_classes`` (networks.CONTEXT_CLASSES), which anchor
    the names (:mod:`naming`: the sacrum below, a thoracic vertebra above) and are then folded into
    background. The kept pieces are split where one holds two vertebrae and merged where two are one, and
    get one consecutive sequence of levels (:func:`anchor_names`); ``naming`` (if given) receives
    vertebra name -> how it was decided ("sacrum", "ribs", "both", "unanchored") and ``naming_warnings`` (if
    given) the warnings of that count (also in ``messages``). ``probabilities``: the
    network's class probabilities (C, z, y, x) on the grid of ``labels``, the class evidence when given.
    Pieces too small to report (:func:`vertebra_minimum_ml`) are named in ``messages`` and in ``dropped``
    (label -> mL). ``check()`` is called before each vertebra's morphology (the pipeline's cancellation check).
    ``hu``: the CT (z, y, x, LPS) with ``labels[0, 0, 0]`` at its voxel ``hu_origin``: the count also reads
    ribs and the sacrum from its bone (:mod:`.anchors`).
    """
    voxel_ml = float(np.prod(spacing_xyz)) / 1000.0
    spacing_zyx = np.asarray(spacing_xyz, float)[::-1]
    pieces = {}  # label -> (region, largest piece in it)
    for label, region in enumerate(ndimage.find_objects(labels, max_label=NUM_CLASSES - 1), start=1):
        if region is not None:
            pieces[label] = (region, preprocess.largest_component(labels[region] == label))
    volumes = {label: float(mask.sum()) * voxel_ml for label, (_, mask) in pieces.items()}
    minimum, too_small = too_small_to_report(volumes, messages, dropped)
    # a piece is kept from this many voxels on (the context classes' anchors use the same count)
    min_voxels = max(1, int(math.ceil((minimum if minimum is not None else MIN_VERTEBRA_ML) / voxel_ml)))
    kept = np.zeros_like(labels)
    for label, (region, mask) in pieces.items():
        if label not in too_small:
            kept[region][mask] = label
    named = anchor_names(labels, kept, spacing_xyz, context_classes, min_voxels, messages, naming, probabilities,
                         naming_warnings, hu, hu_origin)
    out = np.zeros_like(labels)
    margin = np.ceil(CLOSING_MM / spacing_zyx).astype(int)  # room for the closing around each vertebra
    for level, region in enumerate(ndimage.find_objects(named, max_label=NUM_CLASSES - 1), start=1):
        if region is None:
            continue
        if check is not None:
            check()
        out[region][named[region] == level] = level
        _close_and_fill(out, labels, level, region, margin, spacing_zyx, check)
    return out


def _close_and_fill(out: np.ndarray, labels: np.ndarray, label: int, region, margin, spacing_zyx,
                    check=None) -> None:
    """Close ``label``'s kept piece in ``out`` (about CLOSING_MM, on a bounded grid: :mod:`morphology`) and
    fill its enclosed holes, in place, taking only voxels the network called background."""
    box = tuple(slice(max(r.start - k, 0), min(r.stop + k, n)) for r, k, n in zip(region, margin, labels.shape))
    solid = morphology.close_and_fill(out[box] == label, spacing_zyx, CLOSING_MM, check)
    out[box][solid & (labels[box] == 0) & (out[box] == 0)] = label


def anchor_names(labels: np.ndarray, kept: np.ndarray, spacing_xyz, context_classes, min_voxels: int,
                 messages: list[str], naming: dict | None = None, probabilities: np.ndarray | None = None,
                 naming_warnings: list | None = None, hu: np.ndarray | None = None,
                 hu_origin=(0, 0, 0)) -> np.ndarray:
    """The kept lumbar pieces (``kept``: 0, 1..5) renamed by counting along the whole column (:mod:`naming`).

    The network names each vertebra from its looks and its place in the crop; on a partial or thick-slice
    scan the place misleads and one name can cover two vertebrae. Here the vertebrae are found first (a
    piece holding two is split at the disc, two pieces of one vertebra merged) and the column gets one
    consecutive sequence of levels, anchored by a thoracic vertebra right above (counting down: the next
    is L1) and the sacrum right below (counting up: the lowest is L5); with neither, by the network's
    evidence, and the result says the names are unanchored. The anchors come from the network's context
    classes and, given the CT (``hu``, ``hu_origin``: see :func:`clean_labels`), from its bone (:mod:`.anchors`:
    ribs above, the sacrum below). ``naming`` receives name -> how decided, ``naming_warnings`` the count's
    warnings.
    """
    column = naming_module.name_column(labels, kept, spacing_xyz, context_classes, min_voxels, probabilities,
                                       hu, hu_origin)
    if column is None:
        return kept
    messages.extend(column.notes)
    messages.extend(column.warnings)
    if naming_warnings is not None:
        naming_warnings.extend(column.warnings)
    out = np.zeros_like(kept)
    inside = out[column.box]  # a view: the column's box, which the instances cover
    for index, level in column.lumbar().items():
        mask = column.instance_map == index + 1
        inside[mask] = level
        if naming is not None and mask.any():  # the thoracic anchor has a level but is not reported
            naming[LABEL_NAMES[level]] = column.how
    return out


def segment(image: sitk.Image, model: LumbarSegModel | None = None, device: str = "auto", box_lps=None,
            progress=None, cancel=None, refine=None, finder=None) -> SegmentationResult:
    """Segment L1-L5 in a CT (HU). ``box_lps`` = (min_xyz, max_xyz) in LPS mm skips the localizer.

    ``progress(stage, fraction)`` is called as stages start and end; ``cancel()`` returning True stops the run with
    :class:`Cancelled` at the next check. A GPU out of memory: :func:`_segment_or_rerun`.
    ``refine``: a stage-3 network (:mod:`vertebra_stage`) that re-segments each vertebra found on its own
    crop, or None to keep the XUNet's vertebrae (``result.refined`` says which ran). ``finder``: the finder's network
    (:mod:`.finder`) to find and name the vertebrae in the localizer's box by counting the finder's peaks instead
    of the XUNet's pieces (:func:`.by_vertebra.segment_counted`; needs ``refine``).
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
    with heap.kept_heap():  # the networks' activations reuse freed memory: a fifth of the time on a 2-core CPU
        return _segment_or_rerun(image, model, torch_device, box_lps, stages, refine, finder)


def _segment_or_rerun(image, model, torch_device, box_lps, stages: _Stages, refine, finder) -> SegmentationResult:
    """:func:`_segment_on`; if the GPU runs out of memory, all again on the CPU, as the first message says."""
    try:
        return _segment_on(image, _model_on(model, torch_device), torch_device, box_lps, stages, refine, finder)
    except torch.cuda.OutOfMemoryError as exc:
        if torch_device.type == "cpu":
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "out of memory"
        del exc  # drop the traceback's references to the GPU tensors before freeing the cache
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        stages.start("load")
        cpu = torch.device("cpu")
        result = _segment_on(image, _model_on(model, cpu), cpu, box_lps, stages, refine, finder)
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
                stages: _Stages, refine=None, finder=None) -> SegmentationResult:
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
    dropped: dict = {}  # pieces too small to report (clean_labels says so in the messages)
    naming: dict = {}  # vertebra name -> how its level was decided (clean_labels fills it)
    naming_warnings: list[str] = []  # and what that count warned of
    if box is not None and finder is not None and refine is not None:
        labels_canonical = _segment_counted(canonical, box, finder, refine, stages, messages, dropped, naming,
                                            naming_warnings, model, torch_device)
    elif box is not None:
        lo, hi = box
        stages.start("segment")
        # random weights say nothing about anatomy (and are announced as meaningless): no head-feet check
        probs, mirrored = xunet_probabilities(canonical, lo, hi, model, torch_device, mirrored=model.trained)
        with torch.inference_mode():
            box_labels = preprocess.probabilities_to_labels(probs, np.asarray(hi) - np.asarray(lo))
        head_feet = check_head_feet(canonical, lo, hi, model, probs, mirrored) if model.trained else None
        stages.start("postprocess")
        box_labels = clean_labels(box_labels, canonical.GetSpacing(), messages, model.config.context_classes,
                                  check=stages.check, dropped=dropped, naming=naming,
                                  naming_warnings=naming_warnings, hu=sitk.GetArrayViewFromImage(canonical),
                                  hu_origin=tuple(int(v) for v in lo[::-1]))
        labels_canonical[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] = box_labels
        if labels_canonical.any():  # before stage 3, which would re-segment a chest wall's "vertebra" as well
            labels_canonical = column.drop_off_column(labels_canonical, sitk.GetArrayViewFromImage(canonical),
                                                      np.asarray(canonical.GetSpacing(), float)[::-1], messages)
        if refine is not None and labels_canonical.any():
            stages.start("refine")
            labels_canonical = by_vertebra.refine_vertebrae(canonical, labels_canonical, refine, messages, stages.check,
                                                            naming_warnings)
        labels_canonical = checked_vertebrae(labels_canonical, canonical, messages,
                                             None if head_feet is None else lambda: head_feet)
    else:
        stages.start("postprocess")

    boxes = morphology.label_boxes(labels_canonical)
    found = [LABEL_NAMES[lab] for lab in sorted(boxes)]
    messages.extend(by_vertebra.cut_by_scan_ends(boxes, labels_canonical.shape[0]))
    if not found:
        messages.append("No lumbar spine found in this image: no L1-L5 vertebra was detected "
                        "(e.g. a thoracic-only or non-spine field of view).")
    elif len(found) < 5:
        missing = [n for n in LABEL_NAMES.values() if n not in found]
        small = [LABEL_NAMES[lab] for lab in sorted(dropped) if LABEL_NAMES[lab] in missing]
        if small:  # pieces dropped as too small are named as such: a small spine is not a partial view
            messages.append(f"Found {', '.join(found)}; not found: {', '.join(missing)} ({', '.join(small)} only "
                            f"as pieces too small to report, see above).")
        else:
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
                              str(torch_device), refined=refine is not None and bool(found),
                              counted=finder is not None and refine is not None and box is not None,
                              naming={name: how for name, how in naming.items() if name in found},
                              naming_warnings=naming_warnings if found else [])


def checked_vertebrae(labels: np.ndarray, canonical: sitk.Image, messages: list[str], head_feet=None,
                      column_centres=None) -> np.ndarray:
    """``labels`` (the canonical grid) less what no result may report, whichever path found the vertebrae: pieces
    of soft tissue's HU, a thoracic column (``column_centres``: the finder's counted centres, when it ran;
    :mod:`.by_vertebra`); then upside-down anatomy refused or warned of (:func:`orientation.decide`) from
    ``head_feet()``, the XUNet's verdict, asked only when vertebrae are left (with nothing to name, orientation is
    never a reason to refuse; None: untrained weights, which say nothing about anatomy)."""
    hu, spacing_zyx = sitk.GetArrayViewFromImage(canonical), np.asarray(canonical.GetSpacing(), float)[::-1]
    labels = by_vertebra.drop_soft_tissue(labels, hu, messages)
    labels = by_vertebra.drop_thoracic(labels, hu, spacing_zyx, messages, column_centres)
    if labels.any() and head_feet is not None:
        orientation.decide(head_feet(), True, messages)
    return labels


def strip_centre(canonical: sitk.Image, box) -> tuple[float, float]:
    """(x, y) LPS mm where the finder's strip runs: the column of bone over the box's height
    (:func:`.column.column_centre`, on a slice every 4 mm or so), the box's centre where the slab shows no bone.
    The strip is 128 mm across and the finder trained on windows centred on the spine; the box's centre can lie
    far from it (64 mm in front of it on the lower-spine phantom 5009, whose box takes in the pelvis: the spine
    at the strip's edge, nothing found)."""
    lo, hi = box
    spacing_zyx = np.asarray(canonical.GetSpacing(), float)[::-1]
    step = max(1, int(round(4.0 / spacing_zyx[0])))
    point = column.column_centre(sitk.GetArrayViewFromImage(canonical)[lo[2]:hi[2]:step], spacing_zyx[1:])
    if point is None:
        mn, mx = index_box_to_lps(canonical, lo, hi)
        return (mn[0] + mx[0]) / 2, (mn[1] + mx[1]) / 2
    x, y, _ = canonical.TransformContinuousIndexToPhysicalPoint([point[1], point[0], (lo[2] + hi[2]) / 2])
    return x, y


def _segment_counted(canonical, box, finder, refine, stages: _Stages, messages, dropped, naming,
                     naming_warnings, model: LumbarSegModel, torch_device) -> np.ndarray:
    """The finder's path (:func:`.by_vertebra.segment_counted`) in the localizer's ``box``, with what every result
    gets after it: pieces off the spinal column, too small to report or of soft tissue's HU dropped, a thoracic
    column dropped, upside-down anatomy refused - from
    the finder's peaks and from the XUNet's head-feet check as on its own path (the crop as given and mirrored in
    one batch, about a second: the finder's classes alone named two of the four real CTs of ../shared/data/real
    turned upside down)."""
    stages.start("segment")
    mn, mx = index_box_to_lps(canonical, *box)
    # the stages as a progress bar shows them: "segment" (the finder and the count), then "refine" (stage 3 and
    # what is reported of it; with no lumbar vertebra counted, stage 3 does not run)
    counted = by_vertebra.segment_counted(canonical, strip_centre(canonical, box), (mn[2], mx[2]), finder, refine,
                                          messages, stages.check, on_stage3=lambda: stages.start("refine"))
    labels = counted.labels
    hu, spacing_zyx = sitk.GetArrayViewFromImage(canonical), np.asarray(canonical.GetSpacing(), float)[::-1]
    if labels.any():  # the finder's strip is as wide as a chest: thoracic phantom 7000 drew L3 and L4 off its spine
        labels = column.drop_off_column(labels, hu, spacing_zyx, messages)
    voxel_ml = float(np.prod(canonical.GetSpacing())) / 1000.0
    volumes = {lab: float((labels[box_] == lab).sum()) * voxel_ml for lab, box_ in morphology.label_boxes(labels).items()}
    _, too_small = too_small_to_report(volumes, messages, dropped)
    if too_small:
        labels = np.where(np.isin(labels, list(too_small)), 0, labels).astype(np.uint8)
    # the finder saw lumbar-looking vertebrae in reversed anatomy (a lumbar spine, upside down): never named
    orientation.refuse_if_upside_down([counted.upside_down])

    def head_feet():
        lo, hi = box
        return check_head_feet(canonical, lo, hi, model,
                               *xunet_probabilities(canonical, lo, hi, model, torch_device, mirrored=True))

    labels = checked_vertebrae(labels, canonical, messages, head_feet if model.trained else None, counted.column)
    if labels.any():
        messages.extend(counted.orientation_warnings)
    naming.update(counted.naming)
    naming_warnings.extend(counted.warnings)
    return labels
