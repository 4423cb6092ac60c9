"""Training of both networks (localizer + XUNet) on VerSe-layout data or generated phantoms.

Data flow (one code path with inference: every network input is made by :mod:`LumbarSegLib.inference.preprocess`)

* A case is a CT plus its VerSe vertebra mask (``*_ct.nii.gz`` + ``*_seg-vert*_msk.nii.gz``, flat or in
  VerSe's nested ``rawdata/`` + ``derivatives/`` layout). VerSe codes 20-24 become 1-5 (L1-L5); every
  other code (T12, L6, sacrum, ...) is background.
* Each case is precomputed once into a ``.npz`` cache: the localizer input
  (``preprocess.localizer_input`` of the canonical CT) with its heatmap target (lumbar mask averaged onto
  the localizer grid, Gaussian-smoothed, max 1; all zero without a lumbar vertebra), and ``n_crops``
  XUNet crops (``preprocess.crop_input``) with nearest-neighbour labels. Crop 0 is exactly the box the
  inference crop rule (``preprocess.heatmap_box``) gives on the ground-truth heatmap, the others are
  jittered copies of it (robustness to imperfect localizer boxes). A case without a lumbar vertebra gets
  crops around its lowest visible vertebrae (where a localizer would most likely fire) labelled all
  background: this teaches "T12 is not L1".
* Augmentation runs on the fly on the small grids (rotation, scaling, left-right flip, mild elastic
  deformation; intensity scale/shift/gamma, noise, blur). No flip along y or z: z order defines L1..L5.
* The two networks train in two processes (one thread each); when the cheaper localizer finishes, the
  XUNet process takes both threads. Each process writes resumable checkpoints (``weights_only``-loadable)
  every few minutes; the parent assembles a model bundle (:func:`models.save_model`) from the latest
  checkpoints as they appear, so a usable model exists early.

Phantom seeds: training uses seeds below :data:`EVAL_SEED_START` (100000); the held-out evaluation
(:mod:`.evaluation`) uses seeds from 100000 up, so no evaluation phantom is ever trained on.

Modules (imports point down the list; the engine never imports this package):

* :mod:`.data`          - case discovery, precompute/cache, training phantoms, split;
* :mod:`.augmentation`  - spatial and intensity augmentation;
* :mod:`.losses`        - losses and validation scores;
* :mod:`.loop`          - one network's training loop and checkpoints;
* :mod:`.orchestration` - both networks, bundles, resuming, cross-validation;
* :mod:`.evaluation`    - held-out evaluation and the model card (``lumbarseg evaluate-model``);
* :mod:`.cli`           - ``lumbarseg train`` and the registration of both commands.
"""

from .augmentation import augment_intensity, augment_pair, random_grid
from .data import (EVAL_SEED_START, TRAIN_FOV_PROBS, Case, find_cases, generate_phantoms, heatmap_target,
                   phantom_spec, precompute_case, prepare_cache, split_cases)
from .losses import dice_ce_loss, localizer_loss
from .loop import load_checkpoint, train_worker
from .orchestration import assemble_bundle, cross_validate, train_models

__all__ = ["EVAL_SEED_START", "TRAIN_FOV_PROBS", "Case", "assemble_bundle", "augment_intensity", "augment_pair",
           "cross_validate", "dice_ce_loss", "find_cases", "generate_phantoms", "heatmap_target", "load_checkpoint",
           "localizer_loss", "phantom_spec", "precompute_case", "prepare_cache", "random_grid", "split_cases",
           "train_models", "train_worker"]
