"""Znodes.watch_seen against a real ZooKeeper: each event comes with the re-arming read."""

import threading
import time
from collections.abc import Callable

import pytest

from mhafail.coordination import Coordinator, Seen

pytestmark = pytest.mark.zookeeper

Factory = Callable[..., Coordinator]


class Recorder:
    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)
            self.threads.add(threading.current_thread().name)

    def wait(self, predicate: Callable[[Seen], bool], timeout: float = 10.0) -> Seen:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if self.seen and predicate(self.seen[-1]):
                    return self.seen[-1]
            time.sleep(0.01)
        raise AssertionError(f"no matching Seen; got {self.seen}")


def test_existence_watch_reports_owner_and_deletion(coordinator_factory: Factory) -> None:
    """An existence watch hands over each state: absent, created by a session, deleted."""
    c = coordinator_factory(session_timeout=2.0)
    other = coordinator_factory(session_timeout=2.0)
    rec = Recorder()
    c.znodes.ensure("w")
    c.znodes.watch_seen("w/claim", rec)
    first = rec.wait(lambda s: s.known)
    assert not first.exists
    other.znodes.create("w/claim", b"x", ephemeral=True)
    made = rec.wait(lambda s: s.exists)
    assert made.ephemeral_owner == other.session_id and made.path == "w/claim"
    other.znodes.delete("w/claim")
    rec.wait(lambda s: s.known and not s.exists)
    assert all(name.startswith("mhafail-") for name in rec.threads), rec.threads


def test_children_watch_follows_a_session_expiry_without_reads(
    coordinator_factory: Factory,
) -> None:
    """A children watch hands over the shrunken list when another session's ephemerals vanish."""
    c = coordinator_factory(session_timeout=2.0)
    other = coordinator_factory(session_timeout=2.0)
    rec = Recorder()
    c.znodes.ensure("list")
    c.znodes.create("list/mine", b"", ephemeral=True)
    other.znodes.create("list/theirs", b"", ephemeral=True)
    c.znodes.watch_seen("list", rec, children=True)
    rec.wait(lambda s: s.children == ("mine", "theirs"))
    other.stop()  # its session ends: its ephemerals go in one transaction
    last = rec.wait(lambda s: s.children == ("mine",))
    assert last.known and last.exists


def test_cancelled_watch_stays_quiet(coordinator_factory: Factory) -> None:
    """After cancel, changes are no longer handed over."""
    c = coordinator_factory(session_timeout=2.0)
    rec = Recorder()
    c.znodes.ensure("q")
    watch = c.znodes.watch_seen("q", rec, children=True)
    rec.wait(lambda s: s.children == ())
    watch.cancel()
    c.znodes.create("q/a", b"")
    time.sleep(0.3)
    assert all(s.children == () for s in rec.seen)
