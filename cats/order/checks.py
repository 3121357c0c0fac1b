"""Cheap validators an Order carries: checks of its output that fetch only the pieces they need.

A Check names its data by reference, not by CID, because the output's CID is unknown when the
Order is written: `input:N[/path]` is the N-th input of the Order (a path goes inside a folder
CID), `output[/path]` the result of the run. `cats.order.checking` runs them.

- `freivalds`: c == a @ b, by random projections (reads a, b and c once, O(n^2 * rounds)).
- `elementwise`: c == op(a[, b]) on `samples` random entries, fetched by byte range.
- `reduction`: c (the total) == op over a, with b holding the claimed per-partition results;
  the partials must combine to the total and `sampled` random partitions are recomputed.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CheckKind = Literal["freivalds", "elementwise", "reduction"]
UNARY = ("neg", "abs", "sqrt", "exp", "log", "square")
BINARY = ("add", "sub", "mul", "div", "pow", "maximum", "minimum")
REDUCTIONS = ("sum",)
Op = Literal["neg", "abs", "sqrt", "exp", "log", "square",
             "add", "sub", "mul", "div", "pow", "maximum", "minimum", "sum"]

_REF = re.compile(r"(?:input:(?P<index>0|[1-9][0-9]*)|(?P<output>output))(?P<path>/.*)?")


def parse_ref(ref: str) -> tuple[int | None, str]:
    """`input:N[/path]` -> (N, path); `output[/path]` -> (None, path). ValueError names the culprit."""
    m = _REF.fullmatch(ref)
    if m is None:
        raise ValueError(f"reference {ref!r} must look like 'input:N[/path]' or 'output[/path]'")
    parts = m["path"][1:].split("/") if m["path"] else []
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"reference {ref!r} has an empty, '.' or '..' path segment")
    return (None if m["output"] else int(m["index"])), "/".join(parts)


class Check(BaseModel):
    """One validator of an Order's output. Integers are compared exactly; rtol/atol apply to floats."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: CheckKind
    a: str = Field(description="the operand: 'input:N[/path]' or 'output[/path]'")
    b: str | None = Field(default=None, description="second operand; for reduction the claimed partials")
    c: str = Field(default="output", description="the claimed result")
    op: Op | None = Field(default=None, description="elementwise: a ufunc name; reduction: 'sum' (the default)")
    rounds: int = Field(default=20, ge=1, le=64, description="freivalds: false accept <= 2**-rounds")
    samples: int = Field(default=64, ge=1, description="elementwise: entries drawn (with replacement)")
    partitions: int = Field(default=16, ge=1, description="reduction: contiguous ranges of a's flat array")
    sampled: int = Field(default=4, ge=1, description="reduction: partitions recomputed")
    rtol: float | None = Field(default=None, ge=0, description="None: sqrt(eps) of the least precise float")
    atol: float = Field(default=0.0, ge=0)

    def label(self) -> str:
        """How messages name the check: its kind, op and operands, e.g. `freivalds(a=input:0/a.npy, b=…, c=output)`."""
        operands = ", ".join(f"{k}={v}" for k, v in (("a", self.a), ("b", self.b), ("c", self.c)) if v is not None)
        return f"{self.kind}{f' {self.op}' if self.op else ''}({operands})"

    @field_validator("a", "b", "c")
    @classmethod
    def _ref(cls, value: str | None) -> str | None:
        if value is not None:
            parse_ref(value)
        return value

    @model_validator(mode="after")
    def _fits_kind(self) -> Check:
        if self.kind == "freivalds":
            if self.b is None:
                raise ValueError("a freivalds check needs b: it checks c == a @ b")
            if self.op is not None:
                raise ValueError("a freivalds check takes no op (it always checks a matrix product)")
        elif self.kind == "elementwise":
            if self.op is None or self.op in REDUCTIONS:
                raise ValueError(f"an elementwise check needs op, one of {', '.join(UNARY + BINARY)}")
            if self.op in BINARY and self.b is None:
                raise ValueError(f"elementwise {self.op!r} is binary: give b")
            if self.op in UNARY and self.b is not None:
                raise ValueError(f"elementwise {self.op!r} is unary: b must be left out")
        else:
            if self.op is not None and self.op not in REDUCTIONS:
                raise ValueError(f"a reduction's op must be one of {', '.join(REDUCTIONS)}, not {self.op!r}")
            if self.b is None:
                raise ValueError("a reduction check needs b, the claimed per-partition results: a total "
                                 "alone cannot be checked without reading all of a")
            if self.sampled > self.partitions:
                raise ValueError(f"sampled ({self.sampled}) cannot exceed partitions ({self.partitions})")
        return self


class CheckReport(BaseModel):
    """What one check found, what it cost (bytes fetched vs. bytes it names) and how far to trust a pass."""

    kind: CheckKind
    passed: bool
    bytes_fetched: int
    total_bytes: int
    false_accept_probability: float
    detail: str
    seed: int | None = None
