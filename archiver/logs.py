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
        record.msg = self.mask(message)
        record.args = None
        facts = getattr(record, "facts", None)
        if isinstance(facts, dict):
            record.facts = {k: self.mask(v) if isinstance(v, str) else v for k, v in facts.items()}
        return True

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return redact_text(text)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and the record's facts (``extra=
    {"facts": {...}}``: a cycle's figures, an error's kind and cause) as fields of their own."""

    def format(self, record: logging.LogRecord) -> str:
        document = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        facts = getattr(record, "facts", None)
        if isinstance(facts, dict):
            document.update({k: v for k, v in facts.items() if k not in document})
        return json.dumps(document, default=str)


def json_logging() -> bool:
    """Whether log records go out as JSON (ARCHIVER_LOG_FORMAT=json)."""
    return any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)


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
