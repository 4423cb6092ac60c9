"""Regenerate ``docs/trabecular_roi.png``: the trabecular ROIs on a real CT (the README's figure).

A real VerSe CT from ``../shared/data/real`` (public, CC BY-SA 4.0; the PNG is a figure, not data) is
segmented by the bundled model (``--labels reference`` uses the manual label instead), the ROIs are placed
by ``LumbarSegLib.measures.trabecular`` and drawn on a sagittal slice through the bodies' midline and on L1's
mid-height axial section: the 3D core of each vertebra (filled) and L1's single-slice ellipse (yellow).

    python3 tools/make_trabecular_figure.py [--case sub-verse008] [--labels pipeline|reference] [-o PNG]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WINDOW = (250.0, 1200.0)  # level, width: trabecular bone readable beside cortex


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="sub-verse008")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "real"))
    parser.add_argument("--labels", choices=["pipeline", "reference"], default="pipeline")
    parser.add_argument("-o", "--output", default=str(ROOT / "docs" / "trabecular_roi.png"))
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import SimpleITK as sitk

    from LumbarSegLib.measures import bone_screening, trabecular
    from LumbarSegLib.inference import pipeline
    from LumbarSegLib.io import images, label_maps
    from LumbarSegLib.constants import LABEL_COLORS
    from LumbarSegLib.inference.preprocess import to_canonical

    ct = images.read_ct(Path(args.data) / f"{args.case}_ct.nii.gz")
    if args.labels == "reference":
        labels = label_maps.read_labelmap(Path(args.data) / f"{args.case}_seg-vert_msk.nii.gz")
    else:
        from LumbarSegLib.inference.models import choose_model, load_model, resolve_device

        labels = pipeline.segment(ct, model=load_model(choose_model(None, resolve_device("cpu"))), device="cpu").labels
    lab = sitk.GetArrayFromImage(labels)
    results = trabecular.measure(lab, sitk.GetArrayViewFromImage(ct), ct)
    rois = np.zeros(lab.shape, np.uint8)  # 1..5 core of L1..L5, 9 L1's single-slice ellipse
    for seg in trabecular.roi_segments(results):
        part = rois[seg.region]
        part[seg.mask] = 9 if seg.kind == "single_slice" else seg.label
    as_image = []
    for array in (rois, lab):
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(ct)
        as_image.append(sitk.GetArrayFromImage(to_canonical(image)))
    rois_c, lab_c = as_image
    ct_c = to_canonical(ct)
    hu = sitk.GetArrayFromImage(ct_c)
    sx, sy, sz = ct_c.GetSpacing()
    core = np.argwhere((rois_c > 0) & (rois_c < 9))
    x_mid = int(np.median(core[:, 2]))
    ellipse = np.argwhere(rois_c == 9)
    z_l1 = int(np.median(ellipse[:, 0])) if ellipse.size else int(np.median(np.argwhere(rois_c == 1)[:, 0]))

    def overlay(roi2d, lab2d):
        rgba = np.zeros(roi2d.shape + (4,), np.float32)
        for label, color in LABEL_COLORS.items():
            rgba[roi2d == label, :3] = color
            rgba[roi2d == label, 3] = 0.55
        rgba[roi2d == 9] = (1.0, 0.9, 0.0, 0.9)
        return rgba

    level, width = WINDOW
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 5.0), facecolor="black",
                             gridspec_kw={"width_ratios": [hu.shape[1] * sy, hu.shape[2] * sx]})
    views = [(hu[:, :, x_mid], rois_c[:, :, x_mid], lab_c[:, :, x_mid], sz / sy, "lower", "Sagittal (midline)"),
             (hu[z_l1], rois_c[z_l1], lab_c[z_l1], sy / sx, "upper", "Axial, L1 mid-height")]
    for ax, (img, roi2d, lab2d, aspect, origin, title) in zip(axes, views):
        ax.imshow(img, cmap="gray", vmin=level - width / 2, vmax=level + width / 2, aspect=aspect, origin=origin,
                  interpolation="nearest")
        ax.contour(lab2d > 0, levels=[0.5], colors="white", linewidths=0.6, origin=origin)
        ax.imshow(overlay(roi2d, lab2d), aspect=aspect, origin=origin, interpolation="nearest")
        rows, cols = np.nonzero(lab2d)
        if rows.size:  # zoom on the vertebrae, 15 voxels around
            ax.set_xlim(max(cols.min() - 15, 0) - 0.5, min(cols.max() + 15, img.shape[1] - 1) + 0.5)
            r0, r1 = max(rows.min() - 15, 0) - 0.5, min(rows.max() + 15, img.shape[0] - 1) + 0.5
            ax.set_ylim((r0, r1) if origin == "lower" else (r1, r0))
        ax.set_title(title, color="white", fontsize=10)
        ax.set_axis_off()
    lines = []
    for name, r in results.items():
        core_text = f"{r.core.median:.0f}" if r.core.reason is None else "no value"
        lines.append(f"{name} core {core_text}")
    l1 = results.get("L1")
    if l1 is not None and l1.single_slice.reason is None:
        flag = bone_screening.screening_category(l1.single_slice.mean)
        lines.append(f"L1 single slice {l1.single_slice.mean:.0f} HU: {flag}")
    source = "bundled model's segmentation" if args.labels == "pipeline" else "manual reference label"
    fig.suptitle(f"Trabecular ROIs on real CT {args.case} (VerSe, CC BY-SA 4.0), placed from the {source}\n"
                 + "   ".join(lines) + " (HU; research use only)", color="white", fontsize=9)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, facecolor="black")
    plt.close(fig)
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
