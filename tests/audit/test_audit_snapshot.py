"""Snapshot files: round trips, atomic writes, corruption detection."""

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mhafail.audit import KeyFamily, SnapshotHeader, read_snapshot, write_snapshot
from mhafail.audit._snapshot import FORMAT_VERSION, decode_snapshot, encode_snapshot
from mhafail.errors import SnapshotCorrupt

KEYS = {
    KeyFamily.IPV4: st.integers(0, 2**32 - 1),
    KeyFamily.IPV6: st.integers(0, 2**128 - 1),
    KeyFamily.STRING: st.text(max_size=30),
}


def _header(family: KeyFamily) -> SnapshotHeader:
    return SnapshotHeader(
        series="conn",
        family=family,
        resolution="raw",
        start=1_717_200_000,
        end=1_717_200_060,
        entries=0,
        total=0,
        dropped=3,
    )


@settings(max_examples=80, deadline=None)
@given(data=st.data(), family=st.sampled_from(list(KeyFamily)))
def test_snapshot_files_round_trip(data: st.DataObject, family: KeyFamily) -> None:
    """Whatever is written reads back with the same counts, header and range sums."""
    counts = data.draw(st.dictionaries(KEYS[family], st.integers(1, 2**63), max_size=40))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "conn.20240601T000000"
        write_snapshot(path, _header(family), counts)
        snap = read_snapshot(path)
        assert sorted(p.name for p in Path(tmp).iterdir()) == [path.name]  # no temp file left
    assert snap.items() == counts
    assert snap.header.entries == len(counts)
    assert snap.header.total == sum(counts.values())
    assert snap.header.dropped == 3
    if family is KeyFamily.STRING:
        for key in list(counts)[:5]:
            assert snap.string_count(key) == counts[key]
        assert snap.string_count("\x00never") == counts.get("\x00never", 0)
    else:
        lo, hi = sorted(data.draw(st.tuples(KEYS[family], KEYS[family])))
        assert snap.range_total(lo, hi) == sum(n for k, n in counts.items() if lo <= k <= hi)
        keys, values = snap.range_items(lo, hi)
        assert dict(zip(keys, values, strict=True)) == {
            k: n for k, n in counts.items() if lo <= k <= hi
        }


def test_every_damaged_byte_is_detected() -> None:
    """Flipping any byte or truncating the file raises SnapshotCorrupt, never wrong counts."""
    data = encode_snapshot(_header(KeyFamily.IPV4), {3323068417: 5, 3323068418: 7})
    for i in range(len(data)):
        damaged = bytearray(data)
        damaged[i] ^= 0x40
        with pytest.raises(SnapshotCorrupt):
            decode_snapshot(bytes(damaged))
    for cut in range(len(data)):
        with pytest.raises(SnapshotCorrupt):
            decode_snapshot(data[:cut])


def test_unknown_versions_are_refused_by_name() -> None:
    """A file from a newer format version is refused with a message naming the versions."""
    import json
    import struct
    import zlib

    data = encode_snapshot(_header(KeyFamily.IPV4), {1: 1})
    head_len = struct.unpack(">I", data[8:12])[0]
    meta = json.loads(data[12 : 12 + head_len])
    meta["version"] = FORMAT_VERSION + 1
    head = json.dumps(meta).encode()
    body = data[:8] + len(head).to_bytes(4, "big") + head + data[12 + head_len : -4]
    with pytest.raises(SnapshotCorrupt, match=f"v{FORMAT_VERSION + 1} is not supported"):
        decode_snapshot(body + zlib.crc32(body).to_bytes(4, "big"))
