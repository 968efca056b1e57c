"""The file behind a SQLite URL: created private (0600) for the commands that write, opened
read-only, and never created, for the commands that only read."""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, quote, unquote

from sqlalchemy.engine import URL
from sqlalchemy.util import asbool

from archiver.errors import ConfigError, DatabaseNotReadyError

# SQLite URI modes in which SQLite itself never creates the file.
_NOT_CREATED = ("ro", "rw", "memory")


def archive_path(url: URL) -> str | None:
    """The file SQLite opens for the URL, in the plain form (``sqlite:///archive.db``) and as a URI
    filename (``sqlite:///file:archive.db?uri=true``); None for an in-memory database, or a URI mode
    in which SQLite creates nothing."""
    database = url.database or ""
    if asbool(url.query.get("uri", False)) and database.startswith("file:"):
        path, _, query = database.removeprefix("file:").partition("?")
        path = path.partition("#")[0]
        if path.startswith("//"):  # file://host/path: SQLite takes an empty or "localhost" host only
            path = "/" + path[2:].partition("/")[2]
        params = {**dict(parse_qsl(query)), **url.query}
        if params.get("mode") in _NOT_CREATED or params.get("vfs") == "memdb":
            return None
        database = unquote(path)
    return None if database in ("", ":memory:") else database


def create_private(path: str) -> None:
    """Create the archive file, if it does not exist, readable by its owner only whatever the
    umask: it holds DevTools URLs and close reasons. SQLite gives its journals the same mode.

    An existing file is not opened at all: closing any descriptor of a database file drops every
    POSIX lock this process holds on it, those of its open SQLite connections included (SQLite's
    documented pitfall), and a second engine made beside a first lost committed WAL pages so."""
    if os.path.exists(path):
        return
    try:
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    except OSError as exc:
        raise ConfigError(f"ARCHIVER_DATABASE_URL: cannot create the SQLite database file: {exc.strerror}") from exc
    os.close(fd)


def read_only(url: URL, path: str) -> URL:
    """The URL of the existing archive at ``path``, opened read-only (a read-only mount, a file
    the user may read but not write); a missing file is an error, never an empty new archive."""
    if not os.path.isfile(path):
        raise DatabaseNotReadyError(
            f"there is no SQLite archive at {path}: check ARCHIVER_DATABASE_URL, or create one with `archiver db upgrade`"
        )
    query = {key: value for key, value in url.query.items() if key not in ("uri", "mode", "immutable")}
    query.update(uri="true", mode="ro")
    if _no_shared_memory(path):
        # A read-only connection to a WAL archive needs its shared-memory file, which it cannot
        # create in a directory it may not write to. With neither that file nor a log of
        # uncommitted pages, no process has the archive open for writing, and it may be read
        # as an unchanging file.
        query["immutable"] = "1"
    return url.set(database="file:" + quote(os.path.abspath(path)), query=query)


def _no_shared_memory(path: str) -> bool:
    directory = os.path.dirname(os.path.abspath(path))
    return not os.access(directory, os.W_OK) and not os.path.exists(f"{path}-shm") and not os.path.exists(f"{path}-wal")
