"""``JlogHandler``: send Python ``logging`` records to a jlog."""

from __future__ import annotations

import json
import logging
import os
from typing import Literal

from ._durability import Durability
from ._writer import JlogWriter


class JlogHandler(logging.Handler):
    """A :class:`logging.Handler` that appends each record to a jlog.

    Each log record becomes one jlog message: the formatted line (``text``,
    using the handler's formatter) or one JSON object (``json``: time,
    level, logger, message, and the formatted exception if any). Subscribers
    then ship the lines elsewhere, each at its own pace.

    Thread safety: ``logging`` serializes ``emit`` with the handler lock and
    the writer has its own; several processes may log to the same jlog.

    Args:
        path: an existing jlog directory.
        format: ``"text"`` or ``"json"``.
        durability: the writer's fsync policy (default: survive process crashes).
        level: the handler level.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        format: Literal["text", "json"] = "text",
        durability: Durability | None = None,
        level: int = logging.NOTSET,
    ) -> None:
        super().__init__(level)
        if format not in ("text", "json"):
            from mhafail.errors import JlogInvalidArgument

            raise JlogInvalidArgument(
                f"JlogHandler format must be 'text' or 'json', not {format!r}"
            )
        self.format_kind = format
        self.writer = JlogWriter(path, durability=durability)

    def render(self, record: logging.LogRecord) -> bytes:
        """Return the bytes one log record is stored as."""
        if self.format_kind == "text":
            return self.format(record).encode("utf-8", "backslashreplace")
        doc: dict[str, object] = {
            "time": record.created,
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = logging.Formatter().formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False).encode("utf-8", "backslashreplace")

    def emit(self, record: logging.LogRecord) -> None:
        """Append the record; failures go to :meth:`logging.Handler.handleError`."""
        try:
            self.writer.write(self.render(record))
        except Exception:  # logging must never raise into the application
            self.handleError(record)

    def close(self) -> None:
        """Close the writer (syncing it), then the handler."""
        try:
            self.writer.close()
        finally:
            super().close()
