"""A one-glance PNG check of a result: axial, coronal and sagittal slices with the L1-L5 overlay.

Everything is shown in the canonical LPS orientation whatever the file header says, in radiological
convention (patient left on the viewer's right in axial and coronal views, anterior on the left in the
sagittal view, superior at the top), with the true voxel aspect ratio, so a user can tell at once whether
the vertebrae are in the right place and correctly ordered. The localizer's crop box is drawn in yellow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..constants import LABEL_COLORS, LABEL_NAMES
from ..inference.preprocess import to_canonical

BONE_WINDOW = (400.0, 1800.0)  # level, width in HU (the networks' input window)
OVERLAY_ALPHA = 0.45


def _overlay_rgba(labels_2d: np.ndarray) -> np.ndarray:
    rgba = np.zeros(labels_2d.shape + (4,), dtype=np.float32)
    for label, color in LABEL_COLORS.items():
        sel = labels_2d == label
        rgba[sel, :3] = color
        rgba[sel, 3] = OVERLAY_ALPHA
    return rgba


def _slice_centre(labels_zyx: np.ndarray) -> tuple[int, int, int]:
    """(z, y, x) voxel through the found vertebrae's centre; the volume centre when nothing was found."""
    if labels_zyx.any():
        return tuple(int(round(v)) for v in np.argwhere(labels_zyx > 0).mean(axis=0))
    return tuple(s // 2 for s in labels_zyx.shape)


# Fonts known to cover Chinese and Japanese, tried first (Debian: fonts-droid-fallback, which
# tools/install.sh installs; Noto CJK, WenQuanYi, IPA; macOS Hiragino/PingFang; Windows YaHei/Gothic).
_CJK_FONT_HINTS = ("droidsansfallback", "notosanscjk", "notoserifcjk", "wqy", "ipag", "ipaexg", "takao",
                   "hiragino", "pingfang", "msyh", "yahei", "msgothic", "simsun", "simhei", "uming", "ukai")


def title_fonts(text: str) -> tuple[list[str], str]:
    """(font families, text) for a title: DejaVu Sans, plus an installed font for the characters it lacks
    (a file name in Chinese or Japanese would otherwise show as boxes). Fonts are looked up on disk, not
    only in matplotlib's font cache, which does not notice fonts installed after it was built. When no
    installed font has the characters, they are written as \\uXXXX escapes rather than as boxes."""
    from matplotlib import font_manager, ft2font

    base = "DejaVu Sans"
    missing = {ord(c) for c in text if not c.isspace()} - set(
        ft2font.FT2Font(font_manager.findfont(base)).get_charmap())
    if not missing:
        return [base], text
    paths = sorted(set(font_manager.findSystemFonts()) | {f.fname for f in font_manager.fontManager.ttflist},
                   key=lambda p: not any(h in Path(p).name.lower().replace("-", "").replace("_", "")
                                         for h in _CJK_FONT_HINTS))
    for path in paths:
        try:
            charmap = ft2font.FT2Font(path).get_charmap()
        except (OSError, RuntimeError, ValueError):
            continue
        if missing <= set(charmap):
            font_manager.fontManager.addfont(path)
            return [base, font_manager.FontProperties(fname=path).get_name()], text
    return [base], "".join(c if ord(c) not in missing else f"\\u{ord(c):04x}" for c in text)


def write_preview(ct: sitk.Image, labels: sitk.Image, path, box_index=None, title: str | None = None,
                  window=BONE_WINDOW) -> Path:
    """Write the PNG. ``box_index`` is (lo, hi) (x, y, z) voxel indices in the canonical LPS image, as in
    ``SegmentationResult.box_index``; ``labels`` is on ``ct``'s grid."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    ct_c = to_canonical(ct)
    lab_c = to_canonical(labels)
    hu = sitk.GetArrayViewFromImage(ct_c)
    lab = sitk.GetArrayViewFromImage(lab_c)
    sx, sy, sz = ct_c.GetSpacing()
    cz, cy, cx = _slice_centre(lab)
    level, width = window
    vmin, vmax = level - width / 2, level + width / 2

    # (title, image slice, label slice, aspect, origin, box axes (col axis, row axis) in x=0,y=1,z=2)
    views = [
        (f"Axial (z={cz})", hu[cz], lab[cz], sy / sx, "upper", (0, 1)),
        (f"Coronal (y={cy})", hu[:, cy, :], lab[:, cy, :], sz / sx, "lower", (0, 2)),
        (f"Sagittal (x={cx})", hu[:, :, cx], lab[:, :, cx], sz / sy, "lower", (1, 2)),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.6), facecolor="black")
    for ax, (name, img, lab2d, aspect, origin, (col_axis, row_axis)) in zip(axes, views):
        ax.imshow(img, cmap="gray", vmin=vmin, vmax=vmax, aspect=aspect, origin=origin, interpolation="nearest")
        ax.imshow(_overlay_rgba(lab2d), aspect=aspect, origin=origin, interpolation="nearest")
        if box_index is not None:
            lo, hi = (np.asarray(v, dtype=float) for v in box_index)
            ax.add_patch(Rectangle((lo[col_axis] - 0.5, lo[row_axis] - 0.5), hi[col_axis] - lo[col_axis],
                                   hi[row_axis] - lo[row_axis], fill=False, edgecolor="yellow", linewidth=1.5,
                                   linestyle="--"))
        ax.set_title(name, color="white", fontsize=10)
        ax.set_axis_off()
    present = sorted(set(np.unique(lab).tolist()) & set(LABEL_NAMES))
    handles = [Patch(color=LABEL_COLORS[k], label=LABEL_NAMES[k]) for k in present]
    if box_index is not None:
        handles.append(Patch(facecolor="none", edgecolor="yellow", linestyle="--", label="crop box"))
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, labelcolor="white")
    families, title = title_fonts(title or "LumbarSeg result (radiological view: patient left on the right)")
    fig.suptitle(title, color="white", fontfamily=families)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, facecolor="black")
    plt.close(fig)
    return path
