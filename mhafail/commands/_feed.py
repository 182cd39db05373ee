"""A node's view of ``commands/requests``: the latest list of request ids, from a watch.

Every change of the folder costs the node one round trip: the read that
re-arms ZooKeeper's one-shot children watch is the new list
(``Znodes.watch_list``), handed over here in order. The agent never lists
the folder itself: a list read beside the watch could arrive after a newer
one and make a running request look deleted. To converge anyway (a watch
whose re-arm read failed is gone, safety rule 2), the folder is
listed after ``period`` seconds without a list from the watch: when that
list differs from the watch's last, the watch is replaced by a fresh one,
whose first list comes after everything the old one delivered.

While the folder does not exist (no manager ever ran), an exists watch
waits for it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from mhafail.commands._model import REQUESTS
from mhafail.coordination import Watch, Znodes


class RequestFeed:
    """The request ids in ``commands/requests``, as the folder's watch last listed them.

    Args:
        znodes: the coordinator's znodes (read when arming).
        kick: called (on the dispatcher thread) when a new list or the
            folder arrives; must not block.
        period: seconds without a list after which the folder is checked.

    Thread safety: all methods may be called from any thread.
    """

    def __init__(self, znodes: Callable[[], Znodes], kick: Callable[[], None], period: float):
        self._znodes = znodes
        self._kick = kick
        self._period = period
        self._lock = threading.Lock()
        self._folder: Watch | None = None
        self._list: Watch | None = None
        self._names: list[str] | None = None
        self._fresh = False
        self._listed_at = 0.0
        self._generation = 0  # of the list watch; lists of older ones are dropped
        self._missing = False  # the folder was absent at the last list

    def names(self) -> tuple[list[str] | None, bool]:
        """The latest list (None before the first) and whether it is new since the last call.

        Arms the watches that are missing, and replaces a list watch that
        has been silent for ``period`` seconds and missed a change.

        Raises:
            CoordinationError: a watch could not be armed (try again later).
        """
        now = time.monotonic()
        z = self._znodes()
        with self._lock:
            arm_folder = self._folder is None
            silent = self._list is not None and now - self._listed_at > self._period
            arm_list = self._list is None and not self._missing
            if silent:
                self._listed_at = now
            known = self._names
        if silent and z.children(REQUESTS) != known:
            # The watch missed a change (its re-arm read failed): a new one.
            # The list read here only tells; the new watch's list is used.
            arm_list = True
            with self._lock:
                if self._list is not None:
                    self._list.cancel()
                    self._list = None
        if arm_folder:
            folder = z.watch_changes(REQUESTS, self._on_folder)
            with self._lock:
                self._folder = folder
        if arm_list:
            with self._lock:
                self._listed_at = now  # the new watch gets a period to answer
                self._generation += 1
                generation = self._generation
            watch = z.watch_list(REQUESTS, lambda names: self._on_list(generation, names))
            with self._lock:
                if self._generation == generation:
                    self._list = watch
                else:
                    watch.cancel()  # reset meanwhile
        with self._lock:
            fresh, self._fresh = self._fresh, False
            return self._names, fresh

    def reset(self) -> None:
        """Drop the watches (a new session, or stopping); the next :meth:`names` arms new ones."""
        with self._lock:
            watches = [w for w in (self._folder, self._list) if w is not None]
            self._folder = self._list = None
            self._generation += 1
        for watch in watches:
            watch.cancel()

    def _on_folder(self, _path: str) -> None:
        with self._lock:
            self._missing = False  # it may exist now: list it
        self._kick()

    def _on_list(self, generation: int, names: list[str] | None) -> None:
        with self._lock:
            if generation != self._generation:
                return
            self._listed_at = time.monotonic()
            if names is None:
                # The folder is gone: this watch ended; the exists watch sees it return.
                if self._list is not None:
                    self._list.cancel()
                self._list = None
                self._generation += 1
                self._missing = True
            else:
                self._names, self._fresh = names, True
        self._kick()
