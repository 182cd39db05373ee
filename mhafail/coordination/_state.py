"""Connection and lease states, as small documented enums."""

from __future__ import annotations

import enum


class ConnectionState(enum.Enum):
    """The coordinator's connection to ZooKeeper, as components should see it.

    * ``CONNECTED``: the session is live and the connection is up. Reads and
      writes go through; ephemeral znodes and watches are in place.
    * ``SUSPENDED``: the connection dropped; the session may or may not still
      be alive on the server. Do not start anything that needs ZooKeeper to
      agree; keep what you hold only while the fencing lease is valid (the
      lease, not this state, says when to let go).
    * ``LOST``: the session expired on the server. Every ephemeral znode and
      watch of that session is gone; the coordinator is already starting a
      new session and will report ``CONNECTED`` (and a new session id) when
      it has one. Re-create ephemeral state then.
    """

    CONNECTED = "connected"
    SUSPENDED = "suspended"
    LOST = "lost"


class LeaseState(enum.Enum):
    """Whether the fencing lease currently proves the session is alive.

    * ``VALID``: a request sent on this session was answered recently enough
      that the server cannot have expired the session yet.
    * ``EXPIRED``: no such proof; the session may already be gone on the
      server. Anything held in its name (a VIP, a spool lock) must be given
      up now.
    """

    VALID = "valid"
    EXPIRED = "expired"
