"""Safe decoding of JSON that another process wrote (znodes, frames, state files).

Shared data is outside input (safety rule 8): a peer, a squatter or a
bug can put anything there. ``json.loads`` alone is not safe for it: a
document of ``"[" * 5000`` raises ``RecursionError`` (not a ``ValueError``),
``1e400`` becomes ``inf``, ``NaN`` is accepted, and a top-level list where an
object is expected makes callers fail with ``AttributeError``. Every reader
of shared JSON goes through :func:`decode_object`, which turns all of these
into one documented error, :class:`~mhafail.errors.MalformedData`, so the
reader can skip and log the entry instead of dying.

Pure: no I/O, importable from every subpackage.
"""

from __future__ import annotations

import json
import math
from typing import Any

from mhafail.errors import MalformedData

MAX_BYTES = 64 * 1024
"""Default size cap: ZooKeeper's own limit is 1 MiB; our documents are far smaller."""

MAX_DEPTH = 8
"""Default nesting cap: our documents nest two or three levels deep."""

_OPEN = frozenset(b"[{")
_CLOSE = frozenset(b"]}")


def decode_object(
    data: bytes | str,
    *,
    what: str,
    max_bytes: int = MAX_BYTES,
    max_depth: int = MAX_DEPTH,
) -> dict[str, Any]:
    """Decode ``data`` as one JSON object, within size and nesting caps.

    Args:
        data: the raw document (bytes are decoded as UTF-8).
        what: what the document is, for the message (``"member znode n1"``).
        max_bytes: refuse larger documents before parsing.
        max_depth: refuse documents nesting arrays/objects deeper than this
            (checked before parsing, so no recursion can run away).

    Returns:
        The decoded object. Numbers are finite (``NaN``, ``Infinity`` and
        overflowing literals such as ``1e400`` are refused).

    Raises:
        MalformedData: too large, too deep, not UTF-8, not JSON, not an
            object, or holding a non-finite number. Nothing else escapes.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise MalformedData(f"malformed {what}: {len(raw)} bytes is over the {max_bytes} cap")
    brackets = raw.count(b"[") + raw.count(b"{")
    depth = nesting_depth(raw) if brackets > max_depth else brackets
    if depth > max_depth:
        raise MalformedData(f"malformed {what}: nested {depth} deep, over the {max_depth} cap")
    try:
        value = _DECODER.decode(raw.decode("utf-8"))
    except RecursionError as exc:  # the depth check makes this unreachable; belt and braces
        raise MalformedData(f"malformed {what}: nested too deep") from exc
    except (ValueError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
        raise MalformedData(f"malformed {what}: {exc}") from exc
    if not isinstance(value, dict):
        raise MalformedData(f"malformed {what}: a JSON {type(value).__name__}, not an object")
    return value


def nesting_depth(raw: bytes) -> int:
    """The deepest array/object nesting in ``raw`` (brackets in strings do not count).

    Linear, with no recursion; exact for valid JSON and an upper bound
    for anything else, which is what a cap needs.
    """
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in _OPEN:
            depth += 1
            deepest = max(deepest, depth)
        elif byte in _CLOSE:
            depth -= 1
    return deepest


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]!r} is out of range")
    return value


# One decoder for every call: json.loads(..., parse_float=...) builds a new one each time.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)
