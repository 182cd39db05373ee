"""A restarted node gets its own pre-crash counts back from its receivers (issue 13 audit 6)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mhafail.audit import AuditSeries, ClusterAudit, IncrementBatch, KeyFamily, ManualClock, Origin
from mhafail.audit._cluster import _Peer
from mhafail.channel import Channel, ChannelSecurity, Listener, connect
from mhafail.coordination import Coordinator, Membership, NodeInfo
from mhafail.errors import AuditInvalidArgument, AuditProtocolError, ChannelClosed

SECRET = b"audit-history-test-secret"
T0 = 1_717_200_000.0
V4 = 3323068416  # 198.18.0.0
START = int(T0 // 300) * 300


def _sent(series: AuditSeries, origin: Origin, counts: dict[int, int]) -> IncrementBatch:
    for key, n in counts.items():
        series.add(key, n)
    batch = series.take_batch(origin)
    assert batch is not None
    return batch


def _pair(clock: ManualClock) -> tuple[AuditSeries, AuditSeries]:
    sender = AuditSeries("conn", clock=clock, export_increments=True)
    receiver = AuditSeries("conn", clock=clock, export_increments=True, track_intervals=True)
    return sender, receiver


# --- AuditSeries ------------------------------------------------------------------


def test_origin_counts_return_only_earlier_incarnations_of_the_node() -> None:
    """origin_counts names what each other incarnation of a node sent, at its last sequence."""
    clock = ManualClock(T0)
    sender, receiver = _pair(clock)
    old, new, other = Origin("a", 1), Origin("a", 2), Origin("b", 1)
    receiver.merge(_sent(sender, old, {V4: 5}))
    receiver.merge(_sent(sender, old, {V4: 1, V4 + 1: 2}))
    receiver.merge(_sent(AuditSeries("conn", clock=clock, export_increments=True), other, {V4: 9}))
    history = receiver.origin_counts("a", exclude_incarnation=2)
    assert [(b.origin, b.seq, b.windows) for b in history] == [
        (old, 2, {START: {V4: 6, V4 + 1: 2}})
    ]
    assert receiver.origin_counts("a", exclude_incarnation=1) == []
    assert receiver.origin_counts("c", exclude_incarnation=1) == []
    assert new not in {b.origin for b in history}


def test_history_from_several_receivers_counts_once() -> None:
    """The same history twice counts once; a later one adds only what it holds beyond it."""
    clock = ManualClock(T0)
    sender, first = _pair(clock)
    second = AuditSeries("conn", clock=clock, export_increments=True)
    old = Origin("a", 1)
    batches = [_sent(sender, old, {V4: 5}), _sent(sender, old, {V4: 1, V4 + 1: 2})]
    first.merge(batches[0])  # the crash came before batch 2 reached this receiver
    for batch in batches:
        second.merge(batch)
    restarted = AuditSeries("conn", clock=clock, export_increments=True, track_intervals=True)
    (short,) = first.origin_counts("a", 2)
    (full,) = second.origin_counts("a", 2)
    assert restarted.merge_history(short).applied == 5
    assert restarted.merge_history(short).status.value == "duplicate"
    assert restarted.merge_history(full).applied == 3  # batch 2 only
    assert restarted.merge_history(full).status.value == "duplicate"
    assert restarted.count("198.18.0.0/24") == 8
    assert restarted.count("198.18.0.1") == 2
    assert restarted.take_interval().counts == {}  # logged before: kept out of the as_logger
    assert restarted.take_batch(Origin("a", 2)) is None  # never exported again


def test_history_is_not_differenced_against_an_incomplete_record() -> None:
    """Past max_keys what was kept is a lower bound: a later history is skipped, never doubled."""
    clock = ManualClock(T0)
    sender, receiver = _pair(clock)
    old = Origin("a", 1)
    receiver.merge(_sent(sender, old, {V4: 1, V4 + 1: 1, V4 + 2: 1}))
    (history,) = receiver.origin_counts("a", 2)
    restarted = AuditSeries("conn", clock=clock, export_increments=True, max_keys=2)
    assert restarted.merge_history(history).applied == 3  # one key kept out of its record
    bigger = IncrementBatch(
        series="conn",
        family=KeyFamily.IPV4,
        window_seconds=300,
        origin=old,
        seq=2,
        windows={START: {V4: 1, V4 + 1: 1, V4 + 2: 1, V4 + 3: 4}},
    )
    assert restarted.merge_history(bigger).status.value == "duplicate"
    assert restarted.count("0.0.0.0/0") == 3


def test_history_ages_out_with_its_windows() -> None:
    """Windows that aged out are not handed back, and a forgotten origin has no history."""
    clock = ManualClock(T0)
    sender, receiver = _pair(clock)
    old = Origin("a", 1)
    receiver.merge(_sent(sender, old, {V4: 5}))
    clock.advance(300)
    receiver.merge(_sent(sender, old, {V4: 1}))
    clock.advance(5 * 300)  # the first window is gone, the second is the oldest kept
    (history,) = receiver.origin_counts("a", 2)
    assert history.windows == {START + 300: {V4: 1}}
    clock.advance(300)
    assert receiver.origin_counts("a", 2) == []


def test_a_series_that_is_not_cluster_wide_keeps_no_history() -> None:
    """Without export_increments nothing per origin is kept, and a history merges only once."""
    clock = ManualClock(T0)
    sender = AuditSeries("conn", clock=clock, export_increments=True)
    local = AuditSeries("conn", clock=clock)
    local.merge(_sent(sender, Origin("a", 1), {V4: 5}))
    assert local.origin_counts("a", 2) == []
    history = IncrementBatch(
        series="conn",
        family=KeyFamily.IPV4,
        window_seconds=300,
        origin=Origin("a", 1),
        seq=3,
        windows={START: {V4: 9}},
    )
    assert local.merge_history(history).status.value == "duplicate"
    assert local.count("198.18.0.0") == 5


def test_merge_history_refuses_malformed_batches() -> None:
    """A history batch is checked like any batch: wrong series or key is refused, nothing counts."""
    series = AuditSeries("conn", clock=ManualClock(T0), export_increments=True)
    bad = IncrementBatch(
        series="conn",
        family=KeyFamily.IPV4,
        window_seconds=300,
        origin=Origin("a", 1),
        seq=1,
        windows={START: {1 << 40: 1}},
    )
    with pytest.raises(AuditInvalidArgument, match="is not a ipv4 key"):
        series.merge_history(bad)
    assert series.count("0.0.0.0/0") == 0
    assert series.last_seq(Origin("a", 1)) == 0


def test_a_batch_whose_windows_are_no_pairs_is_refused_by_name() -> None:
    """from_json names a window given as a mapping of strings (found by the history fuzz test)."""
    data = _batch(1, {V4: 1})
    data["windows"] = {"00": None}
    with pytest.raises(AuditInvalidArgument, match="malformed increment batch"):
        IncrementBatch.from_json(data)


# --- the receiver's hello reply --------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[tuple[ClusterAudit, AuditSeries]]:
    series = AuditSeries("conn", window_seconds=60, export_increments=True)
    with ClusterAudit(
        node="m", series=[series], listen="127.0.0.1:0", max_frame=8192, secret=SECRET
    ) as audit:
        yield audit, series


def _ask(chan: Channel, message: dict[str, Any]) -> dict[str, Any] | None:
    chan.send(json.dumps({"v": 2, **message}).encode(), 5.0)
    try:
        payload = chan.recv_one(5.0)
    except ChannelClosed:
        return None
    reply: dict[str, Any] = json.loads(payload)
    assert len(payload) <= 8192
    return reply


def _batch(seq: int, counts: dict[int, int], incarnation: int = 1) -> dict[str, Any]:
    return IncrementBatch(
        series="conn",
        family=KeyFamily.IPV4,
        window_seconds=60,
        origin=Origin("a", incarnation),
        seq=seq,
        windows={int(time.time() // 60) * 60: counts},
    ).to_json()


def _fill(audit: ClusterAudit, counts: dict[int, int]) -> None:
    """Push one batch as incarnation 1 of node a."""
    with contextlib.closing(_connect(audit)) as chan:
        items = [{"snapshot": False, "batch": _batch(1, counts)}]
        reply = _ask(chan, {"type": "push", "origin": _origin(1), "items": items})
        assert reply is not None and reply["series"]["conn"] == {"last_seq": 1}


def _connect(audit: ClusterAudit) -> Channel:
    return connect(audit.endpoints()["audit"], "audit", ChannelSecurity(secret=SECRET))


def _origin(incarnation: int) -> dict[str, Any]:
    return {"node": "a", "incarnation": incarnation}


def test_hello_returns_the_history_of_earlier_incarnations_when_asked(
    receiver: tuple[ClusterAudit, AuditSeries],
) -> None:
    """A hello asking for history gets what incarnation 1 sent; other hellos get none."""
    audit, _series = receiver
    _fill(audit, {V4: 5, V4 + 1: 2})
    with contextlib.closing(_connect(audit)) as chan:
        hello = {"type": "hello", "origin": _origin(2), "series": ["conn"]}
        plain = _ask(chan, hello)
        assert plain is not None and plain["series"] == {"conn": {"last_seq": 0}}
        reply = _ask(chan, {**hello, "history": 1 << 20})
        assert reply is not None
        (history,) = reply["series"]["conn"]["history"]
        assert IncrementBatch.from_json(history) == IncrementBatch.from_json(
            _batch(1, {V4: 5, V4 + 1: 2})
        )
        same = _ask(chan, {**hello, "origin": _origin(1), "history": 1 << 20})
        assert same is not None and same["series"] == {"conn": {"last_seq": 1}}
    assert audit.stats().received.histories_sent == 1


def test_history_that_does_not_fit_the_frame_is_left_out(
    receiver: tuple[ClusterAudit, AuditSeries],
) -> None:
    """The reply stays within the asked limit and the receiver's frame cap; the rest is left out."""
    audit, _series = receiver
    _fill(audit, {V4 + i: 1 for i in range(300)})  # about 4.5 kB of history
    with contextlib.closing(_connect(audit)) as chan:
        hello = {"type": "hello", "origin": _origin(2), "series": ["conn"]}
        small = _ask(chan, {**hello, "history": 1000})
        assert small is not None and small["series"] == {"conn": {"last_seq": 0}}
        big = _ask(chan, {**hello, "history": 1 << 30})  # the receiver's 8 KiB cap still holds
        assert big is not None and len(big["series"]["conn"]["history"]) == 1


@pytest.mark.parametrize("limit", [-1, "big", 1.5, True, None])
def test_a_bad_history_limit_is_a_protocol_error(
    receiver: tuple[ClusterAudit, AuditSeries], limit: object
) -> None:
    """A history limit that is not a byte count is refused by name and the connection closed."""
    audit, _series = receiver
    with contextlib.closing(_connect(audit)) as chan:
        hello = {"type": "hello", "origin": _origin(2), "series": ["conn"], "history": limit}
        reply = _ask(chan, hello)
        assert reply is not None
        if limit is None:  # JSON null: the same as no history asked
            assert reply["ok"] is True
            return
        assert reply["ok"] is False and "history limit" in reply["error"]


def test_pushed_history_counts_once_and_only_from_the_same_node(
    receiver: tuple[ClusterAudit, AuditSeries],
) -> None:
    """A history item counts once, only for an earlier incarnation of the connection's node."""
    audit, series = receiver
    with contextlib.closing(_connect(audit)) as chan:
        own = _batch(3, {V4: 7})  # incarnation 1 of node a, pushed by incarnation 2
        other = {**_batch(3, {V4: 50}), "origin": {"node": "b", "incarnation": 1}}
        current = _batch(3, {V4: 40}, incarnation=2)
        for item in (own, own, other, current):
            push = {
                "type": "push",
                "origin": _origin(2),
                "items": [{"history": True, "batch": item}],
            }
            reply = _ask(chan, push)
            assert reply is not None and reply["ok"] is True
            if item is own:
                assert reply["series"] == {"conn": {"last_seq": 0}}
            else:
                assert "is no earlier incarnation of" in reply["series"]["conn"]["error"]
        both = {"snapshot": True, "history": True, "batch": own}
        reply = _ask(chan, {"type": "push", "origin": _origin(2), "items": [both]})
        assert reply is not None and "a snapshot or a history, not both" in reply["error"]
    assert series.count("0.0.0.0/0") == 7
    assert series.last_seq(Origin("a", 1)) == 3
    received = audit.stats().received
    assert (received.histories_merged, received.refused) == (1, 2)


# --- the restarted sender's side ---------------------------------------------------


def _stale_history(incarnation: int, n: int) -> dict[str, Any]:
    return _batch(4, {V4: n}, incarnation)


@pytest.fixture
def fake_receiver(
    coordinator_factory: Callable[..., Coordinator],
) -> Iterator[Callable[[list[Any] | object], tuple[ClusterAudit, AuditSeries]]]:
    """A fake receiver m answering hellos with a crafted history; a sender a (incarnation 2)."""
    stack = contextlib.ExitStack()

    def make(history: list[Any] | object) -> tuple[ClusterAudit, AuditSeries]:
        def serve(chan: Channel) -> None:
            with contextlib.suppress(ChannelClosed):
                while True:
                    request = json.loads(chan.recv_one(5.0))
                    entry: dict[str, Any] = {"last_seq": 0}
                    if "history" in request:
                        entry["history"] = history
                    reply = {"ok": True, "receiver": {"node": "m", "incarnation": 1}}
                    chan.send(json.dumps({**reply, "series": {"conn": entry}}).encode(), 5.0)

        listener = Listener(
            service="audit", security=ChannelSecurity(secret=SECRET), handler=serve
        ).start()
        stack.callback(listener.stop)
        endpoints = {"audit": listener.endpoint}
        fake = Membership(
            coordinator=coordinator_factory(), info=NodeInfo(name="m", endpoints=endpoints)
        ).start()
        stack.callback(fake.stop)
        series = AuditSeries("conn", window_seconds=60, export_increments=True)
        audit = ClusterAudit(
            node="a", series=[series], incarnation=2, interval=0.05, timeout=1.0, secret=SECRET
        ).start()
        stack.callback(audit.stop, 0)
        membership = Membership(
            coordinator=coordinator_factory(), info=NodeInfo(name="a", roles=("mta",))
        ).start()
        stack.callback(membership.stop)
        audit.follow(membership)
        return audit, series

    with stack:
        yield make


def _wait(predicate: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + 10
    while not predicate():
        assert time.monotonic() < end, what
        time.sleep(0.02)


@pytest.mark.zookeeper
def test_a_sender_takes_only_valid_history_of_its_own_earlier_incarnations(
    fake_receiver: Callable[[list[Any] | object], tuple[ClusterAudit, AuditSeries]],
) -> None:
    """Other nodes', its current, malformed or overflowing histories are ignored; the rest once."""
    overflowing = _stale_history(1, 1)
    overflowing["windows"][0][1] = [[V4, 2**63]]
    other = _stale_history(1, 50)
    other["origin"]["node"] = "b"
    wrong_series = {**_stale_history(1, 60), "series": "rcpt"}
    history = [
        other,
        _stale_history(2, 40),  # the sender's own current origin
        overflowing,
        wrong_series,
        "not a batch",
        {"v": 1},
        _stale_history(1, 7),
        _stale_history(1, 7),  # the same history twice: once
        _stale_history(3, 2),  # another earlier incarnation
    ]
    audit, series = fake_receiver(history)
    _wait(lambda: audit.stats().restored.get("conn") == 9, "the history to be restored")
    assert series.count("0.0.0.0/0") == 9
    assert series.take_batch(audit.origin) is None  # restored counts are not exported
    (peer,) = audit.stats().peers
    assert peer.connected and peer.failures == 0


@pytest.mark.zookeeper
def test_a_history_that_is_no_list_breaks_the_connection_and_counts_nothing(
    fake_receiver: Callable[[list[Any] | object], tuple[ClusterAudit, AuditSeries]],
) -> None:
    """A reply whose history is not a list is a protocol error: retried, nothing counted."""
    audit, series = fake_receiver({"conn": _stale_history(1, 7)})
    _wait(lambda: any(p.failures for p in audit.stats().peers), "the sender to fail")
    (peer,) = audit.stats().peers
    assert "history of conn that is no list" in str(peer.last_error)
    assert series.count("0.0.0.0/0") == 0


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=10,
)
_history_batch = st.fixed_dictionaries(
    {
        "v": st.sampled_from([1, 2, "1"]),
        "series": st.sampled_from(["conn", "x"]) | _json,
        "family": st.sampled_from(["ipv4", "ipv6", "string"]) | _json,
        "window_seconds": st.sampled_from([60, 300, 0]) | _json,
        "origin": st.fixed_dictionaries(
            {"node": st.sampled_from(["a", "b"]), "incarnation": st.integers(0, 3)}
        )
        | _json,
        "seq": st.integers(-1, 5) | _json,
        "windows": st.lists(
            st.tuples(
                st.integers(START - 600, START + 600),
                st.lists(st.tuples(st.integers(-1, 2**64) | _json, st.integers(-1, 2**64) | _json)),
            ).map(lambda w: [w[0], [list(p) for p in w[1]]]),
            max_size=2,
        )
        | _json,
    }
)


@settings(
    max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(_history_batch | _json, max_size=4) | _json)
def test_fuzzed_histories_count_or_are_refused(history: Any) -> None:
    """Any history in a hello reply: merged, ignored or AuditProtocolError; nothing else escapes."""
    series = AuditSeries(
        "conn", window_seconds=60, clock=ManualClock(START + 1), export_increments=True
    )
    audit = ClusterAudit(node="a", series=[series], incarnation=2)
    peer = _Peer(audit, "m", "127.0.0.1:1")
    with contextlib.suppress(AuditProtocolError):
        peer._restore({"series": {"conn": {"last_seq": 0, "history": history}}})
    assert series.take_batch(audit.origin) is None
    assert series.count("0.0.0.0/0") == audit.stats().restored.get("conn", 0)
