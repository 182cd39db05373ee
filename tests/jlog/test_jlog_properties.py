"""Property-based tests of the record codec and the checkpoint/retention rules."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mhafail.jlog import _format as fmt
from mhafail.jlog import _retention as retention

payloads = st.lists(st.binary(max_size=300), max_size=30)
magics = st.sampled_from([fmt.PLAIN_MAGIC, fmt.LZ4_MAGIC])


@given(payloads, magics, st.integers(0, 2**32 - 1), st.integers(0, 999_999))
def test_encoded_records_walk_and_decode_back(
    items: list[bytes], magic: int, sec: int, usec: int
) -> None:
    """Concatenated records walk to exactly their offsets and decode to the payloads."""
    codec = fmt.RecordCodec(magic)
    records = codec.encode_many(items, sec, usec)
    blob = b"".join(records)
    walk = fmt.walk_records(blob, magic)
    assert walk.stop is fmt.WalkStop.END and walk.end == len(blob)
    expected_offsets, pos = [], 0
    for record in records:
        expected_offsets.append(pos)
        pos += len(record)
    assert walk.offsets == expected_offsets
    decoded = []
    for offset in walk.offsets:
        s, u, payload, _ = fmt.decode_payload(blob, offset, magic)
        assert (s, u) == (sec, usec)
        decoded.append(payload)
    assert decoded == items


@given(payloads.filter(bool), magics, st.data())
def test_a_cut_segment_never_yields_a_partial_record(
    items: list[bytes], magic: int, data: st.DataObject
) -> None:
    """Truncating segment bytes anywhere yields only whole records and reports the cut tail."""
    records = fmt.RecordCodec(magic).encode_many(items, 1, 2)
    blob = b"".join(records)
    cut = data.draw(st.integers(0, len(blob)))
    walk = fmt.walk_records(blob[:cut], magic)
    boundaries = [0]
    for record in records:
        boundaries.append(boundaries[-1] + len(record))
    whole = [b for b in boundaries[1:] if b <= cut]
    assert len(walk.offsets) == len(whole)
    assert walk.end == (whole[-1] if whole else 0)
    assert walk.stop is (fmt.WalkStop.END if cut in boundaries else fmt.WalkStop.INCOMPLETE)


@given(st.lists(st.integers(1, 10_000), unique=True, max_size=50), st.booleans())
def test_index_round_trips(gaps: list[int], closed: bool) -> None:
    """An index of increasing offsets decodes to the same offsets and closed flag."""
    offsets, pos = [], 0
    for gap in gaps:
        offsets.append(pos)
        pos += gap
    decoded, was_closed = fmt.decode_index(fmt.encode_index(offsets, closed=closed))
    assert decoded == offsets
    assert was_closed == (closed and bool(offsets))


@given(st.text(min_size=1, max_size=40).filter(lambda s: "\0" not in s))
def test_subscriber_names_round_trip_through_checkpoint_names(name: str) -> None:
    """A valid subscriber name maps to cp.<hex> and back."""
    if len(name.encode("utf-8", "surrogateescape")) > fmt.MAX_SUBSCRIBER_BYTES:
        return
    filename = fmt.checkpoint_name(name)
    assert filename.startswith("cp.")
    assert fmt.parse_checkpoint_name(filename) == name


logs = st.integers(0, 40)


@given(logs, logs, st.lists(logs, max_size=6), logs)
@settings(max_examples=300)
def test_release_never_deletes_data_a_checkpoint_needs(
    old: int, new: int, others: list[int], storage_log: int
) -> None:
    """A checkpoint move frees only segments below every checkpoint and below storage_log."""
    checkpoint_logs = [*others, new]
    freed = retention.releasable(old, new, checkpoint_logs, storage_log)
    for log in freed:
        assert old <= log < new
        assert log < storage_log
        assert all(log < c for c in checkpoint_logs)
    # Maximal: every segment in [old, new) below all checkpoints and storage_log is freed.
    expected = [
        log
        for log in range(old, new)
        if log < storage_log and all(log < c for c in checkpoint_logs)
    ]
    assert freed == expected


@given(st.lists(logs, unique=True, max_size=12), st.lists(logs, max_size=6), logs)
@settings(max_examples=300)
def test_clean_keeps_unread_data_and_the_written_segment(
    segments: list[int], checkpoint_logs: list[int], storage_log: int
) -> None:
    """clean deletes only segments below every checkpoint and storage_log; none if no subscriber."""
    deleted = retention.cleanable(segments, checkpoint_logs, storage_log)
    if not checkpoint_logs:
        assert deleted == []
    assert set(deleted) <= set(segments)
    for log in deleted:
        assert log < storage_log
        assert all(log < c for c in checkpoint_logs)
    kept = set(segments) - set(deleted)
    for log in kept:
        assert not checkpoint_logs or log >= min(checkpoint_logs) or log >= storage_log
