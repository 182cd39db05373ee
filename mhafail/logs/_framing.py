"""How records are laid out in a manager's output files (and by ``logs tail``).

Three framings; the first two are unambiguous (any record set, with
newlines, backslashes or empty records, reads back exactly):

* ``escaped`` (the default): one record per line; inside a record a
  backslash is written ``\\\\`` and a newline ``\\n``. Records without
  either (most log lines) are written as they are, so files stay greppable.
* ``length``: each record is its length in decimal, a colon, the record,
  then a newline (``5:hello\\n``): binary-safe, and still line-oriented for
  records without newlines.
* ``lines``: the record and a newline, nothing else. A record holding a
  newline reads back as two, and an empty record as an empty line: choose
  it only when records are known to be single non-empty lines.

:func:`read_records` decodes a file written in each framing.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence

from mhafail.errors import LogsError, LogsInvalidArgument


class Framing(enum.Enum):
    """How each record is written to an output file."""

    ESCAPED = "escaped"
    LENGTH = "length"
    LINES = "lines"

    @classmethod
    def parse(cls, value: str | Framing) -> Framing:
        """Return the framing named ``value``.

        Raises:
            LogsInvalidArgument: it names none.
        """
        if isinstance(value, Framing):
            return value
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(f.value for f in cls)
            raise LogsInvalidArgument(f"unknown output framing {value!r} (use {names})") from None


DEFAULT_FRAMING = Framing.ESCAPED
_ESCAPE = re.compile(rb"\\(.?)", re.DOTALL)
_UNESCAPE = {b"\\": b"\\", b"n": b"\n"}


def frame_records(payloads: Sequence[bytes], framing: Framing) -> bytes:
    """Return the bytes that append ``payloads`` to a file in ``framing``."""
    if not payloads:
        return b""
    if framing is Framing.LENGTH:
        return b"".join(b"%d:%s\n" % (len(p), p) for p in payloads)
    data = b"\n".join(payloads) + b"\n"
    if framing is Framing.LINES:
        return data
    # One scan of the batch in C; only batches that need it are escaped record by record.
    joined = b"".join(payloads)
    if b"\\" not in joined and b"\n" not in joined:
        return data
    escaped = [p.replace(b"\\", b"\\\\").replace(b"\n", b"\\n") for p in payloads]
    return b"\n".join(escaped) + b"\n"


def read_records(data: bytes, framing: Framing | str = DEFAULT_FRAMING) -> list[bytes]:
    """Decode an output file (or ``logs tail`` output) written in ``framing``.

    Raises:
        LogsError: the data is not in that framing (or ends in the middle of a record).
        LogsInvalidArgument: ``framing`` names no framing.
    """
    framing = Framing.parse(framing)
    if data and not data.endswith(b"\n"):
        raise LogsError("output ends in the middle of a record")
    if framing is Framing.LENGTH:
        return _read_length(data)
    lines = data.split(b"\n")[:-1]
    if framing is Framing.LINES:
        return lines
    return [_unescape(line) if b"\\" in line else line for line in lines]


def _unescape(line: bytes) -> bytes:
    def one(match: re.Match[bytes]) -> bytes:
        try:
            return _UNESCAPE[match.group(1)]
        except KeyError:
            what = f"\\{match.group(1).decode('latin-1')}" if match.group(1) else "a lone \\"
            raise LogsError(f"bad escape {what} in {line[:80]!r}") from None

    return _ESCAPE.sub(one, line)


def _read_length(data: bytes) -> list[bytes]:
    out = []
    pos = 0
    while pos < len(data):
        colon = data.find(b":", pos, pos + 21)
        digits = data[pos:colon]
        if colon < 0 or not digits.isdigit():
            raise LogsError(f"no record length at byte {pos}")
        start = colon + 1
        end = start + int(digits)
        if end >= len(data) or data[end : end + 1] != b"\n":
            raise LogsError(f"record at byte {pos} does not end where its length says")
        out.append(data[start:end])
        pos = end + 1
    return out
