"""The operations a view records: small frozen pydantic models, each with an `op` tag.

Plain data with no numpy or pyarrow behind it, so Orders and slice records can hold views without
importing either; `plan.py` gives them meaning.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr


class _Op(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def label(self) -> str:
        args = [repr(v) for k, v in self.model_dump().items() if k != "op" and v is not None]
        return f"{self.op}({', '.join(args)})"  # type: ignore[attr-defined]


class Rows(_Op):
    """Rows [start, stop) along axis 0 (to the end if stop is None); bounds past the row count are errors."""

    op: Literal["rows"] = "rows"
    start: int = Field(ge=0)
    stop: int | None = Field(default=None, ge=0)


class Window(_Op):
    """Every `step`-th row of [start, stop)."""

    op: Literal["window"] = "window"
    start: int = Field(ge=0)
    stop: int = Field(ge=0)
    step: int = Field(default=1, ge=1)


class Columns(_Op):
    """Columns by name (tables) or position (tables, and axis 1 of arrays), in the order given."""

    op: Literal["columns"] = "columns"
    names: list[StrictStr | StrictInt] = Field(min_length=1)

    def label(self) -> str:
        return f"columns({', '.join(map(repr, self.names))})"


class Transpose(_Op):
    """Reverse the axes of an array (2-D or more)."""

    op: Literal["transpose"] = "transpose"


class Reshape(_Op):
    """A new shape with the same element count (one -1 may stand for the rest), in C order as numpy does."""

    op: Literal["reshape"] = "reshape"
    shape: list[int]

    def label(self) -> str:
        return f"reshape({', '.join(map(str, self.shape))})"


class Cast(_Op):
    """A safe cast: numpy dtype names for arrays, Arrow type names for tables (every selected column)."""

    op: Literal["cast"] = "cast"
    dtype: str


Op = Annotated[Rows | Window | Columns | Transpose | Reshape | Cast, Field(discriminator="op")]
