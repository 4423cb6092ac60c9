"""What ITK's NRRD reader reports unclearly or does unasked, checked on the header's own text.

* A geometry that cannot be a voxel grid - a spacing or direction that is not a number, a zero-length
  axis, or axes that do not span 3D space - makes ITK fail with a bare "corrupt file" line (or a
  fragment such as "(0 -1 1)"); :func:`check_header` names the field and what is wrong with it.
* A header's ``data file:`` (a detached header, ``.nhdr``) may name any file ITK can open, anywhere on the
  machine. Files come from other people (a web upload, a shared folder), so the data must lie in the
  header's own folder or below it; anything else is refused before ITK opens it.

Only files that start with the NRRD magic (``NRRD000``) are checked, whatever their name.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np

from ..errors import InputError

MAGIC = b"NRRD000"
MAX_HEADER_BYTES = 1 << 20


def read_header(path) -> tuple[dict[str, str], list[str]] | None:
    """(fields, lines after a ``data file: LIST`` field) of a NRRD header, or None when ``path`` is not NRRD.

    Field names are lower-case with spaces kept (``space directions``); comments and key/value pairs
    (``key:=value``) are skipped.
    """
    with open(path, "rb") as fh:
        if fh.read(len(MAGIC)) != MAGIC:
            return None
        raw = fh.read(MAX_HEADER_BYTES)
    lines = raw.decode("latin-1").split("\n")[1:]  # the rest of the magic line first
    fields: dict[str, str] = {}
    listed: list[str] = []
    for i, line in enumerate(lines):
        line = line.rstrip("\r")
        if not line:
            break
        if line.startswith("#") or ":=" in line or ": " not in line:
            continue
        key, value = line.split(": ", 1)
        key = key.strip().lower()
        fields[key] = value.strip()
        if key in ("data file", "datafile") and value.strip().upper().startswith("LIST"):
            listed = [ln.rstrip("\r") for ln in lines[i + 1:] if ln.rstrip("\r")]
            break  # with LIST the file names fill the rest of the header
    return fields, listed


def _vectors(text: str) -> list[list[float] | None]:
    out: list[list[float] | None] = []
    for token in re.findall(r"\([^)]*\)|none", text, flags=re.IGNORECASE):
        if token.lower() == "none":
            out.append(None)
            continue
        try:
            out.append([float(v) for v in token.strip("()").split(",")])
        except ValueError:
            out.append([float("nan")])
    return out


def geometry_problem(fields: dict[str, str]) -> str | None:
    """What is wrong with the header's grid geometry (spacing, directions), or None."""
    directions = fields.get("space directions")
    if directions:
        vectors = [v for v in _vectors(directions) if v is not None]
        if any(not all(math.isfinite(x) for x in v) for v in vectors):
            return (f"its 'space directions' ({directions}) hold a value that is not a number, so the voxel "
                    f"spacing and orientation are unknown")
        lengths = [math.sqrt(sum(x * x for x in v)) for v in vectors]
        if any(length == 0 for length in lengths):
            return f"its 'space directions' ({directions}) give an axis of zero length (a voxel spacing of 0 mm)"
        if len(vectors) == 3 and all(len(v) == 3 for v in vectors):
            unit = np.array([np.asarray(v) / n for v, n in zip(vectors, lengths)])
            if abs(float(np.linalg.det(unit))) < 1e-3:
                return (f"its 'space directions' ({directions}) do not span 3D space (two axes point the same "
                        f"way, or all three lie in one plane), so the voxel grid has no orientation")
    spacings = fields.get("spacings")
    if spacings and not directions and fields.get("dimension") == "3":  # (a vector axis may say nan)
        try:
            numbers = [float(v) for v in spacings.split()]
        except ValueError:
            numbers = [float("nan")]
        if any(not math.isfinite(v) or v == 0 for v in numbers):
            return f"its 'spacings' ({spacings}) hold a value that is not a number, or 0"
    return None


def detached_files(fields: dict[str, str], listed: list[str]) -> list[str]:
    """The data file name(s) a header points to ([] when the data follows the header in the same file)."""
    value = fields.get("data file", fields.get("datafile"))
    if not value:
        return []
    parts = value.split()
    if parts[0].upper() == "LIST":
        return listed
    if len(parts) >= 4 and "%" in parts[0]:  # "FORMAT MIN MAX STEP [SUBDIM]": printf-style numbered files
        try:
            lo, hi, step = int(parts[1]), int(parts[2]), int(parts[3])
            numbers = range(lo, hi + (1 if step > 0 else -1), step) if step else [lo]
            return [parts[0] % n for n in numbers]
        except (ValueError, TypeError):
            return [parts[0]]
    return [value]


def check_header(path) -> None:
    """Refuse a NRRD file whose geometry cannot be a voxel grid, or whose data lies outside its folder."""
    path = Path(path)
    try:
        header = read_header(path)
    except OSError:
        return  # unreadable: the image reader gives its own error
    if header is None:
        return
    fields, listed = header
    problem = geometry_problem(fields)
    if problem:
        raise InputError(f"{path}: the NRRD header is unusable: {problem}. Fix the header (three direction "
                         f"vectors of three numbers each, their lengths the voxel spacing in mm) or export "
                         f"the CT again.")
    folder = os.path.realpath(path.parent)
    for name in detached_files(fields, listed):
        target = os.path.realpath(os.path.join(folder, name))
        if os.path.commonpath([folder, target]) != folder:
            raise InputError(f"{path}: the NRRD header's 'data file: {name}' points outside the header's folder; "
                             f"LumbarSeg reads detached data only from the header's own folder or below it. "
                             f"Put the data file beside the header (and name it without a path), or give a "
                             f"single .nrrd file.")
