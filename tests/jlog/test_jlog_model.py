"""Property-based test of checkpoints and retention against a model, on a real jlog."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mhafail.jlog import Jlog, MessageId

SUBSCRIBERS = ("a", "b", "c")

ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(1, 12)),
        st.tuples(st.just("consume"), st.sampled_from(SUBSCRIBERS), st.integers(1, 15)),
        st.tuples(st.just("reread"), st.sampled_from(SUBSCRIBERS), st.integers(1, 15)),
        st.tuples(st.just("remove"), st.sampled_from(SUBSCRIBERS)),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_every_subscriber_reads_every_message_after_its_checkpoint(
    steps: list[tuple[object, ...]],
) -> None:
    """Whatever the writes, reads, rewinds and removals, no subscriber ever misses a message."""
    with tempfile.TemporaryDirectory() as tmp:
        jlog = Jlog.create(Path(tmp) / "j", unit_limit=60)  # ~3 records per segment
        for name in SUBSCRIBERS:
            jlog.add_subscriber(name)
        written: list[bytes] = []
        consumed = {name: 0 for name in SUBSCRIBERS}  # model: how many each has consumed
        ids: dict[str, list[MessageId]] = {name: [] for name in SUBSCRIBERS}
        live = set(SUBSCRIBERS)
        with jlog.writer() as writer:
            for step in steps:
                kind = step[0]
                if kind == "write":
                    batch = [b"msg-%05d" % (len(written) + i) for i in range(int(str(step[1])))]
                    writer.write_many(batch)
                    written.extend(batch)
                    continue
                name = str(step[1])
                if name not in live:
                    continue
                if kind == "remove":
                    jlog.remove_subscriber(name)
                    live.discard(name)
                    continue
                with jlog.reader(name) as reader:
                    got = []
                    for message in reader:
                        got.append(message)
                        if len(got) == int(str(step[2])):
                            break
                    # The model: the reader continues exactly after what it consumed.
                    expected = written[consumed[name] : consumed[name] + len(got)]
                    assert [m.payload for m in got] == expected
                    if kind == "consume" and got:
                        reader.checkpoint(got[-1].id)
                        consumed[name] += len(got)
                        ids[name].extend(m.id for m in got)
                    elif kind == "reread" and ids[name]:
                        # Rewind by one message inside the segment the checkpoint
                        # is in (older segments may rightly be deleted already).
                        back = ids[name][-2] if len(ids[name]) >= 2 else None
                        if back is not None and back.log == ids[name][-1].log:
                            jlog.set_checkpoint(name, back)
                            consumed[name] -= 1
                            ids[name].pop()
        for name in live:
            with jlog.reader(name) as reader:
                assert [m.payload for m in reader] == written[consumed[name] :]
        assert jlog.inspect().ok
