"""What a browser may send the server: one CT file, size-limited, saved under a name the server chooses.

The uploaded file's own name is used for two things only: its ending (which reader to use, from the same
list the command line accepts) and the label shown on the page. It never becomes a path: a name such as
``../../etc/passwd.nrrd`` or ``CT\\x00.nii`` is saved as ``upload-<n>.nrrd`` / ``upload-<n>.nii`` in the
server's own upload folder. Reading and validating the saved file is the command line's own code
(:func:`LumbarSegLib.io.images.load_ct`, called by :mod:`.session`).
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
from pathlib import Path

from ..errors import InputError

# Single-file CT formats the engine reads (io.read_image); DICOM series come as a server-side folder.
UPLOAD_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
# .nhdr / .mhd keep their voxels in a second file, which one upload cannot bring along.
DETACHED_HEADER_SUFFIXES = (".nhdr", ".mhd")
_counter = itertools.count(1)
UPLOAD_FOLDER = "uploads"  # under --work-dir
EXPORT_FOLDER = "exports"


def upload_suffix(client_name: str) -> str:
    """The accepted ending of ``client_name`` (lower case), or an :class:`InputError` naming what is accepted."""
    name = str(client_name or "").strip().lower()
    for suffix in UPLOAD_SUFFIXES:
        if name.endswith(suffix):
            if suffix in DETACHED_HEADER_SUFFIXES:
                raise InputError(f"'{display_name(client_name)}' is a header whose voxels are in a separate file, "
                                 "which an upload cannot bring along; upload a single-file CT (.nii.gz, .nii, "
                                 ".nrrd with its data inside, .mha) or open a server-side folder.")
            return suffix
    raise InputError(f"'{display_name(client_name)}' is not a CT file this app reads; upload a .nii.gz, .nii, "
                     ".nrrd or .mha file (a DICOM series: ask for it to be put in the server's data folder).")


def display_name(client_name: str, limit: int = 80) -> str:
    """The client's file name made safe to show: printable characters only, no folders, at most ``limit``."""
    base = re.split(r"[\\/]", str(client_name or ""))[-1]
    base = "".join(ch if ch.isprintable() else "?" for ch in base).strip() or "upload"
    return base if len(base) <= limit else base[: limit - 3] + "..."


def check_upload_size(size: int, max_bytes: int) -> None:
    if max_bytes <= 0:
        raise InputError("Uploads are switched off on this server (--max-upload-mb 0); open the sample CT or a "
                         "file from the server's data folder.")
    if size > max_bytes:
        raise InputError(f"The file is {size / 1e6:.1f} MB, more than this server accepts "
                         f"({max_bytes / 1e6:.0f} MB, --max-upload-mb); crop it to the lumbar region first.")
    if size == 0:
        raise InputError("The uploaded file is empty.")


def _new_upload_file(upload_dir, suffix: str) -> tuple[Path, int]:
    """A new, empty file in ``upload_dir``: created exclusively (never over another one), owner-only."""
    upload_dir = Path(upload_dir)
    upload_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    while True:
        path = upload_dir / f"upload-{os.getpid()}-{next(_counter)}{suffix}"
        try:
            return path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue


class PieceUpload:
    """One CT arriving in pieces (:data:`.transport.PIECE_BYTES` each), written to disk as they come.

    The running count is checked before each piece is written: the upload is refused, and what had
    arrived deleted, as soon as it would pass ``max_bytes`` or the size the page declared at the start -
    so a page that skips the browser's size check makes the server hold one piece at a time, never the
    file. Pieces must come in order (each one's offset is the count so far)."""

    def __init__(self, client_name: str, size, upload_dir, max_bytes: int):
        suffix = upload_suffix(client_name)
        self.client_name = client_name  # what the page called it (for the result's label)
        try:
            self.size = int(size)
        except (TypeError, ValueError):
            raise InputError("The page did not say how large the file is; choose the CT file again.") from None
        check_upload_size(self.size, max_bytes)
        self.max_bytes = int(max_bytes)
        self.token = secrets.token_hex(16)  # names this upload in its pieces: a stale page's piece cannot join
        self.received = 0
        self.path, fd = _new_upload_file(upload_dir, suffix)
        self._handle = os.fdopen(fd, "wb")

    def add(self, offset, data) -> None:
        if not isinstance(data, (bytes, bytearray)):
            self.discard()
            raise InputError("A piece of the upload was not file data; choose the CT file again.")
        if offset != self.received:
            self.discard()
            raise InputError("A piece of the upload arrived out of order; choose the CT file again.")
        if self.received + len(data) > self.max_bytes:
            self.discard()
            raise InputError(f"The file is more than this server accepts ({self.max_bytes / 1e6:.0f} MB, "
                             "--max-upload-mb); the upload was stopped and discarded. Crop it to the lumbar "
                             "region first.")
        if self.received + len(data) > self.size:
            self.discard()
            raise InputError("More arrived than the file's size; the upload was stopped and discarded.")
        self._handle.write(data)
        self._handle.flush()  # to the file now: the server holds no piece once its answer is sent
        self.received += len(data)

    def finish(self) -> Path:
        if self.received != self.size:
            got = self.received
            self.discard()
            raise InputError(f"The upload stopped after {got / 1e6:.1f} of {self.size / 1e6:.1f} MB; "
                             "choose the CT file again.")
        self._handle.close()
        return self.path

    def discard(self) -> None:
        """Stop and delete what arrived (a refused, replaced or abandoned upload)."""
        if not self._handle.closed:
            self._handle.close()
        self.path.unlink(missing_ok=True)


def save_upload(client_name: str, content: bytes, upload_dir, max_bytes: int) -> Path:
    """Write ``content`` into ``upload_dir`` under a server-chosen name with ``client_name``'s ending: the
    same checks and file as a :class:`PieceUpload` of one piece."""
    upload = PieceUpload(client_name, len(content), upload_dir, max_bytes)
    upload.add(0, content)
    return upload.finish()


def remove_patient_data(work_dir, *, keep_uploads: bool = False) -> list[Path]:
    """At the server's exit: remove the uploaded CTs (patient data) and what was left of the exports from a
    ``--work-dir`` the server does not own, unless ``keep_uploads``; returns the folders removed. The
    work folder itself, and anything else in it, is the user's and stays."""
    import shutil

    removed = []
    for name in (() if keep_uploads else (UPLOAD_FOLDER,)) + (EXPORT_FOLDER,):
        folder = Path(work_dir) / name
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed
