"""Regenerate ``docs/screenshot.png`` (the README picture) and, with ``--icon``, the module icon.

The picture is made the way the Slicer module makes its result: a synthetic CT (``LumbarSegLib.phantoms``)
goes into a volume node of a real MRML scene (slicer-core), the segmentation flow puts the L1-L5 segments
(closed surfaces, fixed colours) and the "Lumbar crop" ROI into the scene, and the segmentation node's
own surfaces are rendered offscreen (EGL) beside a mid-sagittal slice with the label overlay.

With a trained model bundled (``Resources/Models/lumbarseg_cpu.pt``) the labels are the model's output.
Without one (random weights would give noise) the phantom's reference labels are used and the caption
says so.

    python3 tools/make_screenshot.py            # docs/screenshot.png
    python3 tools/make_screenshot.py --icon     # also LumbarSeg/Resources/Icons/LumbarSeg.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_icon(path: Path, size: int = 128) -> Path:
    """A 128x128 icon: five stacked vertebrae (bodies and spinous processes) in the L1-L5 colours."""
    from LumbarSegLib.constants import LABEL_COLORS
    from LumbarSegLib.scene.render import write_png

    ss = 4  # supersampling for anti-aliased edges
    n = size * ss
    y, x = (np.mgrid[0:n, 0:n] + 0.5) / ss
    rgba = np.zeros((n, n, 4), float)

    def rounded_box(cx, cy, hw, hh, r):
        qx, qy = np.abs(x - cx) - (hw - r), np.abs(y - cy) - (hh - r)
        return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0) - r

    def paint(mask_sdf, color, alpha=1.0):
        cover = np.clip(0.5 - mask_sdf * ss / 2, 0, 1)[..., None] * alpha
        rgba[..., :3] = rgba[..., :3] * (1 - cover) + np.asarray(color) * cover
        rgba[..., 3:] = rgba[..., 3:] * (1 - cover) + cover

    paint(rounded_box(64, 64, 62, 62, 18), (0.13, 0.15, 0.22))  # dark tile
    for i, label in enumerate(range(1, 6)):
        cy = 18 + i * 23
        color = np.asarray(LABEL_COLORS[label])
        shade = color * 0.6
        paint(rounded_box(72, cy + 3, 11, 5, 3), shade)  # spinous process (posterior, to the right)
        paint(rounded_box(52, cy + 1, 6, 3, 2), shade)  # transverse process hint
        paint(rounded_box(40, cy, 22, 9, 5), color)  # vertebral body
        paint(rounded_box(36, cy - 4, 14, 2, 1.5), np.minimum(color + 0.35, 1.0), 0.6)  # highlight
    icon = rgba.reshape(size, ss, size, ss, 4).mean(axis=(1, 3))
    return write_png((icon * 255).round().astype(np.uint8), path)


def build_scene(seed: int = 5, use_model: bool | None = None, shape=(192, 160, 200), spacing=(1.1, 1.1, 1.6)):
    """(scene, volume node, outcome, caption) for the picture, through the module's own scene logic."""
    import SimpleITK as sitk
    import slicer

    from LumbarSegLib import phantoms
    from LumbarSegLib.inference import pipeline
    from LumbarSegLib.constants import VERSE_LUMBAR
    from LumbarSegLib.inference.models import default_model_path, load_model
    from LumbarSegLib.scene.run import apply_result, run_segmentation
    from LumbarSegLib.scene.scene import ensure_segmentations_logic
    from LumbarSegLib.scene.volumes import sitk_to_volume_node

    ct, verse = phantoms.generate_phantom(seed, shape=shape, spacing=spacing, fov="lumbar")
    scene = slicer.vtkMRMLScene()
    ensure_segmentations_logic(scene)
    volume = sitk_to_volume_node(scene, ct, "Phantom CT")
    if use_model is None:
        use_model = default_model_path().is_file()
    outcome = None
    if use_model:
        result, outcome = run_segmentation(scene, volume, model=load_model(), device="cpu")
        caption = f"bundled model on a synthetic CT: found {', '.join(result.found)}"
        if not result.found:  # nothing to picture: fall back to the reference labels
            outcome = None
    if outcome is None:
        lut = np.zeros(256, np.uint8)
        for code, label in VERSE_LUMBAR.items():
            lut[code] = label
        labels = sitk.GetImageFromArray(lut[sitk.GetArrayFromImage(verse)])
        labels.CopyInformation(ct)
        k, j, i = np.nonzero(sitk.GetArrayViewFromImage(labels))
        size = np.asarray(ct.GetSize())
        grow = (0.1 * size).astype(int)
        lo = np.maximum([i.min(), j.min(), k.min()] - grow, 0)
        hi = np.minimum(np.array([i.max(), j.max(), k.max()]) + 1 + grow, size)
        found = ["L1", "L2", "L3", "L4", "L5"]
        result = pipeline.SegmentationResult(labels, found, (tuple(lo), tuple(hi)),
                                             pipeline.index_box_to_lps(ct, lo, hi), 1.0, {}, [], True)
        outcome = apply_result(scene, volume, result)
        caption = "no trained model bundled: phantom reference labels through the module's scene logic"
    return scene, volume, outcome, caption


def make_screenshot(path: Path, width: int = 1200, height: int = 800, use_model: bool | None = None,
                    **scene_options) -> Path:
    from LumbarSegLib.scene.render import render_segmentation_3d, render_slice_overlay, write_png

    _, volume, outcome, caption = build_scene(use_model=use_model, **scene_options)
    left_w = int(width * 0.62)
    render = render_segmentation_3d(outcome.segmentation_node, outcome.roi_node, size=(left_w, height))
    gap = np.full((height, 8, 3), 20, np.uint8)
    overlay = render_slice_overlay(volume, outcome.segmentation_node, size=(width - left_w - 8, height),
                                      plane="sagittal")
    picture = np.concatenate([render, gap, overlay], axis=1)
    write_png(picture, path)
    print(f"wrote {path} ({caption})")
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "docs" / "screenshot.png")
    parser.add_argument("--icon", action="store_true", help="also write LumbarSeg/Resources/Icons/LumbarSeg.png")
    parser.add_argument("--reference-labels", action="store_true",
                        help="use the phantom's reference labels even when a trained model is bundled")
    args = parser.parse_args(argv)
    if args.icon:
        print("wrote", make_icon(ROOT / "LumbarSeg" / "Resources" / "Icons" / "LumbarSeg.png"))
    make_screenshot(args.output, use_model=False if args.reference_labels else None)


if __name__ == "__main__":
    main()
