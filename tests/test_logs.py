"""Logging: secrets and URL credentials masked in every record; JSON lines."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import pytest

from archiver.logs import MASK, JsonFormatter, SecretFilter, configure_logging

TOKEN = "tok-Sn3lZJTBX6kkg7OdcBUAxOO963GEIyGQ"
API_KEY = "key-144c9defac04969c7bfad8efaa8ea194"
DB_PASSWORD = "pw-Zq8xV2mK0rT"


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    """A private logger writing through a handler that carries the SecretFilter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(SecretFilter([TOKEN, API_KEY, DB_PASSWORD, ""]))
    # A logger outside the logging manager: no parent, and pytest does not attach its own handlers.
    logger = logging.Logger("archiver.tests.logs", logging.DEBUG)
    logger.addHandler(handler)
    yield logger, stream, handler


@contextmanager
def root_logging_restored() -> Iterator[None]:
    """Undo configure_logging within the test call itself (pytest swaps its own handlers per phase)."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    others = {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    try:
        yield
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
        for name, level in others.items():
            logging.getLogger(name).setLevel(level)


MESSAGE_CASES = [
    (("token is %s", TOKEN), [TOKEN]),
    (("auth: Bearer " + TOKEN, ), [TOKEN]),
    (("key=%s email=%s", API_KEY, "ops@example.com"), [API_KEY]),
    (("connecting to postgresql://u:%s@db/x", DB_PASSWORD), [DB_PASSWORD]),
    (("GET %s", "wss://h.example/p?jwt=eyJ.payload.sig&x=1"), ["eyJ.payload.sig"]),
    (("%s then %s", TOKEN, TOKEN), [TOKEN]),
]


@pytest.mark.parametrize(
    ("args", "hidden"),
    MESSAGE_CASES,
    ids=["token-as-arg", "token-in-literal", "api-key", "db-password", "url-query", "twice"],
)
def test_secret_filter_masks_messages(capture: tuple[logging.Logger, io.StringIO, logging.Handler], args: tuple[object, ...],
                                     hidden: list[str]) -> None:
    logger, stream, _ = capture
    logger.warning(*args)
    output = stream.getvalue()
    assert output.count("\n") == 1
    for secret in hidden:
        assert secret not in output
    assert MASK in output or "REDACTED" in output


def test_secret_filter_keeps_harmless_text(capture: tuple[logging.Logger, io.StringIO, logging.Handler]) -> None:
    logger, stream, _ = capture
    logger.info("cycle for %s: %d new, %.1f%% done", "0123abcd", 3, 50.0)
    assert stream.getvalue() == "INFO cycle for 0123abcd: 3 new, 50.0% done\n"


@pytest.mark.parametrize(
    "secrets",
    [["tok-Sn3l", TOKEN], [TOKEN, "tok-Sn3l"]],
    ids=["prefix-first", "prefix-last"],
)
def test_longer_secret_masked_before_its_prefix(secrets: list[str]) -> None:
    # A secret that is a prefix of another must not leave the longer one half-masked ("***ZJTB...").
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "value %s and %s", (TOKEN, "tok-Sn3l"), None)
    SecretFilter(secrets).filter(record)
    assert record.getMessage() == f"value {MASK} and {MASK}"


def test_secret_filter_masks_exception_text(capture: tuple[logging.Logger, io.StringIO, logging.Handler]) -> None:
    logger, stream, _ = capture
    try:
        raise RuntimeError(f"refused token {TOKEN} at https://h.example/p?jwt=abcdef123")
    except RuntimeError:
        logger.exception("request failed for key %s", API_KEY)
    output = stream.getvalue()
    assert "Traceback" in output
    assert "RuntimeError: refused token" in output
    for secret in (TOKEN, API_KEY, "abcdef123"):
        assert secret not in output


def test_secret_filter_masks_chained_exceptions(capture: tuple[logging.Logger, io.StringIO, logging.Handler]) -> None:
    logger, stream, _ = capture
    try:
        try:
            raise ValueError(f"inner {DB_PASSWORD}")
        except ValueError as inner:
            raise RuntimeError("outer") from inner
    except RuntimeError:
        logger.error("boom", exc_info=True)
    output = stream.getvalue()
    assert "ValueError: inner" in output
    assert DB_PASSWORD not in output


def test_secret_filter_applies_to_records_of_any_logger() -> None:
    record = logging.LogRecord("sqlalchemy.engine", logging.INFO, __file__, 1, "url %s", (f"mysql://u:{DB_PASSWORD}@h/db",), None)
    assert SecretFilter([DB_PASSWORD]).filter(record) is True
    assert DB_PASSWORD not in record.getMessage()
    assert record.args is None


def test_malformed_log_call_does_not_raise(capture: tuple[logging.Logger, io.StringIO, logging.Handler]) -> None:
    logger, _, _ = capture
    logger.warning("%d sessions", "many")


def test_json_formatter_emits_one_object_per_line(capture: tuple[logging.Logger, io.StringIO, logging.Handler]) -> None:
    logger, stream, handler = capture
    handler.setFormatter(JsonFormatter())
    logger.info("first %s", TOKEN)
    logger.warning("multi\nline \"quoted\" message")
    try:
        raise KeyError("missing")
    except KeyError:
        logger.exception("with traceback")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    objects = [json.loads(line) for line in lines]
    assert [o["level"] for o in objects] == ["info", "warning", "error"]
    assert {o["logger"] for o in objects} == {"archiver.tests.logs"}
    assert objects[0]["message"] == f"first {MASK}"
    assert objects[1]["message"] == 'multi\nline "quoted" message'
    assert objects[2]["message"].startswith("with traceback\nTraceback")
    assert "KeyError: 'missing'" in objects[2]["message"]
    for obj in objects:
        assert set(obj) == {"time", "level", "logger", "message"}
        stamp = datetime.fromisoformat(obj["time"])
        assert stamp.utcoffset() is not None and stamp.utcoffset().total_seconds() == 0


@pytest.mark.parametrize("fmt", ["text", "json"], ids=["text", "json"])
def test_configure_logging_masks_and_formats(capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    with root_logging_restored():
        configure_logging("INFO", fmt, [TOKEN])
        configure_logging("INFO", fmt, [TOKEN])  # safe to call again: still one handler
        assert len(logging.getLogger().handlers) == 1
        assert logging.getLogger("httpx").level == logging.WARNING
        logging.getLogger("archiver.archive.sync").info("using %s", TOKEN)
        logging.getLogger("archiver.archive.sync").debug("hidden at INFO")
        logging.getLogger("httpx").info("HTTP Request: GET https://h/p?jwt=x")
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1
    assert TOKEN not in err
    if fmt == "json":
        assert json.loads(lines[0])["message"] == f"using {MASK}"
    else:
        assert lines[0].endswith(f"INFO archiver.archive.sync: using {MASK}")


def test_facts_logged_as_fields_are_masked_too(capture: tuple[logging.Logger, io.StringIO, logging.Handler]) -> None:
    logger, stream, handler = capture
    handler.setFormatter(JsonFormatter())
    logger.warning("cycle failed", extra={"facts": {"error": f"401 for token {TOKEN}", "listed": 3}})
    (record,) = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert record["error"] == f"401 for token {MASK}" and record["listed"] == 3
    assert TOKEN not in stream.getvalue()
