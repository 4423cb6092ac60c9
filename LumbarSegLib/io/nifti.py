"""What ITK's NIfTI reader gets silently wrong, checked on the file's own bytes.

ITK reads NIfTI through niftilib, which (1) zero-fills the missing part of a truncated file, e.g. an
interrupted download, and (2) replaces every NaN or infinite float by 0 while loading
(``nifti_read_buffer``; there is no option to keep them). Both give a CT that looks plausible and a
confident wrong result, so :mod:`io` checks the header and voxel bytes here; NRRD and MetaImage readers
already fail loudly or keep NaN. (3) A header holds two orientations, the qform and the sform; a tool that
edits one and leaves the other stale makes viewers disagree on where the anatomy lies and which side is left,
and ITK says nothing: :func:`orientation_note` does.
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
ORIENTATION_NOTE_KEY = "LumbarSeg_qform_sform_note"  # image metadata: the warning of :func:`orientation_note`
ORIENTATION_TOLERANCE_MM = 1.0  # a voxel corner placed further apart than this by the two is a disagreement


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb")


def header_layout(header: bytes) -> dict | None:
    """Byte order, NIfTI version (1 or 2), datatype, bits per voxel, voxel offset and voxel count of a NIfTI-1/-2
    header, or None when it is not a parseable NIfTI header."""
    for endian in "<>":
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            datatype, bitpix = struct.unpack(endian + "hh", header[70:74])
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
            version = 1
            break
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            datatype, bitpix = struct.unpack(endian + "hh", header[12:16])
            dims = struct.unpack(endian + "8q", header[16:80])
            offset = int(struct.unpack(endian + "q", header[168:176])[0])
            version = 2
            break
    else:
        return None
    ndim = dims[0]
    if not 1 <= ndim <= 7 or bitpix <= 0 or any(d < 0 for d in dims[1:ndim + 1]):
        return None
    count = int(np.prod(dims[1:ndim + 1], dtype=np.int64))
    return {"endian": endian, "version": version, "datatype": int(datatype), "bitpix": int(bitpix),
            "offset": offset, "count": count, "expected_bytes": offset + count * int(bitpix) // 8}


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


def _forms(header: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(qform, sform, dims (i, j, k)) as 3 x 4 RAS matrices of a NIfTI-1/-2 header whose qform_code and
    sform_code are both set, else None."""
    layout = header_layout(header)
    if layout is None:
        return None
    e = layout["endian"]
    if layout["version"] == 1:
        codes = struct.unpack(e + "2h", header[252:256])
        quat = struct.unpack(e + "6f", header[256:280])
        srow = struct.unpack(e + "12f", header[280:328])
        pixdim = struct.unpack(e + "8f", header[76:108])
        dims = struct.unpack(e + "8h", header[40:56])
    else:
        codes = struct.unpack(e + "2i", header[344:352])
        quat = struct.unpack(e + "6d", header[352:400])
        srow = struct.unpack(e + "12d", header[400:496])
        pixdim = struct.unpack(e + "8d", header[104:168])
        dims = struct.unpack(e + "8q", header[16:80])
    if min(codes) <= 0 or dims[0] < 3:
        return None
    b, c, d = quat[:3]
    a = np.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d)))
    rot = np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                    [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
                    [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b]])
    qfac = -1.0 if pixdim[0] < 0 else 1.0  # NIfTI: 0 means 1
    steps = [v if v > 0 else 1.0 for v in pixdim[1:4]]  # niftilib reads a spacing <= 0 as 1
    qform = np.column_stack([rot @ np.diag([steps[0], steps[1], qfac * steps[2]]), quat[3:]])
    return qform, np.asarray(srow, float).reshape(3, 4), np.asarray(dims[1:4], float)


def orientation_note(path, image: sitk.Image) -> str | None:
    """A warning when the file's qform and sform both say where the voxels lie and disagree by more than
    :data:`ORIENTATION_TOLERANCE_MM` at a corner of the image, naming the one ITK (and so 3D Slicer) used."""
    path = Path(path)
    if image.GetDimension() != 3:  # refused as such by io.validate_ct
        return None
    try:
        with _open(path) as fh:
            forms = _forms(fh.read(540))
    except (OSError, EOFError, zlib.error, struct.error):
        return None
    if forms is None:
        return None
    qform, sform, dims = forms
    corners = np.array([[i, j, k, 1.0] for i in (0, dims[0] - 1) for j in (0, dims[1] - 1) for k in (0, dims[2] - 1)])
    q, s_ = corners @ qform.T, corners @ sform.T
    apart = float(np.linalg.norm(q - s_, axis=1).max())
    if not apart > ORIENTATION_TOLERANCE_MM:
        return None
    lps = np.array([image.TransformContinuousIndexToPhysicalPoint(c[:3].tolist()) for c in corners]) * [-1, -1, 1]
    used = ("sform" if np.abs(lps - s_).max() < np.abs(lps - q).max() else "qform")
    axes = sform[:, :3] / np.linalg.norm(sform[:, :3], axis=0)
    # a qform is a rotation and cannot hold a shear (a tilted acquisition, an affine registration's output)
    why = ("its sform holds a shear, which the qform cannot" if np.abs(axes.T @ axes - np.eye(3)).max() > 1e-3
           else "a tool changed one and left the other")
    return (f"WARNING: {path.name} holds two orientations that disagree by up to {apart:.0f} mm over the image (its "
            f"qform and sform headers; {why}). The {used} was used, as 3D Slicer reads it; a viewer that reads the "
            f"other shows the anatomy and the results elsewhere, perhaps mirrored. Check left and right, and fix "
            f"the header.")
