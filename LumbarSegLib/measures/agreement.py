"""Per-vertebra agreement with a reference segmentation (measurements of one segmentation: :mod:`.measurements`).

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
import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..constants import LABEL_NAMES
from ..errors import InputError
from ..io.text_files import write_text_atomic

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


def write_metrics_csv(metrics: dict[str, dict], path) -> Path:
    """One row per vertebra; full precision (formatting is for humans, files are for analysis)."""
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
