"""Client-supplied text as it may appear in a status message or a log line: short and escaped.

A client chooses what it sends (a model name of megabytes, control characters, bytes that are not
UTF-8); echoing it whole made every refusal a lever on log volume and memory. :func:`quote` keeps the
first ``limit`` characters, escapes everything that is not printable ASCII, and says how much was cut.
"""

from __future__ import annotations

from typing import Final

LIMIT: Final = 64


def quote(value: str | bytes, limit: int = LIMIT) -> str:
    """The first ``limit`` characters (or bytes) of ``value``, escaped (4 characters at most each) and
    quoted, then how long the whole was when it was cut."""
    if isinstance(value, bytes):
        head = value[:limit].decode("utf-8", "backslashreplace")
        cut = f"... ({len(value)} bytes)" if len(value) > limit else ""
    else:
        head = value[:limit]
        cut = f"... ({len(value)} characters)" if len(value) > limit else ""
    escaped = head.encode("ascii", "backslashreplace").decode("ascii")
    escaped = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in escaped).replace("'", "\\'")
    return f"'{escaped}'{cut}"


def clip(message: str, limit: int = 512) -> str:
    """A whole message cut to ``limit`` characters: the last guard before a status or a log line."""
    return message if len(message) <= limit else message[:limit] + "..."
