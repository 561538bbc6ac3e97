"""Folders the toolkit writes into (the kernel cache, emit's -o): made on first use, with
an error that names the setting that points there and says what to do, instead of an
OSError from deep inside a build."""
from __future__ import annotations

import errno
import os
from pathlib import Path


class FolderError(OSError):
    """A folder the toolkit must write into cannot be made or written."""


def make_folder(path: Path, what: str, fix: str) -> Path:
    """Create `path` (and its parents) if needed and check it is writable; `what` names
    it for the message ("the kernel cache (BACKPROP_CACHE=...)"), `fix` says what to do."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    except OSError as exc:
        if isinstance(exc, (FileExistsError, NotADirectoryError)):
            reason = "it, or a folder above it, is a file"
        else:
            reason = (exc.strerror or str(exc)).lower()
        raise FolderError(f"cannot use {path} as {what}: {reason}; {fix}") from None
    return path
