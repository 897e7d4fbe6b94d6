"""Logging: one line per message outcome, plain text by default or JSON (LOG_FORMAT=json).

Never pass a secret to a log call; settings hold secrets in `Secret`, whose repr is '***'.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

OUTCOME_FIELDS = ("campaign_id", "message_id", "status", "request_id", "vendor_message_id", "vendor_id", "error_code",
                  "attempts")
LOGGER_NAME = "buttoncast"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in OUTCOME_FIELDS:
            if hasattr(record, name):
                out[name] = getattr(record, name)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = " ".join(f"{n}={getattr(record, n)}" for n in OUTCOME_FIELDS if getattr(record, n, None) is not None)
        return f"{line} {extras}" if extras else line


def configure_logging(log_format: str = "text", level: int = logging.INFO) -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("urllib3", "celery.worker.strategy", "celery.app.trace", "kombu", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("kombu.connection").setLevel(logging.ERROR)  # "No hostname was supplied" for memory://


def log_outcome(logger: logging.Logger, level: int, text: str, **fields: object) -> None:
    """One line for one message outcome, with the ids an operator greps for."""
    logger.log(level, text, extra={k: v for k, v in fields.items() if k in OUTCOME_FIELDS})
