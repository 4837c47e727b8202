"""A user's file, checked before a byte of it is read.

A path may name anything: a folder, ``/dev/zero`` (endless: read whole, it takes all memory), a FIFO (reading it
waits forever for a writer), or a file far larger than its kind ever is. Each is refused in one line naming it,
before it is opened.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import BadInputError

# The largest file of each kind read: media (a long video) and data (a manifest, a set's annotations, a recipe,
# an adapter's config), each read whole into memory.
MAX_MEDIA_BYTES = 8 * 2**30
MAX_DATA_BYTES = 2 * 2**30


def regular_file(path: str | Path, max_bytes: int) -> Path:
    """``path`` once it is known to be an existing regular file of at most ``max_bytes``; else BadInputError."""
    try:
        info = os.stat(path)
    except FileNotFoundError as error:
        raise BadInputError(f"{path}: file not found") from error
    except OSError as error:
        raise BadInputError(f"{path}: unreadable ({error.strerror})") from error
    if not stat.S_ISREG(info.st_mode):
        raise BadInputError(f"{path}: not a regular file (a {_kind(info.st_mode)})")
    if info.st_size > max_bytes:
        raise BadInputError(f"{path}: {info.st_size:,} bytes, more than the {max_bytes:,} read from one file")
    return Path(path)


def _kind(mode: int) -> str:
    kinds = [(stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
             (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")]
    return next((name for test, name in kinds if test(mode)), "special file")
