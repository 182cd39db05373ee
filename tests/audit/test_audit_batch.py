"""Increment batches: the pure merge logic cluster-wide series will build on."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mhafail.audit import AuditSeries, IncrementBatch, ManualClock, MergeStatus, Origin
from mhafail.errors import AuditError, AuditInvalidArgument

T0 = 1_717_200_000.0
V4 = 3323068416  # 198.18.0.0


def _node(clock: ManualClock, **kw: object) -> AuditSeries:
    return AuditSeries("conn", clock=clock, export_increments=True, **kw)  # type: ignore[arg-type]


def test_merged_batches_add_to_the_same_windows() -> None:
    """A receiver's count is its own plus every sender's, window by window."""
    clock = ManualClock(T0)
    a, b, manager = _node(clock), _node(clock), AuditSeries("conn", clock=clock)
    a.add(V4 + 1, 3)
    b.add(V4 + 2, 4)
    clock.advance(300)
    a.add(V4 + 1)
    for series, name in ((a, "a"), (b, "b")):
        batch = series.take_batch(Origin(name, 1))
        assert batch is not None
        assert manager.merge(batch).status is MergeStatus.APPLIED
    assert manager.count("198.18.0.0/15") == 8
    assert manager.count("198.18.0.0/15", windows=1) == 1
    assert manager.count("198.18.0.1", windows=range(1, 2)) == 3


def test_resent_batch_is_counted_once() -> None:
    """A batch re-sent after a reconnect is recognised as a duplicate and changes nothing."""
    clock = ManualClock(T0)
    node, manager = _node(clock), AuditSeries("conn", clock=clock)
    node.add(V4, 5)
    first = node.take_batch(Origin("n1", 7))
    node.add(V4, 1)
    second = node.take_batch(Origin("n1", 7))
    assert first is not None and second is not None
    assert manager.merge(first).applied == 5
    assert manager.merge(second).applied == 1
    assert manager.merge(first).status is MergeStatus.DUPLICATE
    assert manager.merge(second).status is MergeStatus.DUPLICATE
    assert manager.count(V4) == 6


def test_restarted_node_is_a_new_origin_and_never_double_counts() -> None:
    """A restarted node's new incarnation adds only new counts; old batches stay deduplicated."""
    clock = ManualClock(T0)
    manager = AuditSeries("conn", clock=clock)
    old = _node(clock)
    old.add(V4, 2)
    old_batch = old.take_batch(Origin("n1", 1))
    assert old_batch is not None
    manager.merge(old_batch)
    restarted = _node(clock)  # a new process starts from an empty series
    restarted.add(V4, 3)
    new_batch = restarted.take_batch(Origin("n1", 2))
    assert new_batch is not None and new_batch.seq == 1
    assert manager.merge(new_batch).status is MergeStatus.APPLIED
    assert manager.merge(old_batch).status is MergeStatus.DUPLICATE
    assert manager.count(V4) == 5


def test_dead_node_ages_out_and_a_late_resend_adds_nothing() -> None:
    """A dead node's counts age out; a later re-send of its batch finds only stale windows."""
    clock = ManualClock(T0)
    manager = AuditSeries("conn", windows=3, clock=clock)
    node = _node(clock, windows=3)
    node.add(V4, 4)
    batch = node.take_batch(Origin("n1", 1))
    assert batch is not None
    manager.merge(batch)
    assert manager.stats().origins == 1
    clock.advance(900)
    assert manager.count(V4) == 0
    assert manager.stats().origins == 0  # forgotten: nothing it could send is live any more
    outcome = manager.merge(batch)
    assert (outcome.status, outcome.applied, outcome.stale) == (MergeStatus.APPLIED, 0, 4)
    assert manager.count(V4) == 0


def test_lost_batches_are_reported_as_a_gap() -> None:
    """A sequence jump is applied but flagged, so the transport can log the loss."""
    clock = ManualClock(T0)
    node, manager = _node(clock), AuditSeries("conn", clock=clock)
    batches = []
    for _ in range(3):
        node.add(V4)
        batch = node.take_batch(Origin("n1", 1))
        assert batch is not None
        batches.append(batch)
    assert not manager.merge(batches[0]).gap
    outcome = manager.merge(batches[2])
    assert outcome.gap and outcome.applied == 1
    assert manager.merge(batches[1]).status is MergeStatus.DUPLICATE


def test_future_windows_wait_and_far_future_ones_are_refused() -> None:
    """A window one ahead waits until this clock catches up; further ahead is refused."""
    sender_clock, receiver_clock = ManualClock(T0 + 300), ManualClock(T0 + 299)
    node, manager = _node(sender_clock), AuditSeries("conn", clock=receiver_clock)
    node.add(V4, 2)
    sender_clock.advance(300)
    node.add(V4, 5)
    batch = node.take_batch(Origin("n1", 1))
    assert batch is not None
    outcome = manager.merge(batch)
    assert (outcome.applied, outcome.too_new) == (2, 5)
    assert manager.count(V4) == 0
    receiver_clock.advance(1)
    assert manager.count(V4) == 2


def test_merged_increments_are_not_exported_again() -> None:
    """Only local adds leave a node, so batches cannot loop between nodes."""
    clock = ManualClock(T0)
    a, b = _node(clock), _node(clock)
    a.add(V4)
    batch = a.take_batch(Origin("a", 1))
    assert batch is not None
    b.merge(batch)
    assert b.take_batch(Origin("b", 1)) is None


def test_merged_increments_reach_the_as_logger_interval() -> None:
    """A manager's interval counts include what nodes sent, so snapshots are cluster-wide."""
    clock = ManualClock(T0)
    node = _node(clock)
    manager = AuditSeries("conn", clock=clock, track_intervals=True)
    node.add(V4, 3)
    manager.add(V4, 1)
    batch = node.take_batch(Origin("n", 1))
    assert batch is not None
    manager.merge(batch)
    assert manager.take_interval().counts == {V4: 4}


@settings(max_examples=60, deadline=None)
@given(
    plan=st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 50), st.integers(0, 1000), st.booleans()),
        max_size=40,
    ),
    resend=st.lists(st.integers(0, 100), max_size=10),
)
def test_cluster_sum_equals_sum_of_nodes_whatever_is_resent(
    plan: list[tuple[int, int, int, bool]], resend: list[int]
) -> None:
    """Merging every node's batches, re-sent at will, gives the sum of the nodes' counts."""
    clock = ManualClock(T0)
    nodes = [_node(clock) for _ in range(3)]
    manager = AuditSeries("conn", clock=clock)
    batches: list[IncrementBatch] = []
    for who, step, offset, flush in plan:
        clock.advance(step)
        nodes[who].add(V4 + offset)
        if flush:
            batch = nodes[who].take_batch(Origin(f"n{who}", 1))
            if batch is not None:
                batches.append(batch)
    for who, node in enumerate(nodes):
        batch = node.take_batch(Origin(f"n{who}", 1))
        if batch is not None:
            batches.append(batch)
    for batch in batches:
        manager.merge(batch)
    for i in resend:
        if batches:
            assert manager.merge(batches[i % len(batches)]).status is MergeStatus.DUPLICATE
    for cidr in ("198.18.0.0/15", "198.18.0.0/24", "198.18.1.0/24", "198.18.0.7"):
        assert manager.count(cidr) == sum(node.count(cidr) for node in nodes)


def test_batches_round_trip_through_json() -> None:
    """to_json/from_json preserve a batch exactly, through a real JSON encoding."""
    clock = ManualClock(T0)
    for family, keys in (("ipv4", [V4, V4 + 9]), ("ipv6", [2**127 + 5]), ("string", ["a.example"])):
        node = AuditSeries("s", family=family, clock=clock, export_increments=True)
        node.add_many(keys)
        batch = node.take_batch(Origin("n", 3))
        assert batch is not None
        assert IncrementBatch.from_json(json.loads(json.dumps(batch.to_json()))) == batch
        assert batch.total() == len(keys)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(v=2),
        lambda d: d.update(windows=[[0, [["x", 1]]]]),
        lambda d: d.update(windows=[[0, [[1, 0]]]]),
        lambda d: d.pop("origin"),
        lambda d: d.update(seq="1"),
    ],
)
def test_malformed_batch_json_is_refused(mutate: object) -> None:
    """Damaged batch JSON raises AuditInvalidArgument instead of corrupting counts."""
    data = {
        "v": 1,
        "series": "conn",
        "family": "ipv4",
        "window_seconds": 300,
        "origin": {"node": "n", "incarnation": 1},
        "seq": 1,
        "windows": [[0, [[1, 1]]]],
    }
    IncrementBatch.from_json(data)
    mutate(data)  # type: ignore[operator]
    with pytest.raises(AuditInvalidArgument):
        IncrementBatch.from_json(data)


def test_mismatched_batches_are_refused_and_change_nothing() -> None:
    """Batches for another series, family or window length, or with bad keys, are refused whole."""
    clock = ManualClock(T0)
    manager = AuditSeries("conn", clock=clock)
    good = {int(T0): {V4: 1}}

    def batch(**kw: object) -> IncrementBatch:
        fields: dict[str, object] = {
            "series": "conn",
            "family": manager.family,
            "window_seconds": 300,
            "origin": Origin("n", 1),
            "seq": 1,
            "windows": good,
        }
        fields.update(kw)
        return IncrementBatch(**fields)  # type: ignore[arg-type]

    for bad in (
        batch(series="other"),
        batch(window_seconds=60),
        batch(seq=0),
        batch(windows={int(T0) + 1: {V4: 1}}),
        batch(windows={int(T0): {V4: 1, 2**33: 1}}),
        batch(windows={int(T0): {V4: -1}}),
    ):
        with pytest.raises(AuditInvalidArgument):
            manager.merge(bad)
    assert manager.count("0.0.0.0/0") == 0
    with pytest.raises(AuditError, match="export_increments"):
        manager.take_batch(Origin("n", 1))
