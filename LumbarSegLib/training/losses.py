"""Losses and validation scores of the two networks."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..constants import LABEL_NAMES
from .data import IGNORE


def localizer_loss(pred: torch.Tensor, target: torch.Tensor, fg_weight: float = 10.0) -> torch.Tensor:
    """MSE weighted up on the lumbar spine (the heatmap is mostly background)."""
    return ((pred - target) ** 2 * (1.0 + fg_weight * target)).mean()


def dice_ce_loss(logits: torch.Tensor, labels: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Cross-entropy + (1 - soft Dice over every class but background); ``labels`` (N, D, H, W) int64 in
    0..C-1, voxels labelled :data:`data.IGNORE` count in neither term."""
    ce = F.cross_entropy(logits, labels, ignore_index=IGNORE)
    valid = (labels != IGNORE).unsqueeze(1).float()
    probs = torch.softmax(logits, dim=1)[:, 1:] * valid
    onehot = F.one_hot(labels.masked_fill(labels == IGNORE, 0), logits.shape[1]).permute(0, 4, 1, 2, 3)[:, 1:].float()
    dims = (0, 2, 3, 4)
    inter = (probs * onehot).sum(dims)
    dice = (2 * inter + smooth) / (probs.sum(dims) + onehot.sum(dims) + smooth)
    return ce + (1.0 - dice.mean())


def dice_per_label(pred: np.ndarray, ref: np.ndarray) -> dict[int, float]:
    """Dice of L1..L5 between a predicted and a target label array (ignored target voxels left out)."""
    out = {}
    valid = ref != IGNORE
    for k in LABEL_NAMES:
        p, r = (pred == k) & valid, ref == k
        total = int(p.sum()) + int(r.sum())
        if total:
            out[k] = 2.0 * int((p & r).sum()) / total
    return out


def _box_iou(a, b) -> float:
    if a is None or b is None:
        return 0.0
    lo = np.maximum(a[0], b[0])
    hi = np.minimum(a[1], b[1])
    inter = float(np.prod(np.clip(hi - lo, 0, None)))
    va, vb = float(np.prod(a[1] - a[0])), float(np.prod(b[1] - b[0]))
    return inter / (va + vb - inter) if va + vb - inter > 0 else 0.0
