"""When a jlog writer syncs: the :class:`Durability` policy."""

from __future__ import annotations

import enum

import attrs

from mhafail.errors import JlogInvalidArgument


class DurabilityMode(enum.Enum):
    """How a writer syncs segment data to disk."""

    NONE = "none"
    FSYNC = "fsync"
    GROUP = "group"


@attrs.frozen
class Durability:
    """What a caller can rely on once ``write()``/``write_many()`` returns.

    - :meth:`none`: records are in the OS page cache. They survive a crash
      of the writing process, not a power loss or kernel crash (data is
      synced at rollover and close only, like libjlog in every safety mode).
    - :meth:`fsync`: every call ends with ``fdatasync``: the records also
      survive a power loss. Slowest; ``write_many`` pays it once per batch.
    - :meth:`group`: ``fdatasync`` once ``max_records`` records are unsynced
      and/or ``max_delay`` seconds after the oldest unsynced write (a
      background thread enforces the delay even when writes stop). A
      process crash loses nothing; a power loss loses at most the last
      ``max_records`` records or ``max_delay`` seconds of writes.

    Attributes:
        mode: the policy.
        max_records: group commit: sync after this many unsynced records.
        max_delay: group commit: sync at most this many seconds after a write.
    """

    mode: DurabilityMode = DurabilityMode.NONE
    max_records: int | None = None
    max_delay: float | None = None

    @classmethod
    def none(cls) -> Durability:
        """No fsync by the writer: survives process crashes only."""
        return cls(DurabilityMode.NONE)

    @classmethod
    def fsync(cls) -> Durability:
        """``fdatasync`` before every write returns: survives power loss."""
        return cls(DurabilityMode.FSYNC)

    @classmethod
    def group(cls, *, max_records: int | None = None, max_delay: float | None = None) -> Durability:
        """Group commit by record count and/or delay.

        Raises:
            JlogInvalidArgument: neither bound given, or one is not positive.
        """
        if max_records is None and max_delay is None:
            raise JlogInvalidArgument("group commit needs max_records and/or max_delay")
        if max_records is not None and max_records < 1:
            raise JlogInvalidArgument("group commit max_records must be >= 1")
        if max_delay is not None and not max_delay > 0:
            raise JlogInvalidArgument("group commit max_delay must be > 0 seconds")
        return cls(DurabilityMode.GROUP, max_records, max_delay)
