"""The studies of a batch: from CT files, folders searched for CTs and DICOM series, and CSV manifests.

One study is one CT: an image file, or one DICOM series (a folder holding several series gives several
studies). Each study has an id, the name of its result folder ``OUT_ROOT/<id>/``:

* a CT file given on the command line: its name without the suffix (``case01.nii.gz`` -> ``case01``);
* in a searched folder: its path below that folder, ``/`` written as ``_`` (``sub/case01.nii.gz`` ->
  ``sub_case01``), a DICOM folder by its own path (the searched folder itself by its name);
* a DICOM folder with several series: the folder's id plus ``_`` and the end of each SeriesInstanceUID;
* a manifest (``.csv``, rows ``id,path[,reference]``, an optional header naming the columns ``id``,
  ``path``, ``reference``, ``series``): its ids, as written. Relative paths are relative to the manifest.

Ids of found studies that clash get ``-2``, ``-3`` ... in the order found; a manifest's ids must be unique.
A folder search skips hidden entries, LumbarSeg result folders (a ``report.json`` of LumbarSeg: their
label maps are not CTs; a folder written by ``lumbarseg phantom`` is searched, its CTs are inputs) and files
named like label maps (``*_labels``, ``*_seg``, ``*_msk``, ``*_mask``, ``.seg.nrrd``), and says how many it
skipped.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import InputError

MANIFEST_SUFFIX = ".csv"
MANIFEST_COLUMNS = ("id", "path", "reference", "series")
# Names of label maps that sit beside CTs in common layouts (VerSe *_seg-vert_msk, our own *_labels).
_LABELMAP_NAME = re.compile(r"(_labels?|_seg|_msk|_mask)$|\.seg$", re.IGNORECASE)
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Study:
    """One CT to segment: its id (the result folder's name), the CT, and optionally the DICOM series and
    a reference label map to compare against."""

    id: str
    input: str
    series_uid: str | None = None
    reference: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _safe_id(text: str) -> str:
    return _UNSAFE_ID_CHARS.sub("_", text).strip("._") or "study"


def _uid_tail(uid: str, index: int) -> str:
    digits = uid.replace(".", "")
    return digits[-8:] if digits else f"series{index + 1}"


def _is_image_file(path: Path) -> bool:
    from ..io.images import IMAGE_SUFFIXES

    return path.name.lower().endswith(IMAGE_SUFFIXES)


def _looks_like_labelmap(path: Path) -> bool:
    from ..io.images import output_stem

    return path.name.lower().endswith(".seg.nrrd") or bool(_LABELMAP_NAME.search(output_stem(path)))


def _dicom_studies(folder: Path, base_id: str) -> list[Study]:
    """One study per DICOM series in ``folder`` (none when it holds no DICOM series)."""
    from ..io import images

    try:
        series = images.list_dicom_series(folder)
    except InputError:
        return []
    if len(series) == 1:
        return [Study(base_id, str(folder), series[0].uid or None)]
    return [Study(f"{base_id}_{_uid_tail(s.uid, i)}", str(folder), s.uid or None) for i, s in enumerate(series)]


def is_phantom_folder(report: dict) -> bool:
    """Whether a LumbarSeg ``report.json`` is that of ``lumbarseg phantom``'s folder: synthetic CTs and their
    masks (VerSe layout), inputs to segment, not a result."""
    return report.get("command") == "phantom"


def search_folder(root: Path, skipped: list[str], exclude: Path | None = None) -> list[Study]:
    """CT files and DICOM series under ``root`` (sorted by path); what was left out goes to ``skipped``."""
    from ..io import images
    from ..results.outputs import read_result_report

    root_id = _safe_id(images.output_stem(root))
    studies: list[Study] = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        if exclude is not None and here.resolve() == exclude:
            dirs[:] = []
            skipped.append(f"{here} (the batch's output folder)")
            continue
        report = read_result_report(here)
        if report is not None and not is_phantom_folder(report):
            dirs[:] = []
            skipped.append(f"{here} (a LumbarSeg result: its report.json; its label maps are not CTs)")
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = here.relative_to(root)
        prefix = "_".join(rel.parts)
        other_files = False
        for name in sorted(f for f in files if not f.startswith(".")):
            path = here / name
            if not _is_image_file(path):
                other_files = True
                continue
            if _looks_like_labelmap(path):
                skipped.append(f"{path} (named like a label map)")
                continue
            stem = images.output_stem(path)
            studies.append(Study(_safe_id(f"{prefix}_{stem}" if prefix else stem), str(path)))
        if other_files:  # only folders with other files are scanned for DICOM (GDCM reads every file)
            studies.extend(_dicom_studies(here, _safe_id(prefix) if prefix else root_id))
    return studies


def read_manifest(path: Path) -> list[Study]:
    """The studies of a CSV manifest (see the module docstring); an :class:`InputError` names the bad row."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [row for row in csv.reader(fh)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: the manifest could not be read ({exc}). Give a CSV file with rows "
                         f"id,path[,reference].") from None
    columns = list(MANIFEST_COLUMNS[:3])
    first = 1
    if rows and rows[0] and rows[0][0].strip().lower() == "id":
        columns = [c.strip().lower() for c in rows[0]]
        unknown = [c for c in columns if c not in MANIFEST_COLUMNS]
        if unknown or "path" not in columns:
            raise InputError(f"{path}: the manifest's header names {', '.join(unknown) or 'no path column'}; "
                             f"its columns are id, path and optionally reference, series.")
        rows, first = rows[1:], 2
    studies, seen = [], {}
    for line, row in enumerate(rows, start=first):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) > len(columns) and any(cell.strip() for cell in row[len(columns):]):
            raise InputError(f"{path}, line {line}: {len(row)} columns, but a row is {','.join(columns)}.")
        values = {c: (row[i].strip() if i < len(row) else "") for i, c in enumerate(columns)}
        study_id, ct = values.get("id", ""), values.get("path", "")
        if not study_id or not ct:
            raise InputError(f"{path}, line {line}: every row needs an id and a path (id,path[,reference]).")
        if _safe_id(study_id) != study_id or study_id in (".", ".."):
            raise InputError(f"{path}, line {line}: the id '{study_id}' cannot name a folder; use letters, digits, "
                             f"'.', '_' and '-' only (e.g. '{_safe_id(study_id)}').")
        if study_id in seen:
            raise InputError(f"{path}, line {line}: the id '{study_id}' was already used on line {seen[study_id]}; "
                             f"each study needs its own id.")
        seen[study_id] = line
        reference = values.get("reference") or None
        studies.append(Study(study_id, str(path.parent / ct), values.get("series") or None,
                             str(path.parent / reference) if reference else None))
    return studies


def find_studies(inputs, exclude=None) -> tuple[list[Study], list[str]]:
    """(the studies of ``inputs``, what a folder search skipped). ``exclude``: a folder never searched (the
    batch's output). An input that does not exist, or that holds no study, is an :class:`InputError`."""
    from ..io import images

    exclude = Path(exclude).resolve() if exclude is not None else None
    studies: list[Study] = []
    skipped: list[str] = []
    for text in inputs:
        path = Path(text)
        if not path.exists():
            raise InputError(f"{path}: no such file or folder. Give CT files, folders of CTs or DICOM series, or "
                             f"a CSV manifest (id,path[,reference]).")
        if path.is_dir():
            found = search_folder(path, skipped, exclude)
            if not found:
                from ..results.outputs import read_result_report

                if read_result_report(path) is not None:
                    raise InputError(f"{path}: this folder holds a LumbarSeg result (its report.json), whose label "
                                     f"maps are not CTs, so it is not searched. Give the folder of the CTs.")
                raise InputError(f"{path}: no CT was found in this folder (searched for "
                                 f"{', '.join(images.IMAGE_SUFFIXES)} files and DICOM series).")
            studies.extend(found)
        elif path.name.lower().endswith(MANIFEST_SUFFIX):
            studies.extend(read_manifest(path))
        else:
            studies.append(Study(_safe_id(images.output_stem(path)), str(path)))
    return _unique_ids(studies), skipped


def _unique_ids(studies: list[Study]) -> list[Study]:
    counts: dict[str, int] = {}
    taken = {s.id for s in studies}
    out = []
    for study in studies:
        n = counts.get(study.id, 0) + 1
        counts[study.id] = n
        if n > 1:
            new_id = f"{study.id}-{n}"
            while new_id in taken:
                n += 1
                new_id = f"{study.id}-{n}"
            taken.add(new_id)
            study = Study(new_id, study.input, study.series_uid, study.reference)
        out.append(study)
    return out
