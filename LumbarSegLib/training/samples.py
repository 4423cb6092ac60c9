"""Feeding one network: the precomputed cases in memory, augmented samples, epoch-ordered batches and the
torch ``DataLoader`` that makes them (in worker processes on a GPU machine, in the training process on the CPU).

A sample's augmentation is drawn from ``(seed, network, epoch, case)`` alone, so a batch is the same
whichever loader worker makes it and however many workers there are.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .augmentation import augment_pair

KINDS = ("localizer", "xunet")
DEFAULT_SPATIAL_P = {"localizer": 0.6, "xunet": 0.7}


def load_items(paths, kind: str) -> list[dict]:
    """The cached arrays one network trains on (float16 images, uint8 labels), one dict per case."""
    items = []
    for p in paths:
        with np.load(p) as z:
            if kind == "localizer":
                items.append({"x": z["loc_x"], "y": z["loc_y"], "positive": bool(z["positive"]),
                              "size": z["image_size"]})
            else:
                items.append({"x": z["crop_x"], "y": z["crop_y"], "positive": bool(z["positive"])})
    return items


class AugmentedSamples(Dataset):
    """Augmented training samples of one network, keyed by ``(epoch, case index)``.

    Localizer: ``(image (1, D, H, W) float32, heatmap (1, D, H, W) float32)``; XUNet: one of the case's
    crops at random, ``(image (1, D, H, W) float32, labels (D, H, W) int64)``.
    """

    def __init__(self, items: list[dict], kind: str, seed: int, p_spatial: float | None = None):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.items, self.kind, self.seed = items, kind, int(seed)
        self.p_spatial = DEFAULT_SPATIAL_P[kind] if p_spatial is None else float(p_spatial)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key):
        epoch, index = key
        rng = np.random.default_rng([self.seed, KINDS.index(self.kind), int(epoch), int(index)])
        it = self.items[index]
        if self.kind == "localizer":
            x = torch.from_numpy(it["x"].astype(np.float32))[None, None]
            y = torch.from_numpy(it["y"].astype(np.float32))[None, None]
            x, y = augment_pair(x, y, rng, labels=False, p_spatial=self.p_spatial)
            return x[0], y[0]
        k = int(rng.integers(len(it["x"])))
        x = torch.from_numpy(it["x"][k].astype(np.float32))[None, None]
        y = torch.from_numpy(it["y"][k].astype(np.int64))[None, None]
        x, y = augment_pair(x, y, rng, labels=True, p_spatial=self.p_spatial)
        return x[0], y[0, 0]


class EpochBatches(Sampler):
    """Endless batches of ``(epoch, index)`` keys: each epoch is a fresh permutation of the cases, cut into
    batches of ``batch`` (the last one of an epoch may be smaller), starting at epoch ``first_epoch``."""

    def __init__(self, n: int, batch: int, seed: int, kind: str, first_epoch: int = 0):
        if n < 1 or batch < 1:
            raise ValueError(f"need at least one case and a batch of at least 1 (got {n} cases, batch {batch})")
        self.n, self.batch, self.seed, self.kind_id, self.first_epoch = n, batch, int(seed), KINDS.index(kind), first_epoch

    def steps_per_epoch(self) -> int:
        return -(-self.n // self.batch)

    def __iter__(self):
        epoch = self.first_epoch
        while True:
            order = np.random.default_rng([self.seed, self.kind_id, epoch, 1]).permutation(self.n)
            for start in range(0, self.n, self.batch):
                yield [(epoch, int(i)) for i in order[start:start + self.batch]]
            epoch += 1


def make_loader(samples: AugmentedSamples, batches: EpochBatches, workers: int, pin_memory: bool) -> DataLoader:
    """The loader of one network. ``workers`` > 0: that many processes augment ahead of the training step.

    The training loop draws from one endless iterator, so the same workers serve the whole run (what
    ``persistent_workers`` gives an epoch-by-epoch loop) and stop when the iterator is dropped. On Linux the
    workers are forked, so they share the cases in memory instead of receiving a copy each (they never
    touch CUDA, which makes forking after CUDA start-up safe).
    """
    kwargs: dict = {}
    if workers > 0:
        kwargs = {"prefetch_factor": 4}
        if sys.platform.startswith("linux"):
            kwargs["multiprocessing_context"] = "fork"
    return DataLoader(samples, batch_sampler=batches, num_workers=workers, pin_memory=pin_memory, **kwargs)
