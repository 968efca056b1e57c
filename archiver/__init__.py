"""Browser session archiver: keeps the history of Cloudflare Browser Rendering DevTools sessions.

``Archive`` (archiver.library) is the library's front door; it is imported when first named, so
that the command line starts without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from archiver.errors import (
    ArchiverError,
    AuthError,
    BadRecordError,
    ConfigError,
    FatalError,
    RetriableError,
)

if TYPE_CHECKING:
    from archiver.library import Archive

__version__ = "0.1.0"

__all__ = [
    "Archive",
    "ArchiverError",
    "AuthError",
    "BadRecordError",
    "ConfigError",
    "FatalError",
    "RetriableError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name == "Archive":
        from archiver.library import Archive

        return Archive
    raise AttributeError(f"module 'archiver' has no attribute {name!r}")
