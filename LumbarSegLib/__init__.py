"""LumbarSeg engine: two-stage L1-L5 segmentation of CT (Lu et al., J Appl Clin Med Phys 2023).

Importable without 3D Slicer. The Slicer module in ``LumbarSeg/`` is a thin shell over this package.
"""

__version__ = "0.1.0"
