"""Where CATs keeps its state: `CATS_HOME` (default `~/.cats`), created on first use."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The state folder; read from the environment each call so tests and workers can redirect it."""
    path = Path(os.environ.get("CATS_HOME") or Path.home() / ".cats").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path
