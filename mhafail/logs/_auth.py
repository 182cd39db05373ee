"""The logs side of the shared secret: checks and the secret file, in logs' own errors.

Authentication itself is :mod:`mhafail.channel`'s: a mutual HMAC handshake
with fresh nonces from both sides, then a MAC on every frame.
"""

from __future__ import annotations

import os

from mhafail.channel import read_secret_file as _read_secret_file
from mhafail.channel._security import check_secret as _check_secret
from mhafail.errors import ChannelInvalidArgument, LogsInvalidArgument


def check_secret(secret: bytes | None) -> bytes | None:
    """Return ``secret`` if it is usable.

    Raises:
        LogsInvalidArgument: it is shorter than 16 bytes (too easy to guess).
    """
    try:
        return _check_secret(secret)
    except ChannelInvalidArgument as exc:
        raise LogsInvalidArgument(str(exc)) from None


def read_secret_file(path: str | os.PathLike[str]) -> bytes:
    """Read a shared secret from a file (surrounding whitespace stripped).

    The file must be owned by this user (or root) and closed to group and
    others (``chmod 600``), as ssh requires of private keys.

    Raises:
        LogsInvalidArgument: the file cannot be read, is readable or writable
            by group or others, or the secret is too short.
    """
    try:
        return _read_secret_file(path)
    except ChannelInvalidArgument as exc:
        raise LogsInvalidArgument(str(exc)) from None
