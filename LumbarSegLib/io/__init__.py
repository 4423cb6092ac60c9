"""Reading, checking and writing CT and label files: the lowest layer above :mod:`..errors` and :mod:`..constants`.

:mod:`.images` (read a CT, any format, and check that it is usable), :mod:`.label_maps` (reference label
maps in LumbarSeg's, VerSe's or TotalSegmentator's codes; writing label maps and ``.seg.nrrd``), the
format readers :mod:`.nifti`, :mod:`.nrrd`, :mod:`.dicom_folders` and :mod:`.slice_positions` with
:mod:`.input_checks`, DICOM SEG (:mod:`.dicom_seg`, :mod:`.dicom_write`), and :mod:`.text_files` (text and
JSON files written whole or not at all). Nothing here imports torch or any other layer of the engine.
"""
