"""The finder at inference (issue 23; trained by ``training/finder_train.py``): the XUNet topology on a fixed
2 mm grid, slid along the spine instead of one crop stretched to 64 x 64 x 128, with the CT alone as input.

* :class:`FinderConfig`, :func:`build_finder`, :func:`load_finder` - its network and a saved one;
* :func:`strip_grid` - an LPS-aligned strip of the fixed grid around the column: the window's width across
  it, the column's whole height (plus a margin for T12 and the sacrum) along it;
* :func:`strip_probabilities` - the network on overlapping windows along the strip, blended with weights that
  fall off towards each window's top and bottom (a vertebra cut by a window's edge is judged by the window
  that holds it whole);
* :func:`centre_peaks` - the centre channel's local maxima: one per vertebra, whatever its level;
  :func:`look_again` in a gap left by a missed vertebra, :func:`sacral_peak` one gap below the column;
* :func:`find_vertebrae` - all of it on a CT: a :class:`Peak` per vertebra (its centre and the class evidence
  around it), the instances that the counting (:func:`.peak_naming.name_peaks`) names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from ..constants import LABEL_NAMES, NUM_CLASSES
from .net_bundles import BundleKind
from .networks import CONTEXT_CLASSES, XUNet
from .preprocess import apply_window

# How far the strip reaches beyond the column's box at each end: T12 above L1 and the sacrum below L5 anchor
# the count, and their centres lie a gap (26-37 mm) beyond; with 40 mm the sacrum's peak sat on the strip's last
# slices on held-out sub-verse005, cut off or missed.
STRIP_MARGIN_MM = 60.0
# Windows overlap by this share of their height. With a third, a vertebra near a window's end was read mostly by
# that window's last slices, where the network sees half of it: held-out sub-verse008 re-imaged at 5 mm was counted
# from T11 over the localizer's box (from T12 over its true column), every name one level off; by half, every
# vertebra lies well inside some window, and that count is right (docs/training.md, "Session 19").
OVERLAP = 0.5
# A peak of the centre channel: a local maximum of at least PEAK_MIN, no other within PEAK_APART_MM (half the
# shortest gap between vertebral centres, 22 mm, and some).
PEAK_MIN = 0.4
PEAK_APART_MM = 13.0
# Between two peaks further apart than a missed vertebra leaves (instances.GAP_MISSED_MM), the strongest
# local maximum of at least LOOK_AGAIN_MIN, at least PEAK_APART_MM from both, is a vertebra too (a weak
# peak: a fractured, blurred or half-out-of-view body).
LOOK_AGAIN_MIN = 0.15
# Class probabilities are averaged over this radius around a peak (a vertebral body is 30-50 mm across).
EVIDENCE_MM = 8.0
N_CLASSES = NUM_CLASSES + len(CONTEXT_CLASSES)  # background, L1-L5, thoracic, caudal; then the centre channel
CLASS_NAMES = {**LABEL_NAMES, **{NUM_CLASSES + i: name for i, name in enumerate(CONTEXT_CLASSES)}}


@dataclass(frozen=True)
class FinderConfig:
    base: int = 8  # the bundled XUNet's width in the cpu configuration
    crop_zyx: tuple[int, int, int] = (96, 64, 64)  # 192 mm along the spine (five or six vertebrae), 128 across
    spacing_mm: float = 2.0
    sigma_mm: float = 6.0  # of the Gaussian at each vertebral centre that the centre channel regresses

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FinderConfig":
        return cls(base=int(d["base"]), crop_zyx=tuple(int(v) for v in d["crop_zyx"]),
                   spacing_mm=float(d["spacing_mm"]), sigma_mm=float(d["sigma_mm"]))


def build_finder(config: FinderConfig) -> XUNet:
    """The finder's network; its ``config`` attribute is ``config`` (the grid it runs on)."""
    net = XUNet(base=config.base, in_ch=1, num_classes=N_CLASSES + 1).to(memory_format=torch.channels_last_3d)
    net.config = config
    return net


def _build_checked(config: dict) -> XUNet:
    config = FinderConfig.from_dict(config)
    if config.base < 1 or config.spacing_mm <= 0 or any(n % 16 or not 32 <= n <= 256 for n in config.crop_zyx):
        raise ValueError(f"finder grid {config.crop_zyx} at {config.spacing_mm} mm, base {config.base}: implausible")
    return build_finder(config)


FINDER_BUNDLE = BundleKind("finder", "lumbarseg-finder-1", "lumbarseg_finder.pt", _build_checked, "--finder",
                           "docs/training.md")


def choose(wanted, stage3, path=None):
    """(network, description) of the finder a run uses, or None: ``wanted`` True (it must be there), False
    (none) or None (the bundled one when it is there). Its path ends in stage 3 (:mod:`.by_vertebra`), so
    without ``stage3`` it cannot run: asked for, that is an error; by default the XUNet's path runs."""
    from ..errors import InputError

    if wanted and not stage3:
        raise InputError("--finder names the vertebrae that the per-vertebra stage then segments; it needs that "
                         "stage: run without --no-refine, or without --finder.")
    return FINDER_BUNDLE.choose(wanted, path) if stage3 else None


def load_finder(state: dict, path="the finder's file") -> XUNet:
    """The network in eval mode (its ``config`` attribute set) from a saved ``{"config", "weights"}`` (a training
    phase's checkpoint or a model file's contents; fp16 weights are widened); ``path`` names it in errors."""
    return FINDER_BUNDLE.network({**state, "format": FINDER_BUNDLE.format}, path)[0]


@dataclass
class Peak:
    """One vertebra the finder found: its centre (LPS x, y, z mm), the centre channel's value there, and the
    mean class probabilities around it (``evidence``, index as :data:`CLASS_NAMES`, 0 background)."""
    centre_mm: np.ndarray
    value: float
    evidence: np.ndarray

    @property
    def name(self) -> str:
        """The class with the most evidence, background aside: L1..L5, "thoracic" or "caudal"."""
        return CLASS_NAMES[int(np.argmax(self.evidence[1:])) + 1]


def strip_grid(centre_mm, z_range_mm: tuple[float, float], crop_zyx, spacing_mm: float) -> sitk.Image:
    """An empty LPS-aligned reference image: ``crop_zyx[1:]`` voxels across, centred on ``centre_mm`` (x, y
    LPS), covering ``z_range_mm`` (low, high) plus :data:`STRIP_MARGIN_MM` at each end, at least one window."""
    lo, hi = min(z_range_mm) - STRIP_MARGIN_MM, max(z_range_mm) + STRIP_MARGIN_MM
    nz = max(int(crop_zyx[0]), int(np.ceil((hi - lo) / spacing_mm)) + 1)
    size_xyz = [int(crop_zyx[2]), int(crop_zyx[1]), nz]
    ref = sitk.Image(size_xyz, sitk.sitkUInt8)
    ref.SetSpacing([float(spacing_mm)] * 3)
    mid_z = (lo + hi) / 2
    origin = [float(centre_mm[0]) - (size_xyz[0] - 1) / 2 * spacing_mm,
              float(centre_mm[1]) - (size_xyz[1] - 1) / 2 * spacing_mm, mid_z - (nz - 1) / 2 * spacing_mm]
    ref.SetOrigin(origin)
    return ref


def window_starts(n: int, window: int, overlap: float = OVERLAP) -> list[int]:
    """First slices of windows of ``window`` slices covering ``0 .. n-1`` with about ``overlap`` between
    neighbours; the last one ends at ``n`` (``n >= window``)."""
    if n <= window:
        return [0]
    stride = max(1, int(round(window * (1.0 - overlap))))
    starts = list(range(0, n - window + 1, stride))
    if starts[-1] != n - window:
        starts.append(n - window)
    return starts


def _ramp(window: int) -> np.ndarray:
    """Blending weights along a window: 1 in the middle half, falling linearly to 0.1 at its ends."""
    pos = np.abs(np.arange(window) - (window - 1) / 2) / ((window - 1) / 2 or 1)  # 0 middle .. 1 ends
    return np.clip(1.0 - (pos - 0.5) * 1.8, 0.1, 1.0).astype(np.float32)


@torch.inference_mode()
def strip_probabilities(net, strip_input: np.ndarray, window: int, n_classes: int, batch: int = 2) -> np.ndarray:
    """(n_classes + 1, Z, Y, X) float32: softmax over the classes and the sigmoid centre channel of ``net``
    on windows of ``window`` slices along ``strip_input`` (Z, Y, X; the network's input scale), blended."""
    z = strip_input.shape[0]
    starts = window_starts(z, window)
    ramp = _ramp(window)
    acc = np.zeros((n_classes + 1,) + strip_input.shape, np.float32)
    weight = np.zeros(z, np.float32)
    net.eval()
    for i in range(0, len(starts), batch):
        part = starts[i:i + batch]
        x = torch.from_numpy(np.stack([strip_input[s:s + window] for s in part]))[:, None]
        out = net(x.contiguous(memory_format=torch.channels_last_3d)).float()
        probs = torch.cat([torch.softmax(out[:, :n_classes], dim=1), torch.sigmoid(out[:, n_classes:])], dim=1)
        for s, p in zip(part, probs.numpy()):
            acc[:, s:s + window] += p * ramp[None, :, None, None]
            weight[s:s + window] += ramp
    return acc / weight[None, :, None, None]


def centre_peaks(heat: np.ndarray, spacing_mm: float, minimum: float = PEAK_MIN,
                 apart_mm: float = PEAK_APART_MM) -> list[tuple[np.ndarray, float]]:
    """(centre in voxels (z, y, x), peak value) of each local maximum of ``heat`` of at least ``minimum`` with
    no higher one within ``apart_mm`` along the strip (z); top (largest z) first. Distance counts along the
    column only: the strip holds one spine, so two maxima side by side at one height (a wide body's two
    halves) are one vertebra."""
    size = max(3, 2 * int(np.ceil(apart_mm / spacing_mm)) + 1)
    local = (heat == ndimage.maximum_filter(heat, size=size, mode="constant")) & (heat >= minimum)
    peaks = [(np.asarray(p, float), float(heat[tuple(p)])) for p in np.argwhere(local)]
    kept: list[tuple[np.ndarray, float]] = []
    for p, v in sorted(peaks, key=lambda pv: -pv[1]):  # plateaus give several equal maxima: keep one
        if all(abs(p[0] - q[0]) * spacing_mm > apart_mm for q, _ in kept):
            kept.append((p, v))
    return sorted(kept, key=lambda pv: -pv[0][0])


def look_again(peaks: list[tuple[np.ndarray, float]], weak: list[tuple[np.ndarray, float]], spacing_mm: float,
               missed_mm: float, apart_mm: float = PEAK_APART_MM) -> list[tuple[np.ndarray, float]]:
    """``peaks`` (top first) with, in each gap wider than ``missed_mm`` along the strip, the strongest of the
    ``weak`` peaks (:func:`centre_peaks` at :data:`LOOK_AGAIN_MIN`) that lies ``apart_mm`` (along the strip) from
    both ends of the gap; top first. The gap is measured along the strip, as naming measures it
    (:func:`.instances.gaps_along_column`): a peak on an arch far behind its neighbour (held-out sub-verse014 at
    5 mm: 58 mm away in space, 28 along the spine) is no room for a missed vertebra."""
    out = list(peaks)
    for (a, _), (b, _) in zip(peaks, peaks[1:]):
        if abs(float(a[0] - b[0])) * spacing_mm <= missed_mm:
            continue
        between = [(p, v) for p, v in weak if b[0] < p[0] < a[0]
                   and min(a[0] - p[0], p[0] - b[0]) * spacing_mm > apart_mm]
        if between:
            out.append(max(between, key=lambda pv: pv[1]))
    return sorted(out, key=lambda pv: -pv[0][0])


def find_vertebrae(ct: sitk.Image, net, centre_xy, z_range_mm, outside_hu: float = -1000.0) -> list[Peak]:
    """Every vertebra the finder ``net`` sees along the column through ``centre_xy`` (LPS x, y mm) over
    ``z_range_mm`` (plus :data:`STRIP_MARGIN_MM`), top first. ``ct`` in HU, any orientation."""
    from .instances import GAP_MISSED_MM

    config = net.config
    ref = strip_grid(centre_xy, z_range_mm, config.crop_zyx, config.spacing_mm)
    hu = sitk.GetArrayFromImage(sitk.Resample(ct, ref, sitk.Transform(), sitk.sitkLinear, outside_hu,
                                              sitk.sitkFloat32))
    probs = strip_probabilities(net, apply_window(hu), config.crop_zyx[0], N_CLASSES)
    heat = probs[N_CLASSES]
    # one pass: the peaks kept at PEAK_MIN are those of the weaker threshold that reach it (the strongest are kept
    # first, so weaker ones never suppress them)
    weak = centre_peaks(heat, config.spacing_mm, LOOK_AGAIN_MIN)
    peaks = look_again([pv for pv in weak if pv[1] >= PEAK_MIN], weak, config.spacing_mm, GAP_MISSED_MM)
    r = int(np.ceil(EVIDENCE_MM / config.spacing_mm))

    def peak(vox, value) -> Peak:
        i = [int(v) for v in vox]
        region = (slice(None),) + tuple(slice(max(0, v - r), v + r + 1) for v in i)
        evidence = probs[:N_CLASSES][region].mean(axis=(1, 2, 3))
        centre = np.asarray(ref.TransformContinuousIndexToPhysicalPoint([float(v) for v in vox[::-1]]))
        return Peak(centre, value, evidence)

    out = [peak(vox, value) for vox, value in peaks]
    if out and out[-1].name != "caudal":  # below a lowest peak that is not the sacrum's, a weaker one may be
        sacrum = sacral_peak(peaks, weak, config.spacing_mm, GAP_MISSED_MM, peak)
        if sacrum is not None:
            out.append(sacrum)
    return out


def sacral_peak(peaks, weak, spacing_mm: float, missed_mm: float, peak) -> Peak | None:
    """The strongest of the ``weak`` peaks below the lowest of ``peaks`` (both as :func:`centre_peaks` gives them),
    within one gap of it (``missed_mm`` along the strip, and further than :data:`PEAK_APART_MM`), that the finder
    calls caudal (``peak(voxel, value)`` makes the :class:`Peak`); None where there is none.

    Why: the sacrum is rare among the finder's training windows (phantoms, one real CT and two label maps carry it),
    so its centre channel peaks there at 0.2-0.35, under :data:`PEAK_MIN`, and the count's sacrum anchor, which
    needs a caudal-looking peak right below L5, never fired on 12 pelvic phantoms. A caudal peak is only that
    anchor's half: the CT's own pelvis must confirm it (:func:`.peak_naming.name_peaks`), and it is never
    segmented (:func:`.by_vertebra.down_to_l5`)."""
    if not peaks:
        return None
    low = min(p[0] for p, _ in peaks)
    below = [(p, v) for p, v in weak if PEAK_APART_MM < (low - p[0]) * spacing_mm <= missed_mm]
    for vox, value in sorted(below, key=lambda pv: -pv[1]):
        candidate = peak(vox, value)
        if candidate.name == "caudal":
            return candidate
    return None


def count_levels(canonical: sitk.Image, peaks: list[Peak], hu: np.ndarray | None = None):
    """:func:`.peak_naming.name_peaks` on ``peaks`` found in ``canonical`` (an LPS-aligned CT, as
    :func:`.preprocess.to_canonical` gives): their centres in its (z, y, x) mm frame, its bone read for the ribs
    and the sacrum (``hu``: its voxels, if already at hand)."""
    from .peak_naming import name_peaks

    if not peaks:
        return None
    spacing_zyx = np.asarray(canonical.GetSpacing(), float)[::-1]
    centres = [np.asarray(canonical.TransformPhysicalPointToContinuousIndex([float(v) for v in p.centre_mm]))[::-1]
               * spacing_zyx for p in peaks]
    hu = sitk.GetArrayViewFromImage(canonical) if hu is None else hu
    return name_peaks(centres, np.array([p.evidence for p in peaks]), CONTEXT_CLASSES, [p.value for p in peaks],
                      hu, spacing_zyx)
