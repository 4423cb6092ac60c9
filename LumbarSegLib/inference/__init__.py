"""The segmentation itself: networks, model bundles, preprocessing, the two-stage pipeline and its clean-up.

:mod:`.networks` (the localizer and XUNet topologies), :mod:`.models` (loading a model bundle, choosing the
device), :mod:`.preprocess` (every network input, shared with training), :mod:`.pipeline` (CT in, L1-L5
labels out), :mod:`.orientation` (which end is cranial) and :mod:`.morphology` (post-processing). Uses
:mod:`..io` below it; torch is imported here and in no lower layer.
"""
