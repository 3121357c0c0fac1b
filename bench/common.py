"""What every benchmark script shares: the machine it ran on, and writing its result as JSON."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any


def machine(**versions: str) -> dict[str, Any]:
    """CPUs, Python and platform, plus the versions of whatever else the figures depend on."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(), **versions}


def save(result: dict[str, Any], path: Path | None) -> None:
    """Write the result as indented JSON (creating its folder) and say where; nothing if path is None."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
