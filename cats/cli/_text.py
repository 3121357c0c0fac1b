"""What CLI tables show of times and of text that comes from elsewhere (an Order's name, a peer's error)."""

from __future__ import annotations

import time
import unicodedata


def printable(text: str) -> str:
    """Text from an Order or a node (a peer's) as it may reach a terminal: control characters (escape
    sequences retitle, clear or write to the clipboard) and bidirectional overrides shown as `?`."""
    return "".join("?" if unicodedata.category(c) in ("Cc", "Cf") and c != "\t" else c for c in text)


def when(t: float | None) -> str:
    """A time as local date and time; `-` for none, or for one no calendar holds (a stored value is input too)."""
    try:
        return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
    except (OverflowError, ValueError, OSError):
        return "-"
