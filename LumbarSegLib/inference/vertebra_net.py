"""Stage 3's network: one binary 3D U-Net for every vertebra (Payer et al. 2020; Lessmann et al. 2019).

Input: a crop on a fixed 1.25 mm grid centred on one vertebra, two channels: the CT in a bone window and a
Gaussian at that vertebra's centre. Output: one logit per voxel, "this vertebra" against everything else
(its neighbours in the crop included). The same network serves every level, so every labelled vertebra is
a training sample for it.

Why GroupNorm with one group per channel: it computes InstanceNorm's function, but InstanceNorm3d silently
turns a channels-last tensor back to NCDHW, and on this CPU a channels-last 3x3x3 convolution's backward is
about 14x faster (0.12 s against 1.7 s for 8 channels). Every block keeps ``torch.channels_last_3d``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

SPACING_MM = 1.25
# Crop (z, y, x) voxels: 80 mm along the spine, 120 x 120 mm across it.
CROP_ZYX = (64, 96, 96)
HEATMAP_SIGMA_MM = 5.0
# Bone window of the CT channel: HU mapped to about [-1, 2.4].
WINDOW_LOW_HU, WINDOW_HIGH_HU = -200.0, 1500.0
WINDOW_CENTER_HU, WINDOW_SCALE_HU = 300.0, 500.0


@dataclass(frozen=True)
class VertebraNetConfig:
    widths: tuple[int, ...] = (16, 32, 64, 128)
    crop_zyx: tuple[int, int, int] = CROP_ZYX
    spacing_mm: float = SPACING_MM
    sigma_mm: float = HEATMAP_SIGMA_MM

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "VertebraNetConfig":
        return cls(widths=tuple(d["widths"]), crop_zyx=tuple(d["crop_zyx"]), spacing_mm=float(d["spacing_mm"]),
                   sigma_mm=float(d["sigma_mm"]))

    def check(self) -> None:
        levels = len(self.widths)
        if not 2 <= levels <= 6 or any(not 4 <= w <= 256 for w in self.widths):
            raise ValueError(f"implausible stage-3 widths {self.widths}")
        step = 2 ** (levels - 1)
        if any(n % step or not 16 <= n <= 256 for n in self.crop_zyx):
            raise ValueError(f"stage-3 crop {self.crop_zyx} must be 16-256 voxels, divisible by {step}")


def window(hu: torch.Tensor) -> torch.Tensor:
    """The CT channel: bone window, about unit scale."""
    return (hu.clamp(WINDOW_LOW_HU, WINDOW_HIGH_HU) - WINDOW_CENTER_HU) / WINDOW_SCALE_HU


class ConvNormAct(nn.Sequential):
    """Conv3d 3x3x3 -> GroupNorm (one group per channel = InstanceNorm's function) -> LeakyReLU."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(nn.Conv3d(in_ch, out_ch, 3, padding=1, bias=False),
                         nn.GroupNorm(out_ch, out_ch, affine=True),
                         nn.LeakyReLU(0.01, inplace=True))


class DoubleConv(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(ConvNormAct(in_ch, out_ch), ConvNormAct(out_ch, out_ch))


class VertebraUNet(nn.Module):
    """Plain 3D U-Net: max-pool down, transposed-convolution up, skip connections by concatenation."""

    in_channels = 2

    def __init__(self, config: VertebraNetConfig | None = None):
        super().__init__()
        self.config = config or VertebraNetConfig()
        self.config.check()
        w = self.config.widths
        self.encoders = nn.ModuleList([DoubleConv(self.in_channels, w[0])] +
                                      [DoubleConv(w[i - 1], w[i]) for i in range(1, len(w))])
        self.ups = nn.ModuleList([nn.ConvTranspose3d(w[i], w[i - 1], 2, stride=2, bias=False)
                                  for i in range(len(w) - 1, 0, -1)])
        self.decoders = nn.ModuleList([DoubleConv(2 * w[i - 1], w[i - 1]) for i in range(len(w) - 1, 0, -1)])
        self.head = nn.Conv3d(w[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, enc in enumerate(self.encoders):
            x = enc(x if i == 0 else F.max_pool3d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up, dec in zip(self.ups, self.decoders):
            x = dec(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)


def heatmap(crop_zyx, centre_vox_zyx: torch.Tensor, spacing_mm: float, sigma_mm: float) -> torch.Tensor:
    """Gaussians (N, 1, z, y, x) at each crop's vertebra centre, given in voxels of the crop (N, 3)."""
    grids = [torch.arange(n, dtype=torch.float32) for n in crop_zyx]
    z, y, x = torch.meshgrid(*grids, indexing="ij")
    c = centre_vox_zyx.to(torch.float32)
    d2 = ((z[None] - c[:, 0, None, None, None]) ** 2 + (y[None] - c[:, 1, None, None, None]) ** 2
          + (x[None] - c[:, 2, None, None, None]) ** 2) * spacing_mm ** 2
    return torch.exp(-d2 / (2 * sigma_mm ** 2))[:, None]


def network_input(ct_hu: torch.Tensor, centre_vox_zyx: torch.Tensor, config: VertebraNetConfig) -> torch.Tensor:
    """(N, 2, z, y, x) channels-last input from crops of HU (N, z, y, x) and their centres (N, 3) in voxels."""
    hm = heatmap(ct_hu.shape[1:], centre_vox_zyx, config.spacing_mm, config.sigma_mm)
    x = torch.cat([window(ct_hu)[:, None], hm], dim=1)
    return x.contiguous(memory_format=torch.channels_last_3d)


def build(config: VertebraNetConfig | None = None) -> VertebraUNet:
    return VertebraUNet(config).to(memory_format=torch.channels_last_3d)
