"""Upstream values made storable on SQLite, PostgreSQL and MariaDB alike.

JSON decoders accept what some databases refuse: PostgreSQL takes no NUL character in text or
JSON, no driver encodes a lone surrogate (an unpaired ``"\\ud800"`` escape), MariaDB's JSON check
refuses nesting 32 levels deep, and its TEXT holds 65,535 bytes. A broken or hostile upstream can
send any of these in any field; each is replaced here (the caller notes what was), so that one
bad value costs that value, never the write that carries it and the other sessions in it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

import orjson

REPLACEMENT = "\ufffd"
# Containers nested deeper than this (the document itself is level 1) are cut: MariaDB refuses
# JSON 32 levels deep, and no session object nests a tenth of that.
MAX_DEPTH = 20
DEPTH_MARKER = f"[nested deeper than {MAX_DEPTH} levels: cut]"
# What a raw document may take: a session object is about a kilobyte; past this it is padding.
MAX_DOCUMENT_BYTES = 64 * 1024
# MariaDB's TEXT (rejected bodies, ledger errors) holds this many bytes.
MAX_TEXT_BYTES = 65_535
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable_text(text: str) -> str:
    """The text with NUL characters and lone surrogates replaced by U+FFFD; the very same object
    when it holds neither (callers tell a change by identity)."""
    if text.isascii():
        return text.replace("\x00", REPLACEMENT) if "\x00" in text else text
    return _UNSTORABLE.sub(REPLACEMENT, text) if _UNSTORABLE.search(text) else text


class Walk:
    """A copy of a decoded JSON value that a database's JSON column takes, string by string.

    ``clean`` replaces NUL characters and lone surrogates, in keys too; ``redact`` is applied to
    every string after that. Containers past :data:`MAX_DEPTH` become :data:`DEPTH_MARKER`
    (the recursion never goes deeper, however deep the value). ``cleaned`` and ``cut`` tell what
    had to change, for the caller to note. A string longer than ``longest`` is cut to it first,
    unnoted: the caller bounds the whole to no more than that, and says so.
    """

    __slots__ = ("clean", "redact", "longest", "cleaned", "cut")

    def __init__(self, *, clean: bool, redact: Callable[[str], str] | None, longest: int | None = None) -> None:
        self.clean = clean
        self.redact = redact
        # Redacting text that is then left out anyway would only cost time: a megabyte of
        # "?a=b" pairs takes a tenth of a second.
        self.longest = longest
        self.cleaned = False
        self.cut = False

    def value(self, value: Any, depth: int = 1) -> Any:
        """``value`` as found at ``depth`` (the document itself is at 1)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                self.cut = True
                return DEPTH_MARKER
            if isinstance(value, list):
                return [self.value(item, depth + 1) for item in value]
            return {self.text(k) if isinstance(k, str) else k: self.value(v, depth + 1) for k, v in value.items()}
        if self.clean and isinstance(value, float) and not math.isfinite(value):
            return None  # not JSON; orjson writes it as null too
        return value

    def text(self, text: str) -> str:
        if self.longest is not None and len(text) > self.longest:
            text = text[: self.longest]
        if self.clean:
            replaced = storable_text(text)
            if replaced is not text:
                self.cleaned = True
                text = replaced
        return self.redact(text) if self.redact is not None else text


def json_bytes(value: Any) -> bytes:
    """The JSON of a value, as every database's JSON column takes it.

    orjson's, which is a tenth of json.dumps' time (a cycle writes every raw document at least
    twice), and writes NaN as null, never as NaN, which is not JSON. What orjson refuses
    (integers beyond 64 bits, lone surrogates, nesting past 254 levels) or writes but a database
    refuses (NUL, nesting past MariaDB's limit) is first made storable by a :class:`Walk`.
    """
    try:
        data = orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(Walk(clean=True, redact=None).value(value)).encode()
    if (_BACKSLASH in data and b"\\u0000" in data) or _may_nest_too_deep(data):
        cleaned = Walk(clean=True, redact=None).value(value)
        try:
            return orjson.dumps(cleaned)
        except orjson.JSONEncodeError:
            return json.dumps(cleaned).encode()
    return data


def _may_nest_too_deep(data: bytes) -> bool:
    """Whether a JSON text may nest past MAX_DEPTH: never, when it has fewer brackets and braces
    (in strings too) than that. A flat document, the usual session object, has one brace and no
    bracket, which two byte searches tell at a fraction of the cost of counting."""
    if _BRACKET not in data and data.rfind(_BRACE) <= 0:
        return False
    return data.count(b"[") + data.count(b"{") > MAX_DEPTH


# Single bytes searched as integers: a search for a one-byte bytes object costs several times more.
_BACKSLASH, _BRACKET, _BRACE = ord("\\"), ord("["), ord("{")


def bounded_text(text: str, limit: int = MAX_TEXT_BYTES) -> str:
    """The text made storable, within ``limit`` UTF-8 bytes: a longer one is cut, and says so at
    its end."""
    text = storable_text(text)
    if len(text) * 4 <= limit:
        return text
    data = text.encode()
    if len(data) <= limit:
        return text
    note = f" ... [cut to {limit} bytes]"
    return data[: limit - len(note)].decode("utf-8", "ignore") + note
