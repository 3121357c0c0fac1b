"""The user's code: files in the store plus an entry point, never a pickle.

A Function names its code by CID (a folder holding the module file or package) and an entry
`module:qualname`, so any machine holding the store can load and run it. Before sealing it may
instead point at a local `source` file or folder; sealing adds that to the store.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

from cats.cas.fields import CIDField
from cats.errors import CatsError

# What the function receives per slice: the slice's bytes, a local path to them, an Arrow table
# (row-group slices), or the Slice record itself (for functions that fetch on their own).
Takes = Literal["bytes", "path", "table", "slice"]


class Function(BaseModel):
    """User code by content: the CID of a folder holding the module, the `module:qualname` to call
    in it, and keyword `params` (JSON-able, so they are part of the Order's CID). `takes` says what
    the code receives per slice: its bytes, a local path to them, an Arrow table, or the Slice."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    entry: str = Field(description="`module:qualname` inside the code folder")
    code: CIDField | None = Field(default=None, description="UnixFS folder holding the module or package")
    params: dict[str, JsonValue] = Field(default_factory=dict, description="keyword arguments, JSON-able")
    takes: Takes = "bytes"
    source: Path | None = Field(default=None, exclude=True, description="local file or folder, before sealing")

    @model_validator(mode="after")
    def _check(self) -> Function:
        module, sep, name = self.entry.partition(":")
        if not sep or not module or not name:
            raise ValueError(f"entry {self.entry!r} must look like 'module:function'")
        if self.code is None and self.source is None:
            raise ValueError("a Function needs its code: a CID (code=) or a local file or folder (source=)")
        return self

    @classmethod
    def of(cls, fn: Callable[..., Any], takes: Takes = "bytes", **params: JsonValue) -> Function:
        """Capture a callable by the source file that defines it (not by pickling it)."""
        try:
            path = inspect.getsourcefile(fn)
        except TypeError:
            path = None
        if path is None or not Path(path).is_file() or "<" in fn.__qualname__:
            raise CatsError(f"{fn!r} must be a module-level function defined in a .py file")
        return cls(entry=f"{Path(path).stem}:{fn.__qualname__}", source=Path(path), params=params, takes=takes)

    @property
    def module(self) -> str:
        return self.entry.partition(":")[0]

    @property
    def qualname(self) -> str:
        return self.entry.partition(":")[2]
