"""Writing a CT volume as a DICOM series (CT Image Storage, one file per slice), for synthetic data only.

Used for the bundled sample series (``tools/make_sample_data.py``: a phantom, so no patient and no privacy
question) and by the tests that need a DICOM series with every UID a DICOM SEG references. Not for
exporting patients' CTs: it copies no header of a source study.

UIDs are random (``generate_uid()``), or reproducible from ``uid_seed`` (``2.25.`` UIDs of name-based
UUIDs of the seed), so that a regenerated sample series is byte-for-byte the same.
"""

from __future__ import annotations

import random
import uuid
from pathlib import Path

import numpy as np
import SimpleITK as sitk

SYNTHETIC_PATIENT = {"PatientName": "Phantom^Lumbar", "PatientID": "LS0001", "PatientBirthDate": "",
                     "PatientSex": "O"}


def write_ct_series(image: sitk.Image, folder, *, uid_seed: str | None = None, shuffle_seed: int | None = None,
                    study_date: str = "20240101", **attributes) -> list[Path]:
    """Write ``image`` (HU, stored as int16) as a CT series into ``folder``; returns the files.

    ``shuffle_seed``: write the slices in a shuffled order under random names (as some exports do), else
    ``IM0001.dcm``... in slice order. ``attributes`` set or replace data elements by keyword.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    def uid(role: str) -> str:  # a name-based UUID as a 2.25 UID (ISO/IEC 9834-8), or a random one
        return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, f'{uid_seed}/{role}').int}" if uid_seed is not None \
            else generate_uid()

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if np.linalg.det(np.asarray(image.GetDirection()).reshape(3, 3)) < 0:
        # DICOM slices stack along row x column (a right-handed grid): flip the slice order of a left-handed
        # image, the same voxels in the same places, so that the series reads back as this image.
        image = sitk.Flip(image, [False, False, True])
    array = sitk.GetArrayFromImage(image).astype(np.int16)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    spacing = image.GetSpacing()
    study, series, frame = uid("study"), uid("series"), uid("frame of reference")
    order = list(range(array.shape[0]))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    paths = []
    for n, k in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = uid(f"instance {k}")
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        for key, value in SYNTHETIC_PATIENT.items():
            setattr(ds, key, value)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = study_date, "120000", "1", ""
        ds.ReferringPhysicianName, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "", "CT", 3, k + 1
        ds.Manufacturer, ds.PositionReferenceIndicator = "LumbarSeg synthetic phantom", ""
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.PatientPosition, ds.BodyPartExamined = "HFS", "LSPINE"  # the lumbar spine is unpaired: no Laterality
        ds.ImagePositionPatient = [f"{v:.4f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in list(direction[:, 0]) + list(direction[:, 1])]
        ds.PixelSpacing = [f"{spacing[1]:.4f}", f"{spacing[0]:.4f}"]
        ds.SliceThickness = f"{spacing[2]:.4f}"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = array.shape[1], array.shape[2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
        ds.KVP = "120"
        ds.AcquisitionNumber = 1
        for key, value in attributes.items():
            setattr(ds, key, value)
        ds.PixelData = array[k].tobytes()
        name = (f"IM{n:04d}_{random.Random(shuffle_seed + n).randrange(10**6)}.dcm" if shuffle_seed is not None
                else f"IM{k + 1:04d}.dcm")
        path = folder / name
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
