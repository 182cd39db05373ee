"""File operations confined to one directory: no ``..``, no symbolic links, ever.

Every function takes a ``root`` directory and a repository path. The path
is checked with :func:`~mhafail.config._paths.check_path` (so ``..``, ``.``,
empty, ``.git`` and control characters are refused before any system
call), then walked one component at a time from a descriptor of ``root``
with ``O_NOFOLLOW``: a symbolic link anywhere below ``root`` (planted by
a commit, an operator or another process) makes the operation fail instead
of being followed out of the tree. ``root`` itself may be a link (it is
configured by the operator).

Files are replaced by writing a fresh, uniquely named temporary file and
renaming it over the old name, so a hard link into a live version is never
written through, and two processes writing the same path (the agent and an
operator's CLI) never share a temporary name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from mhafail.config._paths import check_path
from mhafail.errors import InvalidChange

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
TEMP_SUFFIX = ".mhafail-tmp"


def _refuse(root: Path, path: str, exc: OSError) -> InvalidChange:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return InvalidChange(
            f"{path}: refusing to follow a symbolic link (or a non-directory) under {root}"
        )
    return InvalidChange(f"{path}: {exc.strerror or exc} under {root}")


@contextlib.contextmanager
def _parent(root: Path, path: str, *, create: bool) -> Iterator[tuple[int, str] | None]:
    """Yield ``(fd of the parent directory, last name)``; None if a directory is missing."""
    parts = check_path(path).split("/")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    yield None
                    return
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
        yield fd, parts[-1]
    except OSError as exc:
        raise _refuse(root, path, exc) from exc
    finally:
        os.close(fd)


def write_file(root: Path, path: str, data: bytes, mode: int = 0o644) -> None:
    """Create or replace the regular file ``root/path`` with ``data``.

    Missing directories are created. The file is written under a unique
    temporary name and renamed into place (never written through an
    existing link of any kind).

    Raises:
        InvalidChange: ``path`` is unsafe, a component below ``root`` is a
            symbolic link or a file, or ``path`` is an existing directory.
    """
    with _parent(root, path, create=True) as found:
        assert found is not None
        fd, name = found
        tmp = f".{name[:64]}.{secrets.token_hex(6)}{TEMP_SUFFIX}"
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode, dir_fd=fd)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(out, view) :]
                os.fchmod(out, mode)
            finally:
                os.close(out)
            os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=fd)
            raise


def remove_file(root: Path, path: str) -> bool:
    """Remove the file (or symbolic link itself) ``root/path``; prune empty parents.

    Parent directories left empty are removed up to (not including)
    ``root``, as git does, so a later version may put a file where the
    directory was.

    Returns:
        True when something was removed, False when it was not there.

    Raises:
        InvalidChange: ``path`` is unsafe, a component is a symbolic link,
            or ``path`` is a directory.
    """
    parts = path.split("/")
    with _parent(root, path, create=False) as found:
        if found is None:
            return False
        fd, name = found
        try:
            os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            return False
    for depth in range(len(parts) - 1, 0, -1):
        parent = "/".join(parts[:depth])
        try:
            with _parent(root, parent, create=False) as up:
                if up is None:
                    break
                os.rmdir(up[1], dir_fd=up[0])
        except (OSError, InvalidChange):
            break  # not empty (or gone): stop pruning here
    return True


def read_regular(root: Path, path: str) -> bytes | None:
    """The bytes of the regular file ``root/path``, or None when there is none.

    Raises:
        InvalidChange: ``path`` is unsafe, or it or a directory on the way
            is a symbolic link (a commit carries files, never their targets).
    """
    with _parent(root, path, create=False) as found:
        if found is None:
            return None
        fd, name = found
        try:
            file = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            return None
        try:
            info = os.fstat(file)
            if not stat.S_ISREG(info.st_mode):
                return None
            chunks = []
            while chunk := os.read(file, 1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(file)
