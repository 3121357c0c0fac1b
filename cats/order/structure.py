"""The environment an Order runs in: Python, the installed distributions, requirements, IaC."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cats.cas.fields import CIDField


class Structure(BaseModel):
    """The environment an Order ran in, recorded so a verifier can rebuild it or see the drift: the
    Python version, the lock of installed distributions (sealing fills both in from this machine),
    pip requirements for the workers, and an infrastructure-as-code folder; and whether a slice may
    reuse a result made in another environment (`reuse`), for code whose results do not depend on it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    python: str = Field(default_factory=platform.python_version)
    lock: CIDField | None = Field(default=None, description="DAG-CBOR map of distribution -> version")
    requirements: list[str] = Field(default_factory=list, description="pip requirements for Ray's runtime_env")
    iac: CIDField | None = Field(default=None, description="UnixFS folder of infrastructure-as-code")
    iac_path: Path | None = Field(default=None, exclude=True, description="local IaC folder, before sealing")
    # Shell-command Orders (`cats exec`) only; left out of the encoding while unset, so every other
    # Order and BOM keeps the CID it always had.
    command: str | None = Field(default=None, description="the shell command run per slice")
    tools: dict[str, str] = Field(default_factory=dict, exclude_if=lambda tools: not tools,
                                  description="program -> version (or path and SHA-256) the command calls")
    # Left out of the encoding at its default, so every Order and BOM keeps the CID it always had.
    reuse: Literal["environment", "code"] = Field(
        default="environment", exclude_if=lambda reuse: reuse == "environment",
        description='what a slice\'s evaluation key holds besides code, parameters, input and requirements: '
                    '"environment" also the Python version, lock and tools (a result made under others is '
                    'never reused), "code" nothing more (results made under any of them are reused)')
