"""Credentials out of URLs and free text: the one redaction behind every stored column, raw
document, version, rejected body, error message and log line."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit, urlunsplit

REDACTED = "REDACTED"


def redact_url(url: str, _depth: int = 0) -> str:
    """The URL with every credential replaced: user info, path parameters, query values, fragments.

    A query value that is itself a URL with a query (DevTools' ``?wss=host/path?jwt=...``) is
    redacted recursively rather than wholesale, so the host and path stay useful for forensics.
    """
    try:
        plain = _split_plain_url(url)
        if plain is not None:
            # What urlunsplit would join, without urlsplit's and urlunsplit's general machinery.
            head, query = plain
            return f"{head}?{_redact_query(query, _depth)}"
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
        fragment = REDACTED if parts.fragment else ""
        path = _PATH_PARAM.sub(_redact_param, parts.path) if ";" in parts.path else parts.path
        return urlunsplit((parts.scheme, netloc, path, _redact_query(parts.query, _depth), fragment))
    except ValueError:
        return REDACTED


def _redact_query(query: str, depth: int) -> str:
    items = []
    for item in query.split("&") if query else []:
        key, has_value, value = item.partition("=")
        if not has_value:
            items.append(REDACTED)  # a bare ?token is a value without a key
        elif "?" in unquote(value) and depth < 3:
            items.append(f"{key}={redact_url(unquote(value), depth + 1)}")  # a URL with its own query
        else:
            items.append(f"{key}={REDACTED if value else ''}")
    return "&".join(items)


# A path parameter (".../browser/ID;jwt=TOKEN") carries a token as often as a query value does;
# like a query item, a bare one is a value without a key.
_PATH_PARAM = re.compile(r";(?:(?P<key>[^;/=]*)=)?(?P<value>[^;/]*)")


def _redact_param(match: re.Match[str]) -> str:
    if not match["value"]:
        return match[0]
    return f";{REDACTED}" if match["key"] is None else f";{match['key']}={REDACTED}"


# The everyday shapes of a DevTools URL, "scheme://host/path?query" and "host/path?query", in
# printable ASCII without a fragment, brackets, user info or path parameters. For these, urlsplit
# only splits and urlunsplit joins the parts back as they were, so redaction can skip both (most
# of its cost).
_PLAIN_URL = re.compile(r"([a-z][a-z0-9+.\-]*://[^/?#@;\[\]]+(?:/[^?#;]*)?)\?([^#]+)")
_PLAIN_PATH = re.compile(r"([^/?#:;][^?#:;]*)\?([^#]+)")


def _split_plain_url(url: str) -> tuple[str, str] | None:
    """(everything before the first ``?``, the query) for a URL of a plain shape, else None."""
    if not url.isascii() or not url.isprintable() or " " in url:
        return None
    match = _PLAIN_URL.fullmatch(url) or _PLAIN_PATH.fullmatch(url)
    return (match[1], match[2]) if match else None


# In free text: a URL with a scheme, up to the first character that cannot be part of one there
# (it is redacted as redact_url redacts a field); elsewhere, any "?key=value", "&key=value",
# ";key=value" or "#key=value" (a URL without a scheme, or a piece of one). A scheme is looked for
# only where a word starts, so that a long word costs one scan, not one per letter.
_TEXT_SECRET = re.compile(
    r"(?P<url>(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]*://[^\s\"'<>\\]+)"
    r"|(?P<key>[?&;#][\w.\-]+=)(?P<value>[^&\s\"'\\]+)"
)
# Every credential _TEXT_SECRET finds holds one of these: most texts hold none, and are let be.
_SECRET_HINT = re.compile(r"[?&;#]|://")


def redact_text(text: str) -> str:
    """Free text (an unknown field, an error message, a log line, a rejected body) with every
    credential a URL in it may carry replaced, as :func:`redact_url` replaces them."""
    if _SECRET_HINT.search(text) is None:
        return text
    return _TEXT_SECRET.sub(_redact_text_match, text)


def _redact_text_match(match: re.Match[str]) -> str:
    url = match["url"]
    return redact_url(url) if url is not None else f"{match['key']}{REDACTED}"
