"""The archiver's exceptions, grouped by what the caller should do about them: every error it
raises on purpose is an ArchiverError.

    ArchiverError
    ├── ConfigError            a setting is missing or invalid (exit 2)
    ├── InputError             a value on the command line cannot be used (exit 2)
    ├── FatalError             retrying will not help
    │   ├── AuthError          Cloudflare refused the credentials
    │   └── DatabaseNotReadyError
    ├── LeaseLostError         another worker took the account over
    ├── DeadlineReached        a request not granted in time: not sent, still owed
    ├── BadRecordError         one upstream object set aside; the cycle goes on
    └── RetriableError         may pass: try again later
        ├── DatabaseError      the database failed mid-cycle (rolled back)
        └── UpstreamError      Cloudflare failed (5xx, garbled bodies)
            ├── NoAnswer       no whole answer in time, or no connection
            ├── DoubtfulAnswer a well-formed answer that looks like a glitch
            └── ThrottledError HTTP 429

Library errors (httpx, SQLAlchemy, pydantic) are wrapped at the module boundary with
``raise ... from exc``; only the CLI turns these into messages and exit codes.
"""

from __future__ import annotations

from typing import Any


class ArchiverError(Exception):
    """Root of every error the archiver raises on purpose."""


class ConfigError(ArchiverError):
    """A setting is missing or invalid; the operator must fix it before anything runs."""


class InputError(ArchiverError):
    """A value given on the command line cannot be used (a time, an age, an id); nothing was done."""


class FatalError(ArchiverError):
    """Retrying will not help (bad credentials, a malformed request): stop and report."""


class AuthError(FatalError):
    """Cloudflare refused the credentials (401/403)."""


class LeaseLostError(ArchiverError):
    """Another worker took the account over: this one must stop writing for it."""


class RetriableError(ArchiverError):
    """A transient failure (throttling, 5xx, timeouts, lost connections): try again later."""


class DatabaseError(RetriableError):
    """The database failed mid-cycle; the transaction under way was rolled back."""


class UpstreamError(RetriableError):
    """Cloudflare failed in a way that may pass (5xx, 429, timeouts, garbled bodies)."""


class NoAnswer(UpstreamError):
    """No answer came: the connection failed, or the answer did not come whole in time."""


class DoubtfulAnswer(UpstreamError):
    """A well-formed answer that looks like a glitch (a null detail, another session's id)."""

    def __init__(self, message: str, data: Any) -> None:
        super().__init__(message)
        self.data = data


class ThrottledError(UpstreamError):
    """HTTP 429: Cloudflare asks us to slow down."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineReached(ArchiverError):
    """A request was not granted before its deadline and was not sent; it is still owed."""


class BadRecordError(ArchiverError):
    """One upstream object could not be used; it is set aside and the cycle goes on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DatabaseNotReadyError(FatalError):
    """The database schema is missing or older than this version of the archiver."""


def first_line(exc: BaseException) -> str:
    """One line about an error, for logs and the ledger.

    SQLAlchemy's messages go on with the statement and its parameters; the driver's own first
    line (``exc.orig``) says what went wrong.
    """
    text = str(getattr(exc, "orig", None) or exc) or type(exc).__name__
    return text.splitlines()[0][:300]
