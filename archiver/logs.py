"""Logging set-up: text or JSON lines on stderr, with every known secret masked."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime

from archiver.archive.redact import redact_text

MASK = "***"


class SecretFilter(logging.Filter):
    """Masks secret values and URL query credentials in every record, whatever logged it."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            # A broken format call elsewhere must not raise into the caller, nor print its args.
            message = f"unformattable log message {record.msg!r} from {record.name}"
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
            record.exc_text = None
        for secret in self.secrets:
            message = message.replace(secret, MASK)
        record.msg = redact_text(message)
        record.args = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": record.getMessage(),
            }
        )


def configure_logging(level: str = "INFO", fmt: str = "text", secrets: Iterable[str] = ()) -> None:
    """Send log records to stderr in the chosen format, secrets masked. Safe to call again."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(SecretFilter(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # httpx logs every request URL at INFO; the cycle's own summary line is enough.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    # APScheduler narrates every run at INFO; its warnings (skipped, missed runs) still show.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    # Alembic describes its database connection each time a command checks the schema revision.
    logging.getLogger("alembic.runtime.migration").addFilter(_quiet_alembic_context)
    # Alembic lists the plugins it sets up when it is first imported, which (commands import what
    # they need) happens after logging is configured.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def _quiet_alembic_context(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(("Context impl", "Will assume"))
