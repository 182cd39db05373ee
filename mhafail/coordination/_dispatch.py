"""A worker thread that runs listener callbacks off kazoo's threads.

kazoo calls its listeners on its own event thread; a listener that blocks
there stalls every watch and every reply of the session (kazoo's docs say
as much). The coordinator therefore only enqueues there, and this worker
runs the application's callbacks one at a time, in order.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

_STOP = object()


class Dispatcher:
    """Runs posted callables in order on one daemon thread.

    A callable that raises is logged and does not stop the worker. Callables
    must not block for long: everything behind them waits.
    """

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def post(self, fn: Callable[..., object], *args: object) -> None:
        """Queue ``fn(*args)`` to run on the worker thread. Never blocks."""
        self._queue.put((fn, args))

    def stop(self, timeout: float = 5.0) -> None:
        """Run what is queued, then end the worker (waits up to ``timeout``)."""
        self._queue.put(_STOP)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            fn, args = item
            try:
                fn(*args)
            except Exception:
                logger.exception("listener %r failed", fn)


def in_loop(loop: asyncio.AbstractEventLoop, fn: Callable[..., object]) -> Callable[..., None]:
    """Wrap ``fn`` so that calling the wrapper runs ``fn`` on ``loop``.

    Use it to receive coordinator or component events in asyncio code::

        coordinator.add_state_listener(in_loop(asyncio.get_running_loop(), on_state))

    The wrapper returns at once (``loop.call_soon_threadsafe``); events
    arriving after the loop closed are dropped.
    """

    def wrapper(*args: object) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(fn, *args)

    return wrapper
