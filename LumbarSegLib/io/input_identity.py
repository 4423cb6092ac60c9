"""What identifies a study's input, so a rerun can tell "the same scan" from "another scan at the same path".

``report.json`` records, under ``input.identity``, the input's real path (symbolic links and ``..``
resolved, so a relative path given on the command line still names it from any folder) and its content:
size in bytes, modification time and SHA-256 of the file, or, for a DICOM series, of the series' files
together (their count, total size, newest modification time, and one SHA-256 over their names and bytes).

:func:`input_changed` compares a recorded identity with the input as it is now. Size and modification
time decide when they agree with the record (nothing is read); when the modification time differs but
the size does not (a copy, a restore from backup), the content hash decides, so a scan replaced by another
is always seen and an untouched one is never read twice.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import InputError

IDENTITY_KEY = "identity"


def real_path(path) -> str:
    """``path`` absolute, with symbolic links and ``..`` resolved (how two spellings are compared)."""
    return os.path.realpath(os.fspath(path))


def _files(path: Path, series_uid: str | None) -> list[Path]:
    if path.is_dir():
        from .dicom_folders import dicom_series_files

        return sorted(Path(f) for f in dicom_series_files(path, series_uid))
    return [path]


def _stat(files: list[Path]) -> tuple[int, int]:
    stats = [f.stat() for f in files]
    return sum(s.st_size for s in stats), max(s.st_mtime_ns for s in stats)


def _sha256(files: list[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for f in files:
        if len(files) > 1:  # a series: the file's name below the folder is part of what was read
            name = os.path.relpath(f, root).encode("utf-8", "surrogateescape")
            digest.update(len(name).to_bytes(8, "little") + name + f.stat().st_size.to_bytes(8, "little"))
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def input_identity(path, series_uid: str | None = None) -> dict | None:
    """The identity of a CT file, or of the DICOM series ``series_uid`` (default: the one a run would read)
    in a folder (see the module docstring); None when it cannot be read."""
    from .input_checks import check_input_kind

    path = Path(path)
    check_input_kind(path)  # a named pipe or a device would block the hash forever
    files = _files(path, series_uid)
    try:
        size, mtime = _stat(files)
        digest = _sha256(files, path)
    except OSError:  # unreadable: the CT reader's own message will name it
        return None
    out = {"real_path": real_path(path), "bytes": size, "mtime_ns": mtime, "sha256": digest}
    if path.is_dir():
        out["files"] = len(files)
    return out


def input_changed(recorded: dict | None, path, series_uid: str | None = None) -> str | None:
    """Why the input at ``path`` is no longer what ``recorded`` (an :func:`input_identity`) describes, or
    None when it is the same (or when there is no record to compare, e.g. a report of an older version)."""
    if not isinstance(recorded, dict) or "bytes" not in recorded:
        return None
    from .input_checks import check_input_kind

    path = Path(path)
    try:
        check_input_kind(path)
        files = _files(path, series_uid)
        size, mtime = _stat(files)
    except OSError as exc:
        return f"it can no longer be read ({exc.strerror or exc})"
    except InputError as exc:  # the folder no longer holds the series
        return str(exc)
    if path.is_dir() and recorded.get("files") not in (None, len(files)):
        return f"its series now has {len(files)} files, not {recorded['files']}"
    if size != recorded["bytes"]:
        return f"its size changed ({recorded['bytes']} -> {size} bytes)"
    if mtime == recorded.get("mtime_ns"):
        return None
    if _sha256(files, path) != recorded.get("sha256"):
        return "its content changed (another SHA-256, same size)"
    return None
