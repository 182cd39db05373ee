"""Small file-system helpers shared by the components that write durably."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: str | os.PathLike[str] | Path) -> None:
    """fsync a directory, making the files created, renamed or unlinked in it durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
