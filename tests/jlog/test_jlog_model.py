"""Property-based test of checkpoints and retention against a model, on a real jlog."""

from __future__ import annotations

import tempfile
from pathlib import Path

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mhafail.errors import JlogInvalidArgument
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


@attrs.define
class Model:
    """What each subscriber must see: all writes, minus what it consumed."""

    jlog: Jlog
    written: list[bytes] = attrs.Factory(list)
    consumed: dict[str, int] = attrs.Factory(lambda: dict.fromkeys(SUBSCRIBERS, 0))
    ids: dict[str, list[MessageId]] = attrs.Factory(lambda: {n: [] for n in SUBSCRIBERS})
    live: set[str] = attrs.Factory(lambda: set(SUBSCRIBERS))

    def read(self, name: str, limit: int, *, commit: bool) -> None:
        """Read up to `limit` messages; they must continue exactly after the checkpoint."""
        with self.jlog.reader(name) as reader:
            got = []
            for message in reader:
                got.append(message)
                if len(got) == limit:
                    break
            start = self.consumed[name]
            assert [m.payload for m in got] == self.written[start : start + len(got)]
            if commit and got:
                reader.checkpoint(got[-1].id)
                self.consumed[name] += len(got)
                self.ids[name].extend(m.id for m in got)

    def rewind_one(self, name: str) -> None:
        """Move the checkpoint back one message inside its segment, if the data is still there."""
        ids = self.ids[name]
        if len(ids) < 2 or ids[-2].log != ids[-1].log:
            return
        back = ids[-2]
        try:
            self.jlog.set_checkpoint(name, back)
        except JlogInvalidArgument:
            # Refused only because the segment is gone, which retention may
            # do only once every subscriber has moved past it.
            assert not (self.jlog.path / f"{back.log:08x}").exists()
            assert all(self.jlog.checkpoint(o).log > back.log for o in self.live)
        else:
            self.consumed[name] -= 1
            ids.pop()


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
        model = Model(jlog)
        with jlog.writer() as writer:
            for step in steps:
                if step[0] == "write":
                    first = len(model.written)
                    batch = [b"msg-%05d" % (first + i) for i in range(int(str(step[1])))]
                    writer.write_many(batch)
                    model.written.extend(batch)
                    continue
                name = str(step[1])
                if name not in model.live:
                    continue
                if step[0] == "remove":
                    jlog.remove_subscriber(name)
                    model.live.discard(name)
                else:
                    model.read(name, int(str(step[2])), commit=step[0] == "consume")
                    if step[0] == "reread":
                        model.rewind_one(name)
        for name in model.live:
            with jlog.reader(name) as reader:
                assert [m.payload for m in reader] == model.written[model.consumed[name] :]
        assert jlog.inspect().ok
