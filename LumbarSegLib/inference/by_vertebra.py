"""Stage 3 with its seeds (:mod:`.vertebra_stage` segments each vertebra on its own crop), and what is reported of it.

Two ways to seed it:

* :func:`refine_vertebrae` - the XUNet's vertebrae, as named by :func:`.pipeline.clean_labels` (the bundled
  path);
* :func:`segment_counted` - the finder's centre peaks, named by counting along the whole column
  (:func:`.finder.find_vertebrae`, :func:`.peak_naming.name_peaks`; issue 23's path, taken when a finder is given).

Both end in :func:`tidy_vertebrae` (each vertebra's largest piece, filled), and the pipeline then drops what
averages soft tissue's HU (:func:`drop_soft_tissue`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..constants import LABEL_NAMES
from . import morphology, preprocess

# A vertebra is bone: the labelled vertebrae of the real CTs in ../shared average 222-458 HU over their voxels
# (cortex and cancellous bone; 5 mm slices blur that down only at the surface). A "vertebra" averaging soft
# tissue's HU is something else, never reported as a vertebra: the blobs the old model put on the sample
# CT's bowel averaged 45-68 HU, and unenhanced muscle and organs lie at 40-60 HU. The bound stays under an
# osteoporotic spine: the true vertebrae of the osteoporotic evaluation phantom 100214 (tight field of view,
# cancellous bone 40-140 HU) average 90-99 HU and stage 3's masks of them 83-100 HU, and a bound of 100 HU
# withheld the whole spine there (no lumbar spine reported, a false refusal).
MIN_VERTEBRA_MEAN_HU = 75.0


def drop_soft_tissue(labels: np.ndarray, hu: np.ndarray, messages: list[str]) -> np.ndarray:
    """``labels`` without the vertebrae whose mean HU is under :data:`MIN_VERTEBRA_MEAN_HU`; each one named."""
    boxes = morphology.label_boxes(labels)
    means = {lab: float(np.mean(hu[box][labels[box] == lab], dtype=np.float64)) for lab, box in boxes.items()}
    soft = {lab: m for lab, m in means.items() if m < MIN_VERTEBRA_MEAN_HU}
    if not soft:
        return labels
    messages.append("Not reported, as their voxels average soft tissue's HU rather than bone's (a vertebra averages "
                    f"over {MIN_VERTEBRA_MEAN_HU:g} HU): " + ", ".join(f"{LABEL_NAMES[lab]} ({m:.0f} HU)"
                                                                     for lab, m in sorted(soft.items()))
                    + ". The segmentation missed the spine there; if the image shows one, segment it by hand.")
    out = labels.copy()
    out[np.isin(labels, list(soft))] = 0
    return out


def drop_thoracic(labels: np.ndarray, hu: np.ndarray, spacing_zyx, messages: list[str], column=None) -> np.ndarray:
    """``labels`` without any vertebra when they and the vertebrae right above them all carry ribs
    (:func:`.anchors.thoracic_column`): a thoracic column has no lumbar vertebra, whatever looked lumbar in it.
    ``column``: the vertebral centres found along the column (z, y, x mm, top first; the finder's, without the
    sacrum: :func:`down_to_l5`), read instead of the labelled vertebrae's own centres: a piece beside the spine
    (thoracic phantom 7007's cut T12, 57 mm to the side) reads one-sided."""
    from .anchors import thoracic_column

    boxes = morphology.label_boxes(labels)
    if not boxes:
        return labels
    spacing_zyx = np.asarray(spacing_zyx, float)
    order = sorted(boxes)  # L1 first: the top of the column
    centres = column or [morphology.centre_of(labels, boxes[lab], lab) * spacing_zyx for lab in order]
    thoracic, reaches = thoracic_column(hu, spacing_zyx, centres)
    if not thoracic:
        return labels
    messages.append("WARNING: not reported as lumbar vertebrae: " + ", ".join(LABEL_NAMES[lab] for lab in order)
                    + ". Bone connected to them and to the vertebrae right above them runs out to both sides as far "
                    "as ribs do (" + ", ".join(f"{r}/{l} mm" for r, l in reaches) + ", top first; a lumbar transverse "
                    "process ends within 50 mm), so this is a thoracic column. Check the field of view.")
    return np.zeros_like(labels)


def tidy_vertebrae(refined: np.ndarray, present, check=None) -> tuple[np.ndarray, list[int]]:
    """Stage 3's merged label map as reported: each vertebra of ``present`` keeps its largest piece, its enclosed
    holes filled on voxels no vertebra took. No closing, unlike the XUNet's coarser pieces: on held-out
    sub-verse005 (fold-A) a 2 mm closing lowered DSC by 0.0005 where the fill alone raised it by 0.0003.
    Returns the map and the labels it holds nothing of. The gate (:mod:`..training.vertebra_eval`) scores
    this too, so it measures what a study reports."""
    out = np.zeros_like(refined)
    empty = []
    regions = morphology.label_boxes(refined) if present else {}  # one pass for all, on the block that holds labels
    for lab in present:
        if check is not None:
            check()
        region = regions.get(lab)
        if region is None:
            empty.append(lab)
            continue
        piece = ndimage.binary_fill_holes(preprocess.largest_component(refined[region] == lab))
        out[region][piece & ((refined[region] == 0) | (refined[region] == lab))] = lab
    return out, empty


def kept_twin(label: int, dup: dict) -> int:
    """The label a duplicate seed's vertebra is reported under: ``dup`` (:func:`.vertebra_stage.duplicates`) can
    chain (A on B's bone, B on C's), and the name to give is the one left at the chain's end."""
    for _ in range(len(dup) + 1):
        if label not in dup:
            break
        label = dup[label]
    return label


def one_bone_warnings(dup: dict, present=None) -> list[str]:
    """A naming warning per duplicate of ``dup`` (stage 3 found the same bone at two named centres): the count took
    one vertebra for two, so names may be shifted - those below it among ``present`` (labels), when given."""
    out = []
    for lab in sorted(dup):
        twin = kept_twin(lab, dup)
        if present is None:
            shifted = ", and the names on one side of it may be shifted"
        else:
            below = [LABEL_NAMES[v] for v in present if v > max(lab, twin)]
            shifted = f", and the names below it ({', '.join(below)}) may be shifted" if below else ""
        out.append(f"WARNING: {LABEL_NAMES[lab]} and {LABEL_NAMES[twin]} are one vertebra (the per-vertebra stage "
                   f"found the same bone at both centres); it is reported as {LABEL_NAMES[twin]}{shifted}. Check the "
                   f"levels.")
    return out


def refine_vertebrae(canonical: sitk.Image, labels: np.ndarray, net, messages: list[str], check=None,
                     naming_warnings: list[str] | None = None) -> np.ndarray:
    """Stage 3: each vertebra the XUNet found re-segmented on its own 1.25 mm crop around its centroid, with
    its name kept; then each keeps its largest piece, filled (:func:`tidy_vertebrae`). A vertebra stage 3 finds
    nothing of keeps the XUNet's voxels, and a message says so. Two names on one bone doubt the names: that
    warning also goes into ``naming_warnings`` (so the names show "check the levels")."""
    from .vertebra_stage import VertebraSeed, segment_vertebrae

    boxes = morphology.label_boxes(labels)
    present = sorted(boxes)
    centres = [morphology.centre_of(labels, boxes[lab], lab) for lab in present]
    seeds = [VertebraSeed(np.asarray(canonical.TransformContinuousIndexToPhysicalPoint([float(c) for c in idx[::-1]])),
                          lab) for lab, idx in zip(present, centres)]
    dup: dict = {}
    refined = segment_vertebrae(canonical, seeds, net, cancel=check, dropped=dup)
    doubts = one_bone_warnings(dup, present)
    messages.extend(doubts)
    if naming_warnings is not None:
        naming_warnings.extend(doubts)
    present = [lab for lab in present if lab not in dup]
    out, empty = tidy_vertebrae(refined, present, check)
    kept = []
    for lab in empty:  # stage 3 found nothing at this centre: the XUNet's voxels stay
        box = boxes[lab]
        out[box][(labels[box] == lab) & (out[box] == 0)] = lab
        kept.append(LABEL_NAMES[lab])
    if kept:
        messages.append(f"The per-vertebra stage found nothing of {', '.join(kept)} at its centre; the first "
                        "segmentation was kept for it. Check it.")
    return out


def lumbar_turned_over(canonical: sitk.Image, finder_net, centre_xy, z_range_mm) -> int:
    """How many vertebrae the finder names L1-L5 (by counting) along the same column with ``canonical`` (LPS-aligned)
    turned head-to-feet: its voxels mirrored along z, the header kept."""
    from . import finder

    turned = preprocess.mirrored_head_to_feet(canonical)
    ends = 2 * canonical.GetOrigin()[2] + (canonical.GetSize()[2] - 1) * canonical.GetSpacing()[2]
    peaks = finder.find_vertebrae(turned, finder_net, centre_xy, (ends - max(z_range_mm), ends - min(z_range_mm)))
    counted = finder.count_levels(turned, peaks)
    return len(counted.lumbar()) if counted else 0


@dataclass
class Counted:
    """What :func:`segment_counted` found: the label map (z, y, x, on the canonical grid), name -> how its level
    was decided, the count's warnings, and why the finder's anatomy says upside down (None when it does not)."""
    labels: np.ndarray
    naming: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    upside_down: str | None = None
    # the centres (z, y, x mm on the canonical grid) of the peaks counted, top first, without the sacrum's
    # (:func:`down_to_l5`): what :func:`drop_thoracic` reads
    column: list = field(default_factory=list)
    # a weak sign of upside-down anatomy (:func:`.orientation.finder_verdict`): the pipeline warns of it only when a
    # vertebra is reported ("the vertebrae were named" said of none misled on thoracic phantom 7102)
    orientation_warnings: list = field(default_factory=list)


def cut_by_scan_ends(boxes: dict, n_slices: int) -> list[str]:
    """Notes on the vertebrae whose boxes (label -> (z, y, x) slices of an LPS grid of ``n_slices`` slices, index 0
    the feet's end; :func:`.morphology.label_boxes`) reach the scan's first or last slice: the field of view may cut
    them, so their volume, height and surface are of the part in view (held-out sub-verse007's L3, cut by its crop).
    A surface for surgical planning must say so. Only the ends along the spine are noted: a spine-targeted crop
    (78-110 mm wide) reaches across every vertebra's transverse processes, and each vertebra's measurements say
    ``touches_image_edge`` for any end (:func:`.morphology.ends_reached`, the same measure)."""
    notes = []
    for lab, box in sorted(boxes.items()):
        ends = [side for _, side in morphology.ends_reached(box[:1], (n_slices,))]
        if ends:
            notes.append(f"{LABEL_NAMES[lab]} reaches the {' and '.join(ends)} end of the scan: part of it may lie "
                         "outside the field of view, so its volume, height and surface are those of the part in view.")
    return notes


def outside_scan(image: sitk.Image, point_mm) -> bool:
    """Whether ``point_mm`` (LPS) lies beyond the scan's voxels (more than half a voxel past the first or last
    along any axis). A vertebra whose centre lies there has less than half of itself in view: the finder still
    finds its centre (the centre channel peaks on a vertebra cut by the image's edge, so the count goes on), but a
    surface of the piece in view would be reported as that whole vertebra. (Held-out sub-verse007 ends in the L3/L4
    disc; the fold-B finder's L4 centre lies just inside it, so that "L4" of 36 mL is reported, with the note of
    :func:`cut_by_scan_ends`.)"""
    index = np.asarray(image.TransformPhysicalPointToContinuousIndex([float(v) for v in point_mm]))
    return bool(np.any(index < -0.5) or np.any(index > np.asarray(image.GetSize()) - 0.5))


def down_to_l5(counted) -> list:
    """The centres of ``counted``'s peaks (a :class:`.peak_naming.PeakNaming`), top first, without those counted
    below L5 that the finder takes for the sacrum (its caudal class). The sacrum's alae and the iliac wings run
    out to both sides as far as ribs do: with an L5 deep between the crests and two sacral peaks below, a pelvic
    scan read as a "thoracic column" and its L5 went unreported. A peak counted below L5 that looks like any
    other vertebra stays (a thoracic column counted too low: T11 and T12 counted "6" and "7" carry its ribs)."""
    from .naming import class_of_level
    from .networks import CONTEXT_CLASSES

    caudal = class_of_level(6, CONTEXT_CLASSES)  # the class of a vertebra below L5
    classes = counted.classes or [None] * len(counted.levels)
    return [c for c, level, cls in zip(counted.centres_mm, counted.levels, classes) if level <= 5 or cls != caudal]


def segment_counted(canonical, centre_xy, z_range_mm, finder_net, net, messages: list[str],
                    check=None, on_stage3=None) -> Counted:
    """The finder (``finder_net``) along the column through ``centre_xy`` (LPS x, y mm) over ``z_range_mm``, its
    peaks named by counting, and each one named L1-L5 segmented by stage 3 (``net``) around its centre
    (``on_stage3()`` is called as that starts: the progress bar's stage)."""
    from . import finder, orientation
    from .vertebra_stage import VertebraSeed, segment_vertebrae

    labels = np.zeros(canonical.GetSize()[::-1], np.uint8)
    peaks = finder.find_vertebrae(canonical, finder_net, centre_xy, z_range_mm)
    if check is not None:
        check()
    counted = finder.count_levels(canonical, peaks, sitk.GetArrayViewFromImage(canonical))
    if counted is None:
        return Counted(labels)
    hints: list[str] = []
    upside_down = orientation.finder_verdict([peaks[k].name for k in counted.kept], hints)
    if upside_down:  # lumbar-looking vertebrae in reversed anatomy: nothing is named (the pipeline refuses)
        return Counted(labels, upside_down=upside_down)
    if not counted.lumbar():
        from .naming import level_name

        # a lumbar spine upside down can look thoracic to the finder throughout (abdominal phantom 100011): the
        # finder reading lumbar vertebrae in the image turned over says so (a thoracic CT turned over does not)
        turned = lumbar_turned_over(canonical, finder_net, centre_xy, z_range_mm)
        if turned >= orientation.MIN_REVERSED_VERTEBRAE:
            return Counted(labels, upside_down=f"the finder reads none of the {len(counted.levels)} vertebrae it found "
                                               f"as lumbar, and {turned} as lumbar with the image turned head-to-feet")
        how = {"ribs": "down from the ribs", "sacrum": "up from the sacrum", "both": "from the ribs and the sacrum",
               "unanchored": "without an anchor"}[counted.how]
        messages.append(f"The finder found {len(counted.levels)} vertebra(e) along the column, counted {how} as "
                        f"{', '.join(level_name(v) for v in counted.levels)}: none of them lumbar.")
        # what doubts the count (another count would name some lumbar, a missed vertebra): "no lumbar spine" is
        # then itself uncertain, and the result says so rather than refusing plainly
        messages.extend(counted.warnings)
        return Counted(labels)
    messages.extend(counted.notes)
    messages.extend(counted.warnings)
    lumbar = counted.lumbar()
    beyond = [level for k, level in sorted(lumbar.items()) if outside_scan(canonical, peaks[k].centre_mm)]
    if beyond:
        messages.append(f"{', '.join(LABEL_NAMES[v] for v in beyond)} lie(s) mostly outside the scan (the centre beyond "
                        "the image's edge): counted for the names, not segmented.")
    seeds = [VertebraSeed(peaks[k].centre_mm, level) for k, level in sorted(lumbar.items()) if level not in beyond]
    dup: dict = {}
    if on_stage3 is not None:
        on_stage3()
    refined = segment_vertebrae(canonical, seeds, net, cancel=check, dropped=dup)
    # a naming warning, so every front end shows "check the levels" against these names
    dup_warnings = one_bone_warnings(dup)
    messages.extend(dup_warnings)
    present = [s.label for s in seeds if s.label not in dup]
    out, empty = tidy_vertebrae(refined, present, check)
    if empty:
        messages.append(f"The per-vertebra stage found no vertebra at the centre of {', '.join(LABEL_NAMES[v] for v in empty)}, "
                        "so it is not reported. Check that level.")
    names = {LABEL_NAMES[v]: counted.how for v in present if v not in empty}
    return Counted(out, names, list(counted.warnings) + dup_warnings, column=down_to_l5(counted),
                   orientation_warnings=hints)
