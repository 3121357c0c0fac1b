"""The Factory: turns an Order into Ray tasks, one per batch of slices, and the run into a BOM.

`run` (in `driver`) seals and returns what is known already; `execution` splits, executes and
records; `worker` is what runs inside Ray; `confine` and `_confined` are the sandbox for code that is
not the operator's own. The package's own names
load on first use, so a process that needs one part (a sandbox, which must start fast) does not load
the driver and the models it imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cats.bom.home import Home
    from cats.factory.driver import Stage, dag, run
    from cats.factory.execution import reexecute
    from cats.factory.nested import slice_store, submit
    from cats.factory.outcome import Run, SliceOutcome
    from cats.order.function import Function

_WHERE = {"run": "cats.factory.driver", "reexecute": "cats.factory.execution", "Run": "cats.factory.outcome",
          "dag": "cats.factory.driver", "Stage": "cats.factory.driver",
          "Home": "cats.bom.home", "SliceOutcome": "cats.factory.outcome", "Function": "cats.order.function",
          "submit": "cats.factory.nested", "slice_store": "cats.factory.nested"}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'cats.factory' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


__all__ = ["run", "dag", "reexecute", "Run", "Stage", "Home", "SliceOutcome", "Function", "submit", "slice_store"]
