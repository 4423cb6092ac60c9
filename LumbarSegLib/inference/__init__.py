"""The segmentation itself: networks, model bundles, preprocessing, the pipeline and its clean-up.

- :mod:`.networks`, :mod:`.vertebra_net`: the localizer and XUNet topologies; the per-vertebra U-Net (stage 3).
- :mod:`.models`: loading a model bundle, choosing the device. :mod:`.preprocess`: every network input, shared
  with training.
- :mod:`.pipeline`: CT in, L1-L5 labels out (localizer, crop, XUNet, then stage 3 in :mod:`.vertebra_stage`,
  seeded by :mod:`.by_vertebra` from the XUNet's vertebrae or from the finder's counted peaks).
  :mod:`.net_bundles`: the small networks' model files.
- Finding and naming the vertebrae: :mod:`.instances` (the XUNet's pieces split and merged into vertebrae),
  :mod:`.column` (off the spinal column is dropped), :mod:`.anchors` (ribs and sacrum read from the CT),
  :mod:`.naming` (the column named at once, by counting). :mod:`.finder`: the XUNet's successor on a fixed
  2 mm grid slid along the spine, whose centre peaks are the instances that :func:`.peak_naming.name_peaks`
  counts (the default path, with the bundled finder; ``--no-finder`` keeps the XUNet's pieces).
- :mod:`.orientation` (which end is cranial) and :mod:`.morphology` (post-processing). :mod:`.heap`: freed
  memory kept for reuse while the networks run (segmentation and training), which saves their page faults.

Uses :mod:`..io` below it; torch is imported here and in no lower layer.
"""
