"""Numbers computed from a segmentation: agreement with a reference kept apart from measurements.

:mod:`.agreement` (DSC, FND, FPD and surface distances against a reference, their tables and CSV),
:mod:`.measurements` (volume, height, centroid and HU per vertebra, with plausibility checks),
:mod:`.trabecular` (trabecular HU in ROIs inside each vertebral body) and :mod:`.bone_screening` (the
screening flag from it). No torch; uses :mod:`..io` below it.
"""
