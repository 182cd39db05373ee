"""A manager's durable position per (node, log): what makes its output exactly-once.

The state names the last record written, the one file that may hold data
written after it, and that file's length once it was written. It is saved
(temporary file, fsync, rename, fsync of the directory) only after the
data it covers was fsynced, and the node is acknowledged only after that.
A restarted manager cuts the file back to the saved length (dropping a
torn or unrecorded tail) and asks the node for the records after the
saved id, whatever the node's own checkpoint says. So a crash at any
point can neither lose a record (the node keeps everything not
acknowledged) nor duplicate one (what is past the saved length is cut).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import attrs

from mhafail._fs import fsync_dir
from mhafail.errors import LogsError
from mhafail.jlog import MessageId

#: Largest state file read (a real one is about 150 bytes).
MAX_STATE = 64 * 1024


@attrs.frozen
class StreamState:
    """The durable position of one (node, log) stream.

    Attributes:
        last_id: the last record written and covered by this state (None: nothing yet).
        file: the output file (relative to the base) that may hold data past
            ``offset``; None before the first file.
        offset: ``file``'s length covering exactly the records up to ``last_id``.
        records: records written by this manager for this stream, in total.
    """

    last_id: MessageId | None = None
    file: str | None = None
    offset: int = 0
    records: int = 0

    def to_json(self) -> bytes:
        """Encode for the state file."""
        doc = {
            "last_id": None if self.last_id is None else str(self.last_id),
            "file": self.file,
            "offset": self.offset,
            "records": self.records,
        }
        return json.dumps(doc, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes) -> StreamState:
        """Decode a state file.

        Raises:
            LogsError: it is not a valid state document.
        """
        if len(raw) > MAX_STATE:
            raise LogsError(f"malformed stream state: {len(raw)} bytes (at most {MAX_STATE})")
        try:
            doc = json.loads(raw)
            last = doc["last_id"]
            return cls(
                last_id=None if last is None else MessageId.parse(last),
                file=doc["file"],
                offset=int(doc["offset"]),
                records=int(doc.get("records", 0)),
            )
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise LogsError(f"malformed stream state: {exc}") from None


class StateStore:
    """State files under ``root``: ``<root>/<node>/<log>.json``.

    Args:
        root: the state directory (created on first save).
        dir_mode: mode for directories it creates.

    Thread safety: each (node, log) is saved by its own stream only.
    """

    def __init__(self, root: Path, *, dir_mode: int = 0o750) -> None:
        self.root = root
        self.dir_mode = dir_mode

    def path(self, node: str, log: str) -> Path:
        """The state file of (node, log)."""
        return self.root / node / f"{log}.json"

    def load(self, node: str, log: str) -> StreamState:
        """Return the saved state, or an empty one when there is none.

        Raises:
            LogsError: the file exists but cannot be read or decoded. The
                manager then refuses to stream that log rather than guess.
        """
        try:
            raw = self.path(node, log).read_bytes()
        except FileNotFoundError:
            return StreamState()
        except OSError as exc:
            raise LogsError(f"cannot read state {self.path(node, log)}: {exc}") from None
        return StreamState.from_json(raw)

    def save(self, node: str, log: str, state: StreamState) -> None:
        """Replace the state atomically and durably.

        Raises:
            OSError: it could not be written (a full disk, say); the old
                state stays in place.
        """
        final = self.path(node, log)
        directory = final.parent
        if not directory.exists():
            for d in reversed([directory, *directory.parents]):
                if not d.exists():
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(d, self.dir_mode)
                    fsync_dir(d.parent)
        tmp = directory / f".{log}.json.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        try:
            data = state.to_json()
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(28, "short write of the state file")
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.close(fd)
        os.rename(tmp, final)
        fsync_dir(directory)

    def streams(self) -> list[tuple[str, str]]:
        """Every (node, log) with a saved state."""
        out = []
        if self.root.is_dir():
            for node_dir in sorted(self.root.iterdir()):
                if node_dir.is_dir():
                    for f in sorted(node_dir.glob("*.json")):
                        out.append((node_dir.name, f.stem))
        return out
