"""The paper's two networks (Lu et al. 2023), built from small composable ``torch.nn`` blocks.

* :class:`LocalizerUNet` - 3D UNet with the same channel count at every one of its encoder levels whose
  decoder fuses encoder features of all finer scales with the upsampled coarser features; it regresses a
  heatmap of the lumbar spine (stage 1).
* :class:`XUNet` - encoder (w, 2w, 4w), a convolution and an :class:`InceptionBlock` at the bottom
  (8w channels), a decoder whose every level concatenates encoder features of several scales with the
  upsampled features; softmax over background + L1..L5 (stage 2).

One topology serves two configurations (:data:`CONFIGS`): ``paper`` (the published widths and input
sizes) and ``cpu`` (narrower, for the bundled model that must run in seconds on a laptop CPU).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..constants import NUM_CLASSES
from ..errors import ModelError

# Plausible ranges of a configuration, checked before any network is built: a crafted or corrupt config
# (e.g. 10^4 channels or a 2000^3 input) would otherwise allocate gigabytes and run for minutes before
# failing. The shipped configurations sit well inside them (paper: 64 channels, 96x96x128 input).
MAX_CHANNELS = 256
MAX_XUNET_BASE = 64  # its bottom has 8 x base channels
MAX_LEVELS = 6
INPUT_AXIS_RANGE = (8, 320)  # voxels per axis of a network input
MAX_INPUT_VOXELS = 256 ** 3
# channels x voxels of a network's finest feature map: 2^28 float32 values are 1 GiB per map, and a forward
# pass holds a dozen of them (paper: localizer 64 x 96x96x128 = 2^26.2, XUNet 32 x 64x64x128 = 2^24)
MAX_FEATURE_VALUES = 2 ** 28


@dataclass(frozen=True)
class ModelConfig:
    name: str
    localizer_channels: int
    localizer_levels: int
    localizer_input: tuple[int, int, int]  # (x, y, z) voxels
    xunet_base: int  # encoder widths are base, 2*base, 4*base; bottom 8*base
    xunet_input: tuple[int, int, int]  # (x, y, z) voxels
    window_level: float = 400.0
    window_width: float = 1800.0
    # Give XUNet its normalised z position as an extra input channel (CoordConv). Which vertebra is L1
    # depends on where it sits in the crop; a narrow net trained briefly on a CPU learns that slowly
    # from padding effects alone. Off for the paper configuration (one CT channel, as published).
    xunet_coords: bool = False
    # Extra XUNet output classes for the bones next to the lumbar spine, in this order after L5 (class 6, 7):
    # "thoracic" (any thoracic vertebra) and "caudal" (sacrum, or an L6). They are trained like L1-L5 and
    # folded into background on output; naming them makes the network tell T12 from L1 and L5 from S1 by
    # their own features (ribs, sacral shape), so a partial scan does not shift the lumbar names, and the
    # post-processing can anchor the names on them (see pipeline.assign_identities).
    context_classes: tuple[str, ...] = ()

    def __post_init__(self):
        problem = self.range_problem()
        if problem:
            raise ModelError(f"Model configuration '{self.name}' is invalid: {problem}.")

    def range_problem(self) -> str | None:
        """What is out of range in this configuration (None when it is usable)."""
        def whole(v):
            return isinstance(v, int) and not isinstance(v, bool)

        lo, hi = INPUT_AXIS_RANGE
        for key, limit in (("localizer_channels", MAX_CHANNELS), ("localizer_levels", MAX_LEVELS),
                           ("xunet_base", MAX_XUNET_BASE)):
            value = getattr(self, key)
            if not whole(value) or not 1 <= value <= limit:
                return f"{key} is {value!r}, expected a whole number from 1 to {limit}"
        if self.xunet_base % 2:
            return f"xunet_base is {self.xunet_base}, expected an even number (its Inception block needs 8 x base " \
                   f"divisible by 16)"
        for key in ("localizer_input", "xunet_input"):
            size = tuple(getattr(self, key))
            if len(size) != 3 or not all(whole(v) and lo <= v <= hi for v in size):
                return f"{key} is {size!r}, expected three whole numbers of voxels from {lo} to {hi}"
            if size[0] * size[1] * size[2] > MAX_INPUT_VOXELS:
                return f"{key} {size!r} has more than {MAX_INPUT_VOXELS} voxels"
        for key, channels, size in (("localizer", self.localizer_channels, self.localizer_input),
                                    ("XUNet", self.xunet_base, self.xunet_input)):
            values = channels * size[0] * size[1] * size[2]
            if values > MAX_FEATURE_VALUES:
                return (f"the {key}'s finest feature map would hold {values:.3g} values ({channels} channels x "
                        f"{'x'.join(map(str, size))} voxels), more than {MAX_FEATURE_VALUES:.3g}: far too large to run")
        if min(self.localizer_input) < 2 ** (self.localizer_levels - 1):
            return (f"localizer_input {tuple(self.localizer_input)!r} is too small for {self.localizer_levels} "
                    f"levels (each axis needs at least {2 ** (self.localizer_levels - 1)} voxels)")
        for key in ("window_level", "window_width"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not abs(value) < 1e5:
                return f"{key} is {value!r}, expected a number of HU"
        if not self.window_width > 0:
            return f"window_width is {self.window_width!r}, expected a positive number of HU"
        unknown = [c for c in self.context_classes if c not in CONTEXT_CLASSES]
        if unknown or len(set(self.context_classes)) != len(self.context_classes):
            return f"context_classes {tuple(self.context_classes)!r}, expected distinct names out of {CONTEXT_CLASSES}"
        return None

    @property
    def xunet_outputs(self) -> int:
        return NUM_CLASSES + len(self.context_classes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """A configuration from a model file's dict; unknown or missing keys and values out of range are a
        :class:`ModelError` (see :meth:`range_problem`), raised before any network is built."""
        if not isinstance(d, dict):
            raise ModelError(f"Model configuration is a {type(d).__name__}, expected a dict.")
        d = dict(d)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(str(k) for k in set(d) - known)
        if unknown:
            raise ModelError(f"Model configuration has unknown keys: {', '.join(unknown)}.")
        try:
            for key in ("localizer_input", "xunet_input", "context_classes"):
                if key in d:
                    d[key] = tuple(d[key])
            return cls(**d)
        except TypeError as exc:  # a missing key, or a value that is not a sequence
            raise ModelError(f"Model configuration is incomplete or malformed ({exc}).") from None


CONTEXT_CLASSES = ("thoracic", "caudal")
CONFIGS = {
    "paper": ModelConfig("paper", localizer_channels=64, localizer_levels=5, localizer_input=(96, 96, 128),
                         xunet_base=32, xunet_input=(64, 64, 128), context_classes=CONTEXT_CLASSES),
    "cpu": ModelConfig("cpu", localizer_channels=8, localizer_levels=5, localizer_input=(64, 64, 96),
                       xunet_base=8, xunet_input=(64, 64, 128), xunet_coords=True,
                       context_classes=CONTEXT_CLASSES),
}


class ConvNormAct(nn.Sequential):
    """Conv3d -> instance norm -> LeakyReLU, nnU-Net's basic unit (instance norm suits batch size 1-2).

    The instance norm is a GroupNorm with one group per channel: the same function and the same parameters
    (``weight``, ``bias``) as an affine InstanceNorm3d, so models saved with either load into the other, but
    InstanceNorm3d silently turns a channels-last tensor back to NCDHW, where this CPU's 3x3x3 convolutions
    train about 14x slower (see :mod:`.vertebra_net`)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3):
        super().__init__(
            nn.Conv3d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False),
            nn.GroupNorm(out_ch, out_ch, eps=1e-5, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
        )


class DoubleConv(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(ConvNormAct(in_ch, out_ch), ConvNormAct(out_ch, out_ch))


class InceptionBlock(nn.Module):
    """Four parallel branches concatenated along channels (paper: 64 + 128 + 32 + 32 = 256 channels).

    1x1x1(out/4) | 1x1x1(out/8) -> 3x3x3(out/2) | 3x3x3(out/16) -> 5x5x5(out/8) | maxpool -> 1x1x1(out/8)
    """

    def __init__(self, in_ch: int, out_ch: int = 256):
        super().__init__()
        if out_ch % 16:
            raise ValueError(f"InceptionBlock needs out_ch divisible by 16, got {out_ch}")
        self.branch_widths = (out_ch // 4, out_ch // 2, out_ch // 8, out_ch // 8)
        self.branch1 = ConvNormAct(in_ch, out_ch // 4, kernel=1)
        self.branch3 = nn.Sequential(ConvNormAct(in_ch, out_ch // 8, kernel=1),
                                     ConvNormAct(out_ch // 8, out_ch // 2, kernel=3))
        self.branch5 = nn.Sequential(ConvNormAct(in_ch, out_ch // 16, kernel=3),
                                     ConvNormAct(out_ch // 16, out_ch // 8, kernel=5))
        self.branch_pool = nn.Sequential(nn.MaxPool3d(3, stride=1, padding=1),
                                         ConvNormAct(in_ch, out_ch // 8, kernel=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], dim=1)


def _resize_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bring a feature map to another level's grid: max-pool finer maps, trilinear-upsample coarser ones.

    A finer map whose sizes are whole multiples of the target's is max-pooled by those factors: the same windows
    and values as adaptive pooling, which takes 10-20 times as long on a CPU and returns NCDHW."""
    if x.shape[2:] == like.shape[2:]:
        return x
    if x.shape[2] > like.shape[2]:
        factors = tuple(a // b for a, b in zip(x.shape[2:], like.shape[2:]))
        if all(b * f == a for a, b, f in zip(x.shape[2:], like.shape[2:], factors)):
            return F.max_pool3d(x, factors)
        return F.adaptive_max_pool3d(x, like.shape[2:])
    return F.interpolate(x, size=like.shape[2:], mode="trilinear", align_corners=False)


class MultiScaleDecoderLevel(nn.Module):
    """Concatenate the upsampled coarser features with encoder features of several scales, then fuse."""

    def __init__(self, up_ch: int, skip_chs: list[int], out_ch: int):
        super().__init__()
        self.fuse = DoubleConv(up_ch + sum(skip_chs), out_ch)

    def forward(self, coarse: torch.Tensor, skips: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        parts = [_resize_to(coarse, target)] + [_resize_to(s, target) for s in skips]
        return self.fuse(torch.cat(parts, dim=1))


class LocalizerUNet(nn.Module):
    """Stage 1: regresses a lumbar-spine heatmap in [0, 1] from the whole (downsampled) CT."""

    def __init__(self, channels: int = 64, levels: int = 5, in_ch: int = 1):
        super().__init__()
        self.levels = levels
        self.encoders = nn.ModuleList(
            [DoubleConv(in_ch if i == 0 else channels, channels) for i in range(levels)])
        # Decoder level i (0 = finest) sees the coarser result plus every encoder level 0..i.
        self.decoders = nn.ModuleList(
            [MultiScaleDecoderLevel(channels, [channels] * (i + 1), channels) for i in range(levels - 1)])
        self.head = nn.Conv3d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for i, enc in enumerate(self.encoders):
            x = enc(x if i == 0 else F.max_pool3d(x, 2))
            feats.append(x)
        for i in reversed(range(self.levels - 1)):
            x = self.decoders[i](x, feats[: i + 1], feats[i])
        return torch.sigmoid(self.head(x))


class XUNet(nn.Module):
    """Stage 2: per-voxel logits over background + L1..L5 on the lumbar crop."""

    def __init__(self, base: int = 32, in_ch: int = 1, num_classes: int = NUM_CLASSES, coords: bool = False):
        super().__init__()
        self.coords = coords
        in_ch += int(coords)
        widths = [base, 2 * base, 4 * base]
        bottom = 8 * base
        self.enc = nn.ModuleList([DoubleConv(in_ch, widths[0]), DoubleConv(widths[0], widths[1]),
                                  DoubleConv(widths[1], widths[2])])
        self.bottom_conv = ConvNormAct(widths[2], bottom)
        self.inception = InceptionBlock(bottom, bottom)
        # Decoder level i concatenates the upsampled deeper features with all three encoder levels.
        self.dec = nn.ModuleList([
            MultiScaleDecoderLevel(bottom if i == 2 else widths[i + 1], widths, widths[i]) for i in range(3)])
        self.head = nn.Conv3d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.coords:  # z from -1 (inferior face of the crop) to +1 (superior face)
            n, _, d, h, w = x.shape
            z = torch.linspace(-1.0, 1.0, d, dtype=x.dtype, device=x.device).view(1, 1, d, 1, 1)
            x = torch.cat([x, z.expand(n, 1, d, h, w)], dim=1)
        feats = []
        for i, enc in enumerate(self.enc):
            x = enc(x if i == 0 else F.max_pool3d(x, 2))
            feats.append(x)
        x = self.inception(self.bottom_conv(F.max_pool3d(x, 2)))
        for i in reversed(range(3)):
            x = self.dec[i](x, feats, feats[i])
        return self.head(x)


def build_networks(config: ModelConfig) -> tuple[LocalizerUNet, XUNet]:
    return (LocalizerUNet(config.localizer_channels, config.localizer_levels),
            XUNet(config.xunet_base, coords=config.xunet_coords, num_classes=config.xunet_outputs))


NEW_CLASS_BIAS = -2.0  # logit offset of output classes a checkpoint lacks, relative to its background


def load_compatible_state(module: nn.Module, state: dict):
    """Load weights of a smaller predecessor so that training can continue from it.

    * Input channels the checkpoint lacks (e.g. a newly added coordinate channel) start at zero weight, so
      the network computes exactly what the checkpoint did.
    * Output classes the checkpoint lacks (e.g. context classes added after L5) start as copies of its
      background class with a lower bias: they begin as "background, but less likely" and split off from
      background as training shows them.
    """
    own = module.state_dict()
    adapted = {}
    for k, v in state.items():
        v = v.float() if v.is_floating_point() else v
        target = own.get(k)
        if target is not None and v.dim() == 5 and target.dim() == 5 and v.shape[1] < target.shape[1] \
                and v.shape[0] == target.shape[0] and v.shape[2:] == target.shape[2:]:
            pad = torch.zeros_like(target)
            pad[:, : v.shape[1]] = v
            v = pad
        if k.startswith("head.") and target is not None and v.shape[0] < target.shape[0] \
                and v.shape[1:] == target.shape[1:]:
            grown = torch.cat([v, v[:1].expand(target.shape[0] - v.shape[0], *v.shape[1:])]).clone()
            if k.endswith("bias"):
                grown[v.shape[0]:] += NEW_CLASS_BIAS
            v = grown
        adapted[k] = v
    module.load_state_dict(adapted)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
