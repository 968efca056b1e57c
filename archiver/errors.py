"""The archiver's exceptions, grouped by what the caller should do about them.

Library errors (httpx, SQLAlchemy, pydantic) are wrapped at the module boundary with
``raise ... from exc``; only the CLI turns these into messages and exit codes.
"""

from __future__ import annotations


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
