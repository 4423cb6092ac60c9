"""Output folders that hold one result, whole or not at all.

A result (label map, STL files, preview, report) is written into a hidden staging folder beside the
target (``.NAME.XXXX.partial``, same file system) and moved into place with one rename at the end, after
``report.json`` - the completeness mark - was written last. So the target folder is never seen half
written, never mixes two runs' files, and an interrupted or failed run (Ctrl-C, a full disk, an error)
leaves the target as it was. Every file a command writes under :attr:`OutputFolder.staging` is covered
without further work.

Rules, checked before anything is computed:

* a target that does not exist, or an empty folder, is fine;
* a folder holding a LumbarSeg result (its ``report.json``) is refused unless ``overwrite``; then the whole
  earlier result is replaced, never merged;
* a folder holding anything else is refused even with ``overwrite`` (a result replaces a whole folder,
  and a user's own files must never be deleted);
* a read-only folder or file (no write permission bit, or not writable for this user) is refused, and so
  is a path under a regular file;
* a folder holding one of the command's inputs (``inputs``) is refused: replacing it would delete them;
* a second run into the same folder is refused while the first holds the lock (an OS file lock on
  ``.NAME.lumbarseg.lock`` beside the target, released by the OS even if the process is killed).

* a folder name too long for the hidden names made from it, or a path through a symbolic-link loop, is
  refused naming the path as given.

``--overwrite`` swaps the new result and the earlier one in one step on Linux (``renameat2`` with
``RENAME_EXCHANGE``), so the folder always holds one whole result, even when the process is killed
during the swap. Where that call is missing (other systems, file systems without it) two renames are
used; a kill between them leaves the earlier result in a hidden ``.replaced`` folder beside the target,
which the next run puts back. Staging and replaced folders left behind by a killed process are removed by
the next run that holds the lock.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import json
import os
import sys
import shutil
import stat
import tempfile
from pathlib import Path

from ..errors import InputError
from ..io.text_files import _umask

REPORT_NAME = "report.json"
REPORT_MARKER_KEY = "lumbarseg_version"  # every LumbarSeg report.json has it
_STAGING_SUFFIX = ".partial"
_REPLACED_SUFFIX = ".replaced"
_LOCK_SUFFIX = ".lumbarseg.lock"
# The longest hidden name made from the target's name: "." + NAME + "." + 8 random characters + ".replaced".
_HIDDEN_NAME_EXTRA = 2 + 8 + len(_REPLACED_SUFFIX)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange_paths(a, b) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``). False where the
    system or the file system does not offer it (nothing was changed then); other failures raise OSError."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28, musl >= 1.2.4
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):  # kernel or file system lacks it
        return False
    raise OSError(code, os.strerror(code), os.fspath(a), None, os.fspath(b))


def is_read_only(path: Path) -> bool:
    """True when ``path`` may not be written: no write permission bit at all (the owner's intent, which
    even root honours here), or not writable for this user (permissions, ACLs, read-only mounts)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return (mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)) == 0 or not os.access(path, os.W_OK)


def _first_existing_ancestor(path: Path) -> Path:
    for candidate in [path, *path.parents]:
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(path.anchor or ".")


def check_writable_location(path: Path, what: str) -> None:
    """The folder that will hold ``path`` exists or can be created, and is writable.

    Raises :class:`InputError` for a path under a regular file or in a read-only folder, so the problem
    is reported before any computing, not after.
    """
    ancestor = _first_existing_ancestor(path.parent)
    if not ancestor.is_dir():
        raise InputError(f"{what} {path} cannot be created: {ancestor} is a file, not a folder. "
                         f"Choose a path in a folder.")
    if is_read_only(ancestor):
        raise InputError(f"{what} {path} cannot be written: the folder {ancestor} is read-only. "
                         f"Choose a writable location.")


def check_output_file(path, what: str = "Output file") -> Path:
    """Checks for a single output file (e.g. ``evaluate -o metrics.json``) before computing."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what} {path} is an existing folder; give a file name.")
    check_writable_location(path, what)
    if path.exists() and is_read_only(path):
        raise InputError(f"{what} {path} exists and is read-only; LumbarSeg will not replace it. "
                         f"Choose another file name or make it writable.")
    return path


def read_result_report(folder: Path) -> dict | None:
    """The LumbarSeg report in ``folder`` (None if there is none or it is not a LumbarSeg report)."""
    try:
        data = json.loads((folder / REPORT_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and REPORT_MARKER_KEY in data else None


def _lock_file(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class OutputFolder:
    """Context manager: ``with OutputFolder(target, overwrite=...) as out:`` write files under
    ``out.staging``, then call ``out.commit(report)``; leaving the block without ``commit`` (an exception,
    Ctrl-C) removes everything written and leaves ``target`` untouched.
    """

    def __init__(self, target, *, overwrite: bool = False, what: str = "Output folder", inputs=()):
        # A symlinked folder is written where it points (the staging folder goes beside the real folder,
        # and the link is kept instead of being replaced by a folder).
        self.given = Path(target)  # as the user wrote it, for messages
        self.target = Path(os.path.realpath(os.fspath(target)))
        self.overwrite = overwrite
        self.inputs = [Path(p) for p in inputs if p]  # files the command reads: never inside the replaced folder
        self.what = what
        self.staging: Path | None = None
        self.replaced_report: dict | None = None
        self._lock_fd: int | None = None
        self._committed = False
        self._created_parents: list[Path] = []  # folders made for the target, removed again if nothing is committed

    # ------------------------------------------------------------------ paths
    @property
    def _lock_path(self) -> Path:
        return self.target.parent / f".{self.target.name}{_LOCK_SUFFIX}"

    def final(self, path) -> Path:
        """Where a file written under :attr:`staging` will be once the result is in place."""
        return self.target / Path(path).relative_to(self.staging)

    # ------------------------------------------------------------------ checks
    def check(self) -> None:
        """Refuse unusable targets (see the module docstring). Called again under the lock."""
        target = self.target
        if target.name in ("", ".", ".."):
            raise InputError(f"{self.what} {target} is not a usable folder name.")
        self._check_path_resolves()
        if target.exists() and not target.is_dir():
            raise InputError(f"{self.what} {target} is an existing file, not a folder; give a folder name.")
        check_writable_location(target, self.what)
        if not target.is_dir():
            return
        if is_read_only(target):
            raise InputError(f"{self.what} {target} is read-only; LumbarSeg will not write into it. "
                             f"Choose another folder or make it writable.")
        real_target = target.resolve()
        for path in self.inputs:
            if real_target in Path(os.path.abspath(path)).resolve().parents:
                raise InputError(f"The input {path} lies inside the output folder {target}, which a new result "
                                 f"replaces as a whole (the input with it). Choose another output folder.")
        entries = sorted(p.name for p in target.iterdir())
        if not entries:
            return
        report = read_result_report(target)
        if report is None:
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise InputError(f"{self.what} {target} is not empty ({len(entries)} entries: {shown}) and holds no "
                             f"LumbarSeg result; a result replaces a whole folder, so LumbarSeg will not write "
                             f"there. Choose a new or empty folder.")
        if not self.overwrite:
            source = (report.get("input") or {}).get("path")
            of = f" (of {source}, {report.get('created', 'undated')})" if source else ""
            raise InputError(f"{self.what} {target} already holds a LumbarSeg result{of}. Add --overwrite to "
                             f"replace it as a whole, or choose another folder.")
        for path in [target, *target.rglob("*")]:
            if not path.is_symlink() and is_read_only(path):
                raise InputError(f"{self.what} {target} holds a read-only entry {path}; LumbarSeg will not "
                                 f"replace it. Make it writable or choose another folder.")
        self.replaced_report = report

    def _check_path_resolves(self) -> None:
        """A symbolic-link loop or a name too long for the hidden names beside it would fail only when the
        result is moved into place, after the computing, naming a hidden file: refuse them now."""
        try:
            os.stat(self.target)
        except OSError as exc:  # other failures (absent, under a file, too long) are named by the checks below
            if exc.errno == errno.ELOOP:
                raise InputError(f"{self.what} {self.given} cannot be used: its path runs through a loop of "
                                 f"symbolic links (a link that leads back to itself). Choose another folder.") from None
        ancestor = _first_existing_ancestor(self.target.parent)
        try:
            name_max = os.pathconf(ancestor, "PC_NAME_MAX")
        except (OSError, ValueError, AttributeError):
            name_max = 255
        length = len(os.fsencode(self.target.name))
        if length + _HIDDEN_NAME_EXTRA > name_max:
            raise InputError(f"{self.what} {self.given} cannot be used: its name is {length} bytes long, and "
                             f"LumbarSeg needs at most {name_max - _HIDDEN_NAME_EXTRA} (it writes hidden working "
                             f"folders beside it named after it, and this file system allows {name_max}-byte "
                             f"names). Choose a shorter name.")

    # ------------------------------------------------------------------ lock
    def _acquire_lock(self) -> None:
        lock_path = self._lock_path
        while True:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _lock_file(fd):
                try:
                    holder = os.read(fd, 64).decode("ascii", "replace").strip()
                finally:
                    os.close(fd)
                raise InputError(f"Another LumbarSeg run{f' (process {holder})' if holder else ''} is writing "
                                 f"to {self.target}; wait for it to finish or choose another folder.")
            try:  # the previous holder may have removed the file between our open and lock: use the live one
                same = os.path.samestat(os.fstat(fd), os.stat(lock_path))
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode("ascii"))
                self._lock_fd = fd
                return
            os.close(fd)

    def _release_lock(self) -> None:
        if self._lock_fd is None:
            return
        try:
            self._lock_path.unlink()  # while still holding the lock (see _acquire_lock)
        except OSError:
            pass
        os.close(self._lock_fd)
        self._lock_fd = None

    def clear_stale(self) -> bool:
        """Remove what killed runs left beside the target (as the next run there would), under the lock;
        False when another run holds the lock (its folders are its own to finish)."""
        try:
            self._acquire_lock()
        except InputError:
            return False
        try:
            self._remove_stale()
        finally:
            self._release_lock()
        return True

    def _is_own_hidden(self, name: str) -> bool:
        """Whether ``name`` is one of this target's staging/replaced folders: ``.<target>.<random>.partial`` (or
        ``.replaced``), the random part (mkdtemp's) without a dot. A sibling target whose name extends this one's
        by a dotted suffix (``case1`` and ``case1.v2``, batch ids keep dots) has its own, never touched here."""
        prefix = f".{self.target.name}."
        for suffix in (_STAGING_SUFFIX, _REPLACED_SUFFIX):
            if name.startswith(prefix) and name.endswith(suffix) and len(name) > len(prefix) + len(suffix):
                return "." not in name[len(prefix):-len(suffix)]
        return False

    def _remove_stale(self) -> None:
        """Staging/replaced folders of runs that were killed (we hold the lock, so none is alive). A run
        killed between the two renames of :meth:`commit` left no target and the earlier result in its
        replaced folder: that result is put back, as an interrupted run must leave the target as it was."""
        stale = [path for path in self.target.parent.glob(f"{glob.escape(f'.{self.target.name}.')}*")
                 if path.is_dir() and not path.is_symlink() and self._is_own_hidden(path.name)]
        if not self.target.exists():
            earlier = [path for path in stale if path.name.endswith(_REPLACED_SUFFIX) and read_result_report(path)]
            if earlier:
                newest = max(earlier, key=lambda path: path.stat().st_mtime)
                os.rename(newest, self.target)
                stale.remove(newest)
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)

    # ------------------------------------------------------------------ context
    def __enter__(self) -> OutputFolder:
        self.check()
        self._created_parents = [p for p in [self.target.parent, *self.target.parent.parents] if not p.exists()]
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._remove_created_parents()
            raise InputError(f"{self.what} {self.target}: its parent folder cannot be created "
                             f"({exc.strerror or exc}).") from None
        try:
            self._acquire_lock()
        except PermissionError:
            self._remove_created_parents()
            raise InputError(f"{self.what} {self.target} cannot be written: the folder {self.target.parent} "
                             f"is not writable.") from None
        try:
            self._remove_stale()
            self.check()  # again, under the lock: another run may have finished meanwhile
            self.staging = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", suffix=_STAGING_SUFFIX,
                                                 dir=self.target.parent))
            os.chmod(self.staging, 0o777 & ~_umask())  # mkdtemp's 0700 would make the result private
        except BaseException:
            self._release_lock()
            self._remove_created_parents()
            raise
        return self

    def commit(self, report: dict) -> Path:
        """Write ``report.json`` (last) and move the staging folder into place; returns the report's path."""
        from ..io.text_files import write_json

        write_json(report, self.staging / REPORT_NAME)
        old = None
        if self.target.exists() and exchange_paths(self.staging, self.target):
            old = self.staging  # holds the earlier result now; a killed run leaves it as a stale staging folder
        elif self.target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", suffix=_REPLACED_SUFFIX,
                                        dir=self.target.parent))
            os.rmdir(old)
            os.rename(self.target, old)
        if old is not self.staging:
            try:
                os.rename(self.staging, self.target)
            except BaseException:
                if old is not None:
                    os.rename(old, self.target)
                raise
        self.staging = self.target
        self._committed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.target / REPORT_NAME

    def _remove_created_parents(self) -> None:
        """Remove the (still empty) folders :meth:`__enter__` made for a result that never came."""
        for path in self._created_parents:  # deepest first
            try:
                path.rmdir()
            except OSError:  # not empty (someone else wrote there meanwhile) or already gone
                break

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if not self._committed and self.staging is not None:
                shutil.rmtree(self.staging, ignore_errors=True)
                if exc_type is None:
                    raise RuntimeError("OutputFolder left without commit(); nothing was written.")
        finally:
            self._release_lock()
            if not self._committed:
                self._remove_created_parents()
