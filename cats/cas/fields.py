"""CIDs as pydantic fields: strings in JSON, CID objects in Python, real links in DAG-CBOR.

Every record model (Orders, BOMs) uses this one type, so `model_dump()` hands DAG-CBOR CID
objects it encodes as tag-42 links, and `model_dump(mode="json")` gives their text form.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

from cats.cas.cid import CID


class _CIDSchema:
    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        def parse(value: Any) -> CID:
            if isinstance(value, CID):
                return value
            if isinstance(value, (str, bytes)):
                return CID.parse(value)
            raise ValueError(f"expected a CID, got {type(value).__name__}")

        return core_schema.no_info_plain_validator_function(
            parse,
            json_schema_input_schema=core_schema.str_schema(),
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda c, info: str(c) if info.mode == "json" else c, info_arg=True),
        )


CIDField = Annotated[CID, _CIDSchema]
