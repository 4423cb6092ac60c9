"""Per-vertebra agreement with a reference segmentation, and per-vertebra measurements.

Overlap measures follow the paper (Lu et al. 2023), with P the predicted and R the reference voxels:

* DSC = 2|P and R| / (|P| + |R|)
* FND (false-negative Dice) = |R minus P| / (|P| + |R|)
* FPD (false-positive Dice) = |P minus R| / (|P| + |R|)

so that DSC + FND + FPD = 1 for every vertebra: the missing share of the Dice is split into what was
missed and what was added. (Writing FND as 2·FN/(|P|+|R|) would break that identity - e.g. a missed
vertebra would get FND = 2 - so the un-doubled form is used.)

Distances are in millimetres on the voxel grid, honouring anisotropic spacing. A mask's surface is the mask
minus its erosion (6-connected), and each surface voxel's distance to the other surface comes from an
exact Euclidean distance transform with ``sampling=spacing``:

* MSD - maximum symmetric surface distance (the Hausdorff distance),
* ASD - average symmetric surface distance (mean over both surfaces' voxels pooled),
* HD95 - 95th percentile of the pooled distances of both surfaces (as MedPy's ``hd95``).

A vertebra present in only one of the two maps has no surface to measure to: DSC = 0 and its distances
are NaN (written as ``null`` in JSON, "-" in tables), and its ``status`` says ``missed`` (only in the
reference) or ``extra`` (only in the prediction). Means over vertebrae skip NaN.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .constants import LABEL_NAMES
from .errors import InputError

OVERLAP_KEYS = ("DSC", "FND", "FPD")
DISTANCE_KEYS = ("MSD", "ASD", "HD95")
METRIC_KEYS = OVERLAP_KEYS + DISTANCE_KEYS
_SIX_CONNECTED = ndimage.generate_binary_structure(3, 1)


def _surface(mask: np.ndarray) -> np.ndarray:
    # border_value=0: a mask that touches the array's edge still has a surface there.
    return mask & ~ndimage.binary_erosion(mask, structure=_SIX_CONNECTED, border_value=0)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing_zyx) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of ``a`` to ``b``'s surface, and from ``b``'s to ``a``'s.

    Works on the union's bounding box plus a one-voxel margin, so cost scales with the vertebra, not
    with the CT.
    """
    union = a | b
    region = ndimage.find_objects(union.astype(np.uint8))[0]
    region = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(region, a.shape))
    a, b = np.pad(a[region], 1), np.pad(b[region], 1)
    surf_a, surf_b = _surface(a), _surface(b)
    sampling = [float(s) for s in spacing_zyx]
    dist_to_b = ndimage.distance_transform_edt(~surf_b, sampling=sampling)
    dist_to_a = ndimage.distance_transform_edt(~surf_a, sampling=sampling)
    return dist_to_b[surf_a], dist_to_a[surf_b]


def compare_masks(pred: np.ndarray, ref: np.ndarray, spacing_zyx) -> dict:
    """All measures for one binary structure (see the module docstring for definitions)."""
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    n_pred, n_ref = int(pred.sum()), int(ref.sum())
    tp = int(np.count_nonzero(pred & ref))
    fn, fp = n_ref - tp, n_pred - tp
    total = n_pred + n_ref
    result = {
        "status": "ok" if n_pred and n_ref else "missed" if n_ref else "extra" if n_pred else "absent",
        "DSC": 2.0 * tp / total if total else float("nan"),
        "FND": fn / total if total else float("nan"),
        "FPD": fp / total if total else float("nan"),
        "MSD": float("nan"), "ASD": float("nan"), "HD95": float("nan"),
        "pred_voxels": n_pred, "ref_voxels": n_ref,
    }
    if n_pred and n_ref:
        d_pred, d_ref = surface_distances(pred, ref, spacing_zyx)
        pooled = np.concatenate([d_pred, d_ref])
        result["MSD"] = float(pooled.max())
        result["ASD"] = float(pooled.mean())
        result["HD95"] = float(np.percentile(pooled, 95))
    return result


def compare(pred: np.ndarray, ref: np.ndarray, spacing_zyx) -> dict[str, dict]:
    """Measures per vertebra present in either label map (0..5 labels, (z, y, x) arrays, same grid)."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise InputError(f"Prediction and reference have different shapes {pred.shape} and {ref.shape}.")
    present = (set(np.unique(pred).tolist()) | set(np.unique(ref).tolist())) & set(LABEL_NAMES)
    return {LABEL_NAMES[k]: compare_masks(pred == k, ref == k, spacing_zyx) for k in sorted(present)}


def same_grid(a: sitk.Image, b: sitk.Image, tolerance_mm: float = 1e-3) -> bool:
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tolerance_mm)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tolerance_mm)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-4))


def fields_of_view_overlap(a: sitk.Image, b: sitk.Image) -> bool:
    """True when some voxel centre of ``a`` lies inside ``b``'s field of view (physical space)."""
    inside = sitk.Image(b.GetSize(), sitk.sitkUInt8) + 1
    inside.CopyInformation(b)
    on_a = sitk.Resample(inside, a, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return bool(sitk.GetArrayViewFromImage(on_a).any())


def compare_images(pred_img: sitk.Image, ref_img: sitk.Image, resample: bool = True,
                   notes: list[str] | None = None) -> dict[str, dict]:
    """Compare two 0..5 label images.

    When the grids differ and ``resample`` is set, the *reference* is resampled (nearest neighbour) onto
    the prediction's grid - the prediction lives on the CT's grid, which is what the user looks at - and a
    note is appended to ``notes``. With ``resample=False`` differing grids are an error.
    """
    if not same_grid(pred_img, ref_img):
        if not resample:
            raise InputError("The prediction and the reference are on different voxel grids "
                             f"(sizes {pred_img.GetSize()} vs {ref_img.GetSize()}, spacings "
                             f"{tuple(round(s, 3) for s in pred_img.GetSpacing())} vs "
                             f"{tuple(round(s, 3) for s in ref_img.GetSpacing())}); resample one onto the other.")
        # Whether the two fields of view overlap is a question about the grids, not about the labels: a
        # reference of the same CT may hold no L1-L5 at all (a thoracic scan), and that is a valid answer.
        if not fields_of_view_overlap(pred_img, ref_img):
            raise InputError("The reference does not overlap the prediction's image in physical space; "
                             "check that both belong to the same CT.")
        ref_img = sitk.Resample(ref_img, pred_img, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                ref_img.GetPixelID())
        if notes is not None:
            notes.append("The reference was on a different voxel grid; it was resampled (nearest neighbour) "
                         "onto the prediction's grid before comparing.")
    spacing_zyx = pred_img.GetSpacing()[::-1]
    return compare(sitk.GetArrayViewFromImage(pred_img), sitk.GetArrayViewFromImage(ref_img), spacing_zyx)


def summary(metrics: dict[str, dict]) -> dict[str, float]:
    """Mean of each measure over the vertebrae (NaN entries skipped)."""
    out = {}
    for key in METRIC_KEYS:
        values = [m[key] for m in metrics.values() if m.get(key) is not None and math.isfinite(m[key])]
        out[key] = float(np.mean(values)) if values else float("nan")
    return out


# --------------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------------

# Anatomical ranges of a whole adult lumbar vertebra (body and posterior elements). The 22 lumbar
# vertebrae not cut by the field of view in the real VerSe / TotalSegmentator label maps of ../shared/data
# measure 38-86 mL and 46-63 mm in superior-inferior extent (spinous processes and lordotic tilt make this
# larger than the body height of 22-35 mm); the literature gives about 20-90 mL. The ranges are wide enough for large patients and
# oblique scans, and narrow enough that a slice spacing written 5 times too large in a header (every
# volume x5: 180+ mL; heights x5: 200+ mm) is caught.
VERTEBRA_VOLUME_ML = (15.0, 140.0)
VERTEBRA_HEIGHT_MM = (20.0, 90.0)


def measure(labels: np.ndarray, ct_hu: np.ndarray, image: sitk.Image) -> dict[str, dict]:
    """Volume, superior-inferior height, physical centroid and HU statistics per vertebra present.

    ``labels`` and ``ct_hu`` are (z, y, x) arrays on ``image``'s grid; the centroid is an LPS point in mm
    computed through the image's origin, spacing and direction (oblique scans included). The height is
    the vertebra's extent along the patient's S axis (voxel centres plus one voxel's extent), and
    ``touches_image_edge`` says whether the field of view may have cut it.
    """
    labels = np.asarray(labels)
    ct_hu = np.asarray(ct_hu)
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    index_to_lps = np.asarray(image.GetDirection(), float).reshape(3, 3) @ np.diag(image.GetSpacing())
    s_axis = index_to_lps[2]  # S coordinate per unit step of index x, y, z
    out = {}
    if not np.issubdtype(labels.dtype, np.integer):
        labels = labels.astype(np.int32)
    objects = ndimage.find_objects(labels, max_label=max(LABEL_NAMES))
    for label, region in enumerate(objects, start=1):
        if region is None or label not in LABEL_NAMES:
            continue
        mask = labels[region] == label
        count = int(mask.sum())
        if count == 0:
            continue
        idx_zyx = np.argwhere(mask) + [s.start for s in region]
        centroid = image.TransformContinuousIndexToPhysicalPoint([float(v) for v in idx_zyx.mean(axis=0)[::-1]])
        s_coord = idx_zyx[:, ::-1] @ s_axis
        hu = ct_hu[region][mask].astype(np.float64)
        out[LABEL_NAMES[label]] = {
            "voxels": count,
            "volume_ml": count * voxel_ml,
            "height_mm": float(np.ptp(s_coord) + np.abs(s_axis).sum()),
            "centroid_mm": [float(c) for c in centroid],
            "mean_hu": float(hu.mean()),
            "median_hu": float(np.median(hu)),
            "touches_image_edge": any(sl.start == 0 or sl.stop == n for sl, n in zip(region, labels.shape)),
        }
    return out


def plausibility_warnings(measurements: dict[str, dict]) -> list[str]:
    """One warning per vertebra whose volume or height is outside :data:`VERTEBRA_VOLUME_ML` /
    :data:`VERTEBRA_HEIGHT_MM`. Too small is not reported for a vertebra at the image edge (the field
    of view cuts it); too large always is: nothing cut by the edge grows. A wrong spacing in the header
    scales every vertebra alike; one vertebra too large among normal ones is two under one name, which
    :func:`column_warnings` reports (with the names it may have shifted)."""
    (v_lo, v_hi), (h_lo, h_hi) = VERTEBRA_VOLUME_ML, VERTEBRA_HEIGHT_MM
    warnings = []
    merged = set(_too_large_alone(measurements))
    for name, m in measurements.items():
        if name in merged:
            continue
        volume, height = m["volume_ml"], m.get("height_mm")
        cut = m.get("touches_image_edge", False)
        large, small = [], []
        if volume > v_hi:
            large.append(f"{volume:.0f} mL")
        elif volume < v_lo and not cut:
            small.append(f"{volume:.1f} mL")
        if height is not None and height > h_hi:
            large.append(f"{height:.0f} mm high")
        elif height is not None and height < h_lo and not cut:
            small.append(f"{height:.0f} mm high")
        ranges = f"a whole lumbar vertebra is {v_lo:g}-{v_hi:g} mL and {h_lo:g}-{h_hi:g} mm high"
        if large:
            warnings.append(f"WARNING: implausible result: {name} is {' and '.join(large)}, but {ranges}. Check the "
                            f"voxel spacing in the file header (e.g. a slice spacing written wrongly) before "
                            f"using this result.")
        elif small:
            warnings.append(f"WARNING: implausible result: {name} is only {' and '.join(small)}, but {ranges}. "
                            f"It is probably segmented incompletely (or the spacing in the header is too "
                            f"small); correct it before using it.")
    if not warnings:  # proportions tell merges only when no spacing error scales everything
        warnings += column_warnings(measurements)
    return warnings


def _too_large_alone(measurements: dict[str, dict]) -> list[str]:
    """Vertebrae over the size ranges while at least one other vertebra found is within them."""
    (_, v_hi), (_, h_hi) = VERTEBRA_VOLUME_ML, VERTEBRA_HEIGHT_MM
    large = [n for n, m in measurements.items() if m["volume_ml"] > v_hi or (m.get("height_mm") or 0) > h_hi]
    return large if len(large) < len(measurements) else []


# The column. In the 11 real spines of ../shared/data (label maps) neighbouring lumbar vertebrae's centroids
# lie 22-36 mm apart, no lumbar vertebra is taller than 63 mm, none is taller than 1.2 x the median of the
# whole ones in its spine, and none holds more than 1.2 x the median volume of the others. Two neighbours
# merged under one name measure 73-96 mm and 1.6-1.9 x the others' volume, and one vertebra split under two
# names leaves half a vertebra's gap. Either shifts every name beyond it by one level (the classic
# wrong-level error), so it is flagged. 5 mm slices add at most 5 mm to a height.
CENTROID_GAP_MM = (17.0, 46.0)
MERGED_HEIGHT_MM = 72.0
MERGED_HEIGHT_RATIO = 1.3
MERGED_VOLUME_RATIO = 1.5


def column_warnings(measurements: dict[str, dict]) -> list[str]:
    """Warnings when the vertebrae found do not form a plausible column (see :data:`CENTROID_GAP_MM`):
    a vertebra much taller than the others (two bodies under one name?), or neighbouring names whose
    centroids are too far apart (a vertebra missing or merged) or too close (one vertebra split)."""
    order = [n for n in LABEL_NAMES.values() if n in measurements]
    warnings = []
    shifted = ("The level names from there on may be shifted by one: check them against the ribs and the "
               "sacrum before using this result.")
    heights = {n: measurements[n].get("height_mm") for n in order if measurements[n].get("height_mm")}
    whole = {n: h for n, h in heights.items() if not measurements[n].get("touches_image_edge")}
    volumes = {n: measurements[n]["volume_ml"] for n in order if measurements[n].get("volume_ml")}
    for name in order:
        h, v = heights.get(name), volumes.get(name)
        taller = [x for k, x in whole.items() if k != name]  # a vertebra cut by the edge is no yardstick here
        bigger = [x for k, x in volumes.items() if k != name]
        why = []
        if h is not None and h > MERGED_HEIGHT_MM:
            why.append(f"{h:.0f} mm high (no whole lumbar vertebra is over about {MERGED_HEIGHT_MM - 10:g} mm)")
        elif h is not None and len(taller) >= 2 and h > MERGED_HEIGHT_RATIO * float(np.median(taller)):
            why.append(f"{h:.0f} mm high, {h / np.median(taller):.1f} x the median of the other whole vertebrae")
        if v is not None and len(bigger) >= 3 and v > MERGED_VOLUME_RATIO * float(np.median(bigger)):
            why.append(f"{v:.0f} mL, {v / np.median(bigger):.1f} x the median of the other vertebrae found")
        if why:
            warnings.append(f"WARNING: implausible vertebra: {name} is {' and '.join(why)}; it probably holds two "
                            f"vertebrae under one name. " + shifted)
    lo, hi = CENTROID_GAP_MM
    names = list(LABEL_NAMES.values())
    for a, b in zip(order, order[1:]):
        ca, cb = measurements[a].get("centroid_mm"), measurements[b].get("centroid_mm")
        if ca is None or cb is None or names.index(b) != names.index(a) + 1:
            continue
        gap = float(np.linalg.norm(np.subtract(ca, cb)))
        if gap > hi:
            warnings.append(f"WARNING: implausible column: the centres of {a} and {b} are {gap:.0f} mm apart, but "
                            f"neighbouring lumbar vertebrae are {lo:g}-{hi:g} mm apart; a vertebra between or in "
                            f"them is probably merged into one of them or missed. " + shifted)
        elif gap < lo:
            warnings.append(f"WARNING: implausible column: the centres of {a} and {b} are only {gap:.0f} mm apart, "
                            f"but neighbouring lumbar vertebrae are {lo:g}-{hi:g} mm apart; one vertebra is "
                            f"probably split under two names. " + shifted)
    return warnings


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------

def _fmt(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def format_table(metrics: dict[str, dict], with_mean: bool = True) -> str:
    """Plain-text table: overlap measures with 4 decimals, distances in mm with 2 decimals."""
    header = ["Vertebra", "DSC", "FND", "FPD", "MSD mm", "ASD mm", "HD95 mm", "Status"]
    rows = []
    for name, m in metrics.items():
        rows.append([name] + [_fmt(m.get(k), 4) for k in OVERLAP_KEYS] + [_fmt(m.get(k), 2) for k in DISTANCE_KEYS]
                    + [m.get("status", "")])
    if with_mean and metrics:
        s = summary(metrics)
        rows.append(["Mean"] + [_fmt(s[k], 4) for k in OVERLAP_KEYS] + [_fmt(s[k], 2) for k in DISTANCE_KEYS] + [""])
    if not rows:
        return "No L1-L5 vertebra in either label map."
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) if i in (0, len(header) - 1) else str(c).rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in [header] + rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def format_measurements(measurements: dict[str, dict]) -> str:
    if not measurements:
        return "No vertebra found."
    lines = [f"{'Vertebra':8}  {'Volume mL':>9}  {'Height mm':>9}  {'Mean HU':>8}  {'Median HU':>9}  Centroid LPS mm"]
    for name, m in measurements.items():
        c = ", ".join(f"{v:.1f}" for v in m["centroid_mm"])
        lines.append(f"{name:8}  {m['volume_ml']:9.2f}  {m.get('height_mm', float('nan')):9.1f}  {m['mean_hu']:8.1f}  "
                     f"{m['median_hu']:9.1f}  ({c})")
    return "\n".join(lines)


def to_jsonable(obj):
    """NaN/inf become None (strict JSON has no NaN); numpy scalars become Python numbers."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(data, path) -> Path:
    """Strict JSON (NaN as null), written whole or not at all."""
    from .outputs import write_text_atomic

    return write_text_atomic(path, json.dumps(to_jsonable(data), indent=2, allow_nan=False) + "\n")


def write_metrics_csv(metrics: dict[str, dict], path) -> Path:
    """One row per vertebra; full precision (formatting is for humans, files are for analysis)."""
    from .outputs import write_text_atomic

    columns = ["vertebra", *METRIC_KEYS, "status", "pred_voxels", "ref_voxels"]
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(columns)
    for name, m in metrics.items():
        row = [name]
        for key in columns[1:]:
            v = m.get(key)
            row.append("" if v is None or (isinstance(v, float) and not math.isfinite(v)) else v)
        writer.writerow(row)
    return write_text_atomic(path, text.getvalue())


def write_measurements_csv(measurements: dict[str, dict], path) -> Path:
    """One row per vertebra of :func:`measure`'s result (with the trabecular entries that
    ``trabecular.add_to_measurements`` adds, flattened as ``trabecular_hu_median`` ...); full precision,
    empty cells for no value; the long ROI definitions stay in report.json."""
    from .outputs import write_text_atomic

    rows = []
    for name, m in measurements.items():
        row = {"vertebra": name}
        for key, value in m.items():
            if key == "centroid_mm":
                row.update({f"centroid_{axis}_lps_mm": v for axis, v in zip("xyz", value)})
            elif isinstance(value, dict):
                row.update({f"{key}_{k}": v for k, v in value.items() if k != "roi"})
            else:
                row[key] = value
        rows.append(row)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None or (isinstance(row.get(c), float) and not math.isfinite(row[c]))
                         else row[c] for c in columns])
    return write_text_atomic(path, text.getvalue())
