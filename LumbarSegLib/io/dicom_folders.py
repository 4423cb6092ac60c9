"""Finding the DICOM series in a folder: the folder itself, or the folders below it.

GDCM groups a folder's files into series by SeriesInstanceUID alone; a localizer stored in the CT's series
(another orientation or size) is left out when the series is read (:func:`.slice_positions.main_stack`). Exports from a
PACS or a CD usually put each series in a folder of its own (``DICOM/ST0/SE0``, ``DICOMDIR`` beside it);
when the folder given holds no series itself, the folders below it are searched, and every series found
is one to choose from, exactly as the series of one folder: the one with the most slices is used, the
others are named, and ``--series UID`` chooses another.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from ..constants import ACCEPTED_CT_FORMATS
from ..errors import InputError

# A DICOM export has a few levels and tens of folders; a search that meets this many gave the wrong folder.
MAX_SUBFOLDERS = 2000


@dataclass(frozen=True)
class DicomSeries:
    """One series of a DICOM folder (GDCM's grouping: same SeriesInstanceUID)."""

    uid: str
    description: str
    files: tuple[str, ...]
    folder: str = ""  # where below the folder given it was found ("" = in that folder itself)

    @property
    def slices(self) -> int:
        return len(self.files)

    def describe(self) -> str:
        uid = self.uid or "(no SeriesInstanceUID)"
        where = f" in {self.folder}/" if self.folder else ""
        return f"{uid} ('{self.description or 'no description'}', {self.slices} slices{where})"

    def to_dict(self) -> dict:
        out = {"uid": self.uid, "description": self.description, "slices": self.slices}
        if self.folder:
            out["folder"] = self.folder
        return out


@functools.lru_cache(maxsize=64)
def _scan_dicom_folder(folder: str, _mtime_ns: int) -> tuple[DicomSeries, ...]:
    reader = sitk.ImageSeriesReader()
    warnings_shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # GDCM's C++ warnings would precede our clean error
    try:
        try:
            series_ids = reader.GetGDCMSeriesIDs(folder) or ()
        except RuntimeError:
            series_ids = ()
        found = []
        for series_id in series_ids:
            files = tuple(reader.GetGDCMSeriesFileNames(folder, series_id))
            if not files:
                continue
            description = ""
            header = sitk.ImageFileReader()
            header.SetFileName(files[0])
            try:
                header.ReadImageInformation()
                if header.HasMetaDataKey("0008|103e"):
                    description = header.GetMetaData("0008|103e").strip()
            except RuntimeError:
                pass
            found.append(DicomSeries(series_id, description, files))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings_shown)
    return tuple(found)


def _has_files(folder: Path) -> bool:
    return any(p.is_file() for p in folder.iterdir())


def _series_below(folder: Path) -> tuple[list[DicomSeries], int]:
    """(every series in the folders below ``folder``, how many folders were searched). Hidden folders and
    links to folders are not followed (a link could lead out of the export, or in a loop)."""
    found: list[DicomSeries] = []
    searched = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if Path(dirpath) == folder:
            continue
        searched += 1
        if searched > MAX_SUBFOLDERS:
            raise InputError(f"{folder}: no DICOM series in this folder itself, and more than {MAX_SUBFOLDERS} "
                             f"folders below it to search; give the folder that holds the series' files.")
        if filenames:
            sub = Path(dirpath)
            relative = sub.relative_to(folder).as_posix()
            found += [DicomSeries(s.uid, s.description, s.files, relative)
                      for s in _scan_dicom_folder(str(sub), sub.stat().st_mtime_ns)]
    return found, searched


def list_dicom_series(folder) -> list[DicomSeries]:
    """Every series in a DICOM folder, or else in the folders below it, most slices first; an
    :class:`InputError` if there is none."""
    folder = Path(folder)
    has_files = _has_files(folder)
    series = list(_scan_dicom_folder(str(folder), folder.stat().st_mtime_ns)) if has_files else []
    searched = 0
    if not series:
        series, searched = _series_below(folder)
    if not series:
        what = "is empty" if not has_files and not searched else "contains no DICOM series"
        below = f", nor do the {searched} folders below it" if searched else ""
        raise InputError(f"{folder}: this folder {what}{below}. Give a folder holding the CT's DICOM files, or a "
                         f"single image file: {ACCEPTED_CT_FORMATS}.")
    # Most slices first: a folder often holds a scout or a dose report beside the CT.
    return sorted(series, key=lambda s: (-s.slices, s.folder, s.uid))


def select_dicom_series(folder, uid: str | None = None) -> tuple[DicomSeries, list[DicomSeries]]:
    """(the series to use, all series): the one with ``uid``, else the one with the most slices."""
    series = list_dicom_series(folder)
    if uid is None:
        return series[0], series
    for candidate in series:
        if candidate.uid == uid:
            return candidate, series
    raise InputError(f"{folder}: no DICOM series with UID {uid}. The folder holds: "
                     + "; ".join(s.describe() for s in series) + ".")


def dicom_series_files(folder, series_uid: str | None = None) -> list[str]:
    """File names of the series ``series_uid`` in ``folder``, by default the one with the most slices."""
    return list(select_dicom_series(folder, series_uid)[0].files)


def describe_series_choice(folder, chosen: DicomSeries, series: list[DicomSeries]) -> str | None:
    """A note naming the series used when a folder holds several (None when it holds one)."""
    if len(series) < 2:
        return None
    others = "; ".join(s.describe() for s in series if s is not chosen)
    return (f"{folder} holds {len(series)} DICOM series; using {chosen.describe()}. Other series: {others}. "
            f"Choose another with --series UID.")
