"""The spool: received instances on disk, exactly as sent, never half-written.

Each file is written to a hidden temporary name in its final directory, fsynced,
renamed into place and the directory fsynced, so a crash leaves either the whole
file or nothing visible. Paths come from the Study/Series/SOP Instance UIDs.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
import uuid
from pathlib import Path

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class OutOfSpace(OSError):
    """Free disk space is below the configured watermark."""


def safe_name(uid: str) -> str:
    """A UID as a file name; anything that is not a well-formed UID is hashed instead."""
    uid = uid.strip()
    if _UID.match(uid) and len(uid) <= 64:
        return uid
    return "x" + hashlib.sha256(uid.encode()).hexdigest()[:40]


class _DirectorySync:
    """Group commit for directory fsyncs: concurrent writers into one directory share one.

    A writer that renamed its file before a sync started is covered by that sync; one
    that renamed after waits for the next. With many associations filling one series
    this turns N directory fsyncs into a few.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._state: dict[str, list] = {}  # path -> [condition, requested, done, running]

    def sync(self, path: Path) -> None:
        key = str(path)
        with self._lock:
            st = self._state.get(key)
            if st is None:
                st = self._state[key] = [threading.Condition(self._lock), 0, 0, False]
            st[1] += 1
            mine = st[1]
            while st[2] < mine:
                if st[3]:
                    st[0].wait()
                    continue
                st[3], target = True, st[1]
                self._lock.release()
                try:
                    _fsync_dir(path)
                finally:
                    self._lock.acquire()
                    st[3] = False
                    st[0].notify_all()
                st[2] = max(st[2], target)
            if not st[3] and st[2] == st[1] and self._state.get(key) is st:
                del self._state[key]  # nobody waiting: forget the directory


_DIRS = _DirectorySync()


def fsync_dir(path: Path) -> None:
    _DIRS.sync(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ensure_dir(path: Path, do_fsync: bool) -> None:
    """mkdir -p, fsyncing each parent whose entry we created: the new directory survives a crash."""
    if path.is_dir():
        return
    _ensure_dir(path.parent, do_fsync)
    try:
        path.mkdir()
    except FileExistsError:
        return
    if do_fsync:
        fsync_dir(path.parent)


class SpareFile:
    """An empty temporary file created ahead of need in ``<spool>/incoming``.

    The lean listener creates one right after answering a C-STORE, while the sender
    prepares its next instance, so creating the file (a journalled metadata change that
    can take a few tenths of a ms while the disk is busy) is off the path to the next
    Success. Unused ones are removed (``discard``); a crash leaves a ``.*.tmp`` that
    :meth:`Spool.sweep_temporaries` removes."""

    def __init__(self, directory: Path):
        self.path = directory / f".{uuid.uuid4().hex}.tmp"
        self.fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)

    def take(self) -> tuple[int, Path]:
        fd, self.fd = self.fd, None
        return fd, self.path

    def discard(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        os.close(fd)
        self.path.unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes | list[bytes], do_fsync: bool = True,
                 spare: SpareFile | None = None) -> None:
    """Write ``data`` to ``path`` so that only the complete file can ever be seen there.

    ``spare``: an empty temporary file on the same file system to write into (see
    :class:`SpareFile`); otherwise one is created next to ``path``.
    """
    _ensure_dir(path.parent, do_fsync)
    chunks = [data] if isinstance(data, bytes | bytearray | memoryview) else data
    if spare is not None and spare.fd is not None:
        fd, tmp = spare.take()
    else:
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        if do_fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    if do_fsync:
        fsync_dir(path.parent)


def thumbnail_dir(spool_root: Path) -> Path:
    """Where the worklist's result pictures live: the one place that names it."""
    return Path(spool_root) / "ai"


class Spool:
    """Where instances and result objects live on disk."""

    def __init__(self, root: Path, min_free_bytes: int = 0, fsync: bool = True):
        self.root = Path(root)
        self.min_free_bytes = min_free_bytes
        self.fsync = fsync
        _ensure_dir(self.root, fsync)
        self.incoming = self.root / "incoming"  # spare temporary files (SpareFile)

    def spare(self) -> SpareFile | None:
        """An empty temporary file for the next instance, or None if it cannot be made."""
        try:
            _ensure_dir(self.incoming, self.fsync)
            return SpareFile(self.incoming)
        except OSError:
            return None

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        return (
            self.root
            / "instances"
            / safe_name(study_uid)
            / safe_name(series_uid)
            / f"{safe_name(sop_uid)}.dcm"
        )

    def result_path(self, study_uid: str, sop_uid: str) -> Path:
        return self.root / "results" / safe_name(study_uid) / f"{safe_name(sop_uid)}.dcm"

    def message_path(self, study_uid: str, name: str) -> Path:
        """A non-DICOM delivery's body (FHIR, HL7, webhook), next to the study's results;
        ``name`` is the caller's plain file name (letters, digits, ``.-_``)."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise ValueError(f"not a plain file name: {name!r}")
        return self.root / "results" / safe_name(study_uid) / name

    def thumbnail_path(self, study_uid: str) -> Path:
        return thumbnail_dir(self.root) / f"{safe_name(study_uid)}.png"

    def check_space(self, incoming: int = 0) -> None:
        free = shutil.disk_usage(self.root).free
        if free - incoming < self.min_free_bytes:
            raise OutOfSpace(
                f"spool {self.root} has {free} bytes free, below gateway.min_free_bytes="
                f"{self.min_free_bytes}; free disk space or move gateway.spool_dir"
            )

    def store(self, path: Path, data: bytes | list[bytes], spare: SpareFile | None = None) -> None:
        size = len(data) if isinstance(data, bytes) else sum(len(c) for c in data)
        self.check_space(size)
        write_atomic(path, data, self.fsync, spare)

    def sweep_temporaries(self) -> int:
        """Remove temporaries a crash left behind (they were never answered with Success)."""
        n = 0
        for tmp in self.root.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)
            n += 1
        return n
