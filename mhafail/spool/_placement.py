"""Which survivor takes over which spool. Pure.

Rendezvous (highest-random-weight) hashing, the idea VIP placement uses:
every survivor ranks the survivors for a dead node the same way, from the
same inputs, without talking. The first-ranked tries at once, the next one
``step`` seconds later, and so on; the ZooKeeper lock makes sure only one
imports. Different dead nodes rank survivors differently, so the takeovers
of several dead nodes spread over the survivors, and a survivor's failure
moves only its own share.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def score(node: str, dead: str) -> int:
    """The rendezvous weight of survivor ``node`` for ``dead``'s spool (stable everywhere)."""
    digest = hashlib.blake2b(f"spool|{node}|{dead}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rank(dead: str, survivors: Iterable[str], *, preferred: str | None = None) -> tuple[str, ...]:
    """Survivors for ``dead``'s spool, best first.

    Args:
        dead: the node whose spool is to be taken over.
        survivors: the candidates (``dead`` itself is never one).
        preferred: an operator's choice (``spool import --to``, ``drain
            --to``), first when it is a candidate.
    """
    pool = sorted({n for n in survivors if n != dead})
    ordered = sorted(pool, key=lambda n: (score(n, dead), n), reverse=True)
    if preferred in ordered:
        ordered.remove(preferred)
        ordered.insert(0, preferred)
    return tuple(ordered)
