"""Browser session archiver: keeps the history of Cloudflare Browser Rendering DevTools sessions."""

from archiver.errors import (
    ArchiverError,
    AuthError,
    BadRecordError,
    ConfigError,
    FatalError,
    RetriableError,
)

__version__ = "0.1.0"

__all__ = [
    "ArchiverError",
    "AuthError",
    "BadRecordError",
    "ConfigError",
    "FatalError",
    "RetriableError",
    "__version__",
]
