"""File helpers every room needs: a file's SHA-256 and a small file replaced atomically.

One copy of each, so a model's checksum is computed the same way when training writes the
card, when the registry verifies it and when serving loads it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def sha256_of(path: Path | str) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (models are tens of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_text(path: Path | str, text: str) -> None:
    """Replace ``path`` with ``text`` so a reader sees the old or the new file, never half.

    Written to a temporary file in the same folder, fsynced, then renamed over the target
    (atomic on POSIX and Windows); the temporary file is removed if anything fails.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
