"""Log formats of ``imscore serve``: ``text`` (one readable line) and ``json`` (one object a line,
for log shippers; a per-transaction line carries its fields under ``sip``)."""

from __future__ import annotations

import json
import logging
import time
from typing import Final, TextIO

__all__ = ["FORMATS", "TEXT_FORMAT", "JsonFormatter", "configure"]

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMATS: Final = ("text", "json")


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message"[, "sip"][, "exception"]}``, one per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        sip = getattr(record, "sip", None)
        if sip is not None:
            entry["sip"] = sip
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(level: str, form: str, stream: TextIO) -> None:
    """Set up the root logger for ``imscore serve``: ``level`` and ``form`` (``text`` or ``json``)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if form == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
