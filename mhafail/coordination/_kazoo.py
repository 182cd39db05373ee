"""Translation of kazoo's exceptions into :mod:`mhafail.errors`.

This is the only place that names kazoo exception classes; every call into
kazoo goes through :func:`translated` so callers never see them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from kazoo import exceptions as kex
from kazoo.handlers.threading import KazooTimeoutError

from mhafail.errors import (
    AccessDenied,
    CoordinationError,
    CoordinationUnavailable,
    SessionLost,
)


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Run a kazoo call, re-raising its errors as mhafail errors.

    Args:
        what: a short description of the operation for the message
            (``"create /members/n1"``).
    """
    try:
        yield
    except kex.SessionExpiredError as exc:
        raise SessionLost(f"{what}: the ZooKeeper session is not live") from exc
    except (kex.ConnectionLoss, kex.OperationTimeoutError, KazooTimeoutError) as exc:
        raise CoordinationUnavailable(f"{what}: ZooKeeper did not answer ({exc!r})") from exc
    except kex.ConnectionClosedError as exc:
        raise CoordinationUnavailable(f"{what}: the coordinator is stopped") from exc
    except (kex.NoAuthError, kex.AuthFailedError) as exc:
        raise AccessDenied(f"{what}: refused by ZooKeeper ACLs (check credentials)") from exc
    except kex.KazooException as exc:
        raise CoordinationError(f"{what}: {type(exc).__name__}: {exc}") from exc
