"""What ITK's NIfTI reader gets silently wrong, checked on the file's own bytes.

ITK reads NIfTI through niftilib, which (1) zero-fills the missing part of a truncated file, e.g. an
interrupted download, and (2) replaces every NaN or infinite float by 0 while loading
(``nifti_read_buffer``; there is no option to keep them). Both give a CT that looks plausible and a
confident wrong result, so :mod:`io` checks the header and voxel bytes here; NRRD and MetaImage readers
already fail loudly or keep NaN.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError

FLOAT_TYPES = {16: np.float32, 64: np.float64}  # NIfTI datatype codes FLOAT32, FLOAT64


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb")


def header_layout(header: bytes) -> dict | None:
    """Byte order, datatype, bits per voxel, voxel offset and voxel count of a NIfTI-1/-2 header, or None
    when it is not a parseable NIfTI header."""
    for endian in "<>":
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            datatype, bitpix = struct.unpack(endian + "hh", header[70:74])
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
            break
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            datatype, bitpix = struct.unpack(endian + "hh", header[12:16])
            dims = struct.unpack(endian + "8q", header[16:80])
            offset = int(struct.unpack(endian + "q", header[168:176])[0])
            break
    else:
        return None
    ndim = dims[0]
    if not 1 <= ndim <= 7 or bitpix <= 0 or any(d < 0 for d in dims[1:ndim + 1]):
        return None
    count = int(np.prod(dims[1:ndim + 1], dtype=np.int64))
    return {"endian": endian, "datatype": int(datatype), "bitpix": int(bitpix), "offset": offset, "count": count,
            "expected_bytes": offset + count * int(bitpix) // 8}


def check_complete(path) -> None:
    """Refuse a truncated NIfTI file (ITK would zero-fill the missing voxels)."""
    path = Path(path)
    truncated = False
    try:
        with _open(path) as fh:
            layout = header_layout(fh.read(540))
        if layout is None:
            return
        expected = layout["expected_bytes"]
        if not path.name.lower().endswith(".gz"):
            truncated = path.stat().st_size < expected
        else:
            with path.open("rb") as fh:  # gzip trailer: uncompressed size mod 2**32 - a cheap first test
                fh.seek(-4, 2)
                isize = int.from_bytes(fh.read(4), "little")
            if isize != expected % 2**32:  # suspicious: decompress to be sure (multi-member gzip also ends here)
                total = 0
                with gzip.open(path, "rb") as fh:
                    while chunk := fh.read(1 << 22):
                        total += len(chunk)
                truncated = total < expected
    except (EOFError, zlib.error):
        truncated = True
    except OSError:  # includes gzip.BadGzipFile
        return  # unreadable header: ITK will give its own, more specific error
    if truncated:
        raise InputError(f"{path}: the file is truncated or its compressed data is damaged (shorter than its "
                         f"header says) - probably an interrupted download or copy. Copy or export it again.")


def restore_nonfinite(path, image: sitk.Image) -> sitk.Image:
    """``image`` (as ITK read it from ``path``) with the NaN/infinite voxels of the file put back.

    Only float files can hold them; their voxel bytes are read once more in chunks (no second full copy
    in memory), so that such voxels are then treated like NaN read from any other format
    (:func:`io.prepare_ct`: set to air, with a warning).
    """
    path = Path(path)
    with _open(path) as fh:
        layout = header_layout(fh.read(540))
        if layout is None or layout["datatype"] not in FLOAT_TYPES:
            return image
        count = layout["count"]
        if count != image.GetNumberOfPixels() * image.GetNumberOfComponentsPerPixel():
            return image
        dtype = np.dtype(FLOAT_TYPES[layout["datatype"]]).newbyteorder(layout["endian"])
        fh.seek(layout["offset"])
        chunk_items = (1 << 24) // dtype.itemsize
        array = flat = None
        start = 0
        while start < count:
            chunk = np.frombuffer(fh.read(min(chunk_items, count - start) * dtype.itemsize), dtype=dtype)
            if chunk.size == 0:
                break
            bad = ~np.isfinite(chunk)
            if bad.any():
                if flat is None:
                    array = sitk.GetArrayFromImage(image)
                    flat = array.reshape(-1)
                flat[start:start + chunk.size][bad] = chunk[bad]
            start += chunk.size
    if array is None:
        return image
    restored = sitk.GetImageFromArray(array, isVector=image.GetNumberOfComponentsPerPixel() > 1)
    restored.CopyInformation(image)
    for key in image.GetMetaDataKeys():
        restored.SetMetaData(key, image.GetMetaData(key))
    return restored
