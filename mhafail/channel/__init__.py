"""One authenticated channel for every mhafail port (logs, audit, and later commands).

A :class:`Listener` serves a port: each connection first passes a mutual
HMAC handshake with fresh nonces from both sides (a shared secret from a
file, see :func:`read_secret_file`), optionally inside mutual TLS; then
every frame carries a MAC over its direction, sequence number and payload,
keyed per connection, so injected, replayed, reordered or altered frames
are refused and the connection closed. Until the handshake completes a
frame holds at most 4 KiB; handshakes and idle connections time out; a
listener holds a bounded number of connections. :func:`connect` is the
client side. :func:`endpoints_in` finds peers' ``host:port`` in a
membership view. See ``docs/channel.md``.
"""

from ._channel import Channel as Channel
from ._channel import connect as connect
from ._endpoints import endpoints_in as endpoints_in
from ._endpoints import format_endpoint as format_endpoint
from ._endpoints import parse_endpoint as parse_endpoint
from ._frames import DEFAULT_MAX_FRAME as DEFAULT_MAX_FRAME
from ._frames import PRE_AUTH_FRAME as PRE_AUTH_FRAME
from ._listener import Listener as Listener
from ._security import ChannelSecurity as ChannelSecurity
from ._security import is_loopback as is_loopback
from ._security import read_secret_file as read_secret_file

__all__ = [
    "DEFAULT_MAX_FRAME",
    "PRE_AUTH_FRAME",
    "Channel",
    "ChannelSecurity",
    "Listener",
    "connect",
    "endpoints_in",
    "format_endpoint",
    "is_loopback",
    "parse_endpoint",
    "read_secret_file",
]
