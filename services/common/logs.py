"""Structured logs: one JSON object per line, with the service and the call it concerns.

The RPC wrapper (``services.common.server.add_servicer``) sets ``call_id`` and ``service`` in
context variables for the duration of each RPC, so every record logged while handling it
carries them without threading them through every call; a record's own ``extra={...}``
fields win. Processes opt in once with ``configure_logging()``; libraries only log.

    {"ts": "2025-01-01T12:00:00.123Z", "level": "INFO", "logger": "maata.services",
     "msg": "draining", "service": "codec", "call_id": null, "grace_seconds": 5.0}
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import IO, Any

CALL_ID: ContextVar[str | None] = ContextVar("maata_call_id", default=None)
SERVICE: ContextVar[str | None] = ContextVar("maata_service", default=None)

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is logged.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line with ts, level, logger, msg, service, call_id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "service": SERVICE.get(),
            "call_id": CALL_ID.get(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_logging(level: int | str = logging.INFO, stream: IO[str] | None = None) -> logging.Handler:
    """Send the root logger's records to ``stream`` (stderr) as JSON lines; returns the handler.

    Idempotent: a second call replaces the handler it installed before instead of adding one.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_maata_json", False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler._maata_json = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    return handler
