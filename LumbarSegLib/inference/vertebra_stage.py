"""Stage 3 at inference: each vertebra segmented on its own crop, the crops merged into one label map.

It takes a list of (centre, label) from whatever found the vertebrae (the XUNet's kept pieces, or the finder's
peaks named by counting: :mod:`.by_vertebra`), so it does not care how they were found or named. Each crop is the CT
resampled onto a fixed 1.25 mm grid around the centre, axis-aligned in LPS, with the heatmap at its middle;
all crops of a scan go through the network in batches. Merging: every voxel of the CT's own grid goes to
the vertebra whose crop gives it the highest probability, if that is at least 0.5, so no voxel has two
names. What is beyond the scan's field of view reads as air, as in training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch

from .net_bundles import BundleKind
from .vertebra_net import VertebraNetConfig, VertebraUNet, build, network_input

OUTSIDE_HU = -1000.0
THRESHOLD = 0.5
BATCH = 4


@dataclass
class VertebraSeed:
    centre_mm: np.ndarray  # LPS
    label: int  # the value the vertebra gets in the output label map (1-255)


def crop_grid(centre_mm, config: VertebraNetConfig) -> sitk.Image:
    """An empty LPS-aligned reference image of the stage-3 crop, centred on ``centre_mm``."""
    size_xyz = [int(n) for n in config.crop_zyx[::-1]]
    ref = sitk.Image(size_xyz, sitk.sitkUInt8)
    ref.SetSpacing([config.spacing_mm] * 3)
    ref.SetOrigin((np.asarray(centre_mm, float) - (np.asarray(size_xyz) - 1) / 2 * config.spacing_mm).tolist())
    return ref


def crop_ct(ct: sitk.Image, centre_mm, config: VertebraNetConfig) -> tuple[np.ndarray, sitk.Image]:
    """The CT (HU) on the crop grid around ``centre_mm``, and that grid."""
    ref = crop_grid(centre_mm, config)
    img = sitk.Resample(ct, ref, sitk.Transform(), sitk.sitkLinear, OUTSIDE_HU, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(img), ref


@torch.inference_mode()
def vertebra_probabilities(ct: sitk.Image, seeds: list[VertebraSeed], net: VertebraUNet,
                           cancel=None) -> list[tuple[np.ndarray, sitk.Image]]:
    """Per seed: (probability (z, y, x) float32 on its crop grid, the crop grid)."""
    config = net.config
    crops = [crop_ct(ct, s.centre_mm, config) for s in seeds]
    middle = torch.tensor([(n - 1) / 2 for n in config.crop_zyx], dtype=torch.float32)
    out = []
    net.eval()
    for i in range(0, len(crops), BATCH):
        if cancel is not None:
            cancel()
        part = crops[i:i + BATCH]
        hu = torch.from_numpy(np.stack([c[0] for c in part]))
        x = network_input(hu, middle.expand(len(part), 3), config)
        prob = torch.sigmoid(net(x))[:, 0].contiguous().numpy()
        out += [(prob[k], part[k][1]) for k in range(len(part))]
    return out


def merge(ct: sitk.Image, seeds: list[VertebraSeed], probabilities) -> np.ndarray:
    """One label map (z, y, x) uint8 on the CT's grid: each voxel to its most probable vertebra (>= 0.5)."""
    return assign(ct, seeds, on_ct_grid(ct, probabilities))


def on_ct_grid(ct: sitk.Image, probabilities) -> list:
    """Each crop's probabilities resampled onto the part of the CT's grid it covers: (slices, uint8 x 255)."""
    out = []
    for prob, ref in probabilities:
        box = _index_box(ct, ref)
        if box is None:
            out.append(None)
            continue
        lo, hi = box
        sub = sitk.Image([int(v) for v in hi - lo], sitk.sitkFloat32)
        sub.SetSpacing(ct.GetSpacing())
        sub.SetDirection(ct.GetDirection())
        sub.SetOrigin(ct.TransformIndexToPhysicalPoint([int(v) for v in lo]))
        p_img = sitk.GetImageFromArray(prob.astype(np.float32))
        p_img.CopyInformation(ref)
        p = sitk.GetArrayFromImage(sitk.Resample(p_img, sub, sitk.Transform(), sitk.sitkLinear, 0.0))
        out.append((tuple(slice(int(a), int(b)) for a, b in zip(lo[::-1], hi[::-1])),
                    np.round(p * 255).astype(np.uint8)))
    return out


def assign(ct: sitk.Image, seeds: list[VertebraSeed], grids: list) -> np.ndarray:
    size = np.asarray(ct.GetSize())
    labels = np.zeros(size[::-1], np.uint8)
    best = np.zeros(size[::-1], np.uint8)  # probability x 255 of the label kept so far
    for seed, grid in zip(seeds, grids):
        if grid is None:
            continue
        sl, q = grid
        win = (q >= round(THRESHOLD * 255)) & (q > best[sl])
        labels[sl][win] = seed.label
        best[sl][win] = q[win]
    return labels


def duplicates(seeds: list[VertebraSeed], grids: list, overlap: float = 0.5) -> dict[int, int]:
    """Seeds whose vertebra is another seed's: label -> the label it duplicates. Two seeds on one vertebra
    (a vertebra split in two by the finder) give two masks of the same bone; of each such pair the seed whose
    mask is less sure (lower summed probability) is the duplicate."""
    masks = []
    for grid in grids:
        if grid is None:
            masks.append(None)
            continue
        sl, q = grid
        masks.append((sl, q >= round(THRESHOLD * 255), float(q.sum(dtype=np.int64))))
    out: dict[int, int] = {}
    for i in range(len(seeds)):
        for j in range(i + 1, len(seeds)):
            if masks[i] is None or masks[j] is None:
                continue
            (si, mi, wi), (sj, mj, wj) = masks[i], masks[j]
            both = tuple(slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(si, sj))
            if any(s.stop <= s.start for s in both):
                continue
            ci = mi[tuple(slice(s.start - a.start, s.stop - a.start) for s, a in zip(both, si))]
            cj = mj[tuple(slice(s.start - a.start, s.stop - a.start) for s, a in zip(both, sj))]
            shared = np.count_nonzero(ci & cj)
            smaller = min(np.count_nonzero(mi), np.count_nonzero(mj))
            if smaller and shared > overlap * smaller:
                weak, strong = (i, j) if wi < wj else (j, i)
                out[seeds[weak].label] = seeds[strong].label
    return out


def _index_box(ct: sitk.Image, ref: sitk.Image):
    """The CT's voxel index box [lo, hi) (x, y, z) that holds the crop ``ref``, or None outside the CT."""
    n = np.asarray(ref.GetSize())
    corners = [ref.TransformContinuousIndexToPhysicalPoint([(-0.5, s - 0.5)[b] for s, b in zip(n, bits)])
               for bits in np.ndindex(2, 2, 2)]
    idx = np.array([ct.TransformPhysicalPointToContinuousIndex(c) for c in corners])
    lo = np.maximum(np.floor(idx.min(0)).astype(int), 0)
    hi = np.minimum(np.ceil(idx.max(0)).astype(int) + 1, np.asarray(ct.GetSize()))
    if np.any(hi <= lo):
        return None
    return lo, hi


def segment_vertebrae(ct: sitk.Image, seeds: list[VertebraSeed], net: VertebraUNet, cancel=None,
                      dropped: dict | None = None) -> np.ndarray:
    """Stage 3 on a CT: the merged label map (z, y, x) of the seeds' vertebrae on the CT's own grid. Seeds
    that are another seed's vertebra (:func:`duplicates`) are left out; ``dropped`` receives them."""
    if not seeds:
        return np.zeros(ct.GetSize()[::-1], np.uint8)
    grids = on_ct_grid(ct, vertebra_probabilities(ct, seeds, net, cancel))
    dup = duplicates(seeds, grids)
    if dropped is not None:
        dropped.update(dup)
    kept = [(s, g) for s, g in zip(seeds, grids) if s.label not in dup]
    return assign(ct, [k[0] for k in kept], [k[1] for k in kept])


def load_weights(state: dict) -> VertebraUNet:
    """A network from a saved state (``config`` + ``weights``; fp16 weights are widened to float32)."""
    net = build(VertebraNetConfig.from_dict(state["config"]))
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state["weights"].items()})
    return net.eval()


# ------------------------------------------------------------------------------------------------------
# The stage-3 model file: configuration, fp16 weights and provenance, read without running pickled code
# ------------------------------------------------------------------------------------------------------

def _build_checked(config: dict) -> VertebraUNet:
    config = VertebraNetConfig.from_dict(config)
    config.check()
    return build(config)


STAGE3 = BundleKind("per-vertebra", "lumbarseg-stage3-1", "lumbarseg_stage3.pt", _build_checked, "--refine",
                    "docs/per_vertebra_stage.md")
BUNDLE_FORMAT = STAGE3.format


def default_stage3_path():
    return STAGE3.default_path()


def save_bundle(state: dict, path, metadata: dict):
    return STAGE3.save(state, path, metadata)


def choose(refine, path=None) -> tuple[VertebraUNet, dict] | None:
    """The stage-3 network a run uses: ``refine`` True (it must be there), False (none) or None (the bundled
    model when it is there)."""
    return STAGE3.choose(refine, path)


def load_bundle(path=None) -> tuple[VertebraUNet, dict] | None:
    return STAGE3.load(path)


def bundle_network(bundle, path) -> tuple[VertebraUNet, dict]:
    return STAGE3.network(bundle, path)
