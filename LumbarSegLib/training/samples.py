"""Feeding one network: the precomputed cases in memory, augmented samples, epoch-ordered batches and the
torch ``DataLoader`` that makes them (in worker processes on a GPU machine, in the training process on the CPU).

A sample's augmentation is drawn from ``(seed, network, epoch, slot, case)`` alone (the slot is the
sample's place in its epoch), so a batch is the same whichever loader worker makes it and however many
workers there are. With sampling weights (real-case views drawn more often than phantoms) an epoch is
as many weighted draws as there are cases, with replacement: the slot keeps repeated draws of one case
differently augmented.
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
            source = str(z["source"]) if "source" in z else ""
            if kind == "localizer":
                items.append({"x": z["loc_x"], "y": z["loc_y"], "positive": bool(z["positive"]),
                              "size": z["image_size"], "source": source})
            else:
                items.append({"x": z["crop_x"], "y": z["crop_y"], "positive": bool(z["positive"]), "source": source})
    return items


def sampling_weights(items: list[dict], real_weight: float | None) -> np.ndarray | None:
    """Draw probabilities giving views of real cases (items with a ``source``) ``real_weight`` of all draws
    together, the other cases the rest; None (uniform epochs) when there is no mix to weight."""
    real = np.array([bool(it.get("source")) for it in items])
    if real_weight is None or real.all() or not real.any():
        return None
    if not 0.0 < real_weight < 1.0:
        raise ValueError(f"real_weight must lie strictly between 0 and 1, got {real_weight}")
    w = np.where(real, real_weight / real.sum(), (1.0 - real_weight) / (~real).sum())
    return w / w.sum()


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
        epoch, slot, index = key
        rng = np.random.default_rng([self.seed, KINDS.index(self.kind), int(epoch), int(slot), int(index)])
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
    """Endless batches of ``(epoch, slot, index)`` keys: each epoch is a fresh permutation of the cases (or,
    with ``weights``, as many weighted draws), cut into batches of ``batch`` (the last one of an epoch may
    be smaller), starting at epoch ``first_epoch``."""

    def __init__(self, n: int, batch: int, seed: int, kind: str, first_epoch: int = 0, weights=None):
        if n < 1 or batch < 1:
            raise ValueError(f"need at least one case and a batch of at least 1 (got {n} cases, batch {batch})")
        self.n, self.batch, self.seed, self.kind_id, self.first_epoch = n, batch, int(seed), KINDS.index(kind), first_epoch
        self.weights = None if weights is None else np.asarray(weights, float)

    def steps_per_epoch(self) -> int:
        return -(-self.n // self.batch)

    def __iter__(self):
        epoch = self.first_epoch
        while True:
            rng = np.random.default_rng([self.seed, self.kind_id, epoch, 1])
            order = rng.permutation(self.n) if self.weights is None else rng.choice(self.n, self.n, p=self.weights)
            for start in range(0, self.n, self.batch):
                yield [(epoch, start + j, int(i)) for j, i in enumerate(order[start:start + self.batch])]
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
