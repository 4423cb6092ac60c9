"""LumbarSeg engine: two-stage L1-L5 segmentation of CT (Lu et al., J Appl Clin Med Phys 2023).

Importable without 3D Slicer. The Slicer module in ``LumbarSeg/`` is a thin shell over this package.

The package by layer, lowest first (imports point down, never up):

- :mod:`.errors`, :mod:`.constants` - error types; label codes, names, colours, terminology, resource paths;
  :mod:`.lazy_exports` - package attributes loaded on first use.
- :mod:`.io` - reading, checking and writing CT and label files (DICOM, NIfTI, NRRD, DICOM SEG, JSON).
- :mod:`.inference` - networks, models, preprocessing, the pipeline, orientation, morphology (torch).
- :mod:`.measures` - agreement with a reference, and measurements (volume, HU, trabecular, screening).
- :mod:`.results` - the output folder, preview, surfaces, model card.
- :mod:`.study` - running one study (:mod:`.study.runner`) and running it in a subprocess.
- :mod:`.batch` (many studies) and :mod:`.scene` (the MRML scene layer of the Slicer module and the web app).
- :mod:`.web` (the browser app) and :mod:`.cli` (the ``lumbarseg`` command) on top.

:mod:`.training` and :mod:`.phantoms` sit beside the runtime and use its lower layers.
"""

__version__ = "0.1.0"
