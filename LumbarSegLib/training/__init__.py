"""Training and evaluating the networks: the localizer and XUNet (``lumbarseg train``), stage 3 (the
per-vertebra U-Net) and the finder (the XUNet on a fixed 2 mm grid), on VerSe-layout data, real label maps
without CT, or generated phantoms.

The localizer and XUNet:

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
* :mod:`.real_views`    - the real cases re-imaged as the scans users bring;
* :mod:`.augmentation`  - spatial and intensity augmentation;
* :mod:`.losses`        - losses and validation scores;
* :mod:`.samples`       - one network's batches from the cache;
* :mod:`.loop`          - one network's training loop and checkpoints;
* :mod:`.orchestration` - both networks, bundles, resuming, cross-validation;
* :mod:`.evaluation`    - held-out evaluation and the model card (``lumbarseg evaluate-model``);
* :mod:`.real_evaluation` - leave-one-real-case-out scores of fold models;
* :mod:`.naming_eval`   - finding and naming measured on held-out cases (``evaluate-model --naming``);
* :mod:`.column_calibration` - the column warnings scored against truth;
* :mod:`.vertebra_samples` - stage 3's crops (real CTs, label maps with a synthetic CT, thick slices);
* :mod:`.vertebra_train` - phases that outlive a session (stage 3's plan; any :class:`~.vertebra_train.Trainee`);
* :mod:`.vertebra_eval` - stage 3's gate; :mod:`.vertebra_card` - its model card;
* :mod:`.finder_samples` - the finder's windows along the spine; :mod:`.finder_train` - its network and plan;
  :mod:`.finder_eval` - its gate (centre recall, identification) on held-out cases;
* :mod:`.cli`           - ``lumbarseg train`` and ``evaluate-model``'s work;
* :mod:`.commands`      - their arguments and registration (no torch: ``lumbarseg --help`` builds them).
"""

from ..lazy_exports import lazy_getattr

# Names below load from their modules on first use, so that importing one light module of this package
# (:mod:`.commands`, which ``lumbarseg --help`` needs) loads no torch.
_EXPORTS = {
    "augment_intensity": "augmentation", "augment_pair": "augmentation", "random_grid": "augmentation",
    "EVAL_SEED_START": "commands", "TRAIN_FOV_PROBS": "data", "Case": "data", "find_cases": "data",
    "generate_phantoms": "data", "heatmap_target": "data", "phantom_spec": "data", "precompute_case": "data",
    "prepare_cache": "data", "split_cases": "data", "dice_ce_loss": "losses", "localizer_loss": "losses",
    "load_checkpoint": "loop", "train_worker": "loop", "assemble_bundle": "orchestration",
    "cross_validate": "orchestration", "train_models": "orchestration",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())
