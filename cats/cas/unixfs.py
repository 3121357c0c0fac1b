"""UnixFS v1 `Data` messages: the file-system meaning carried in a dag-pb node's Data field."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from cats.cas import varint
from cats.errors import DecodeError


class Kind(IntEnum):
    RAW = 0
    DIRECTORY = 1
    FILE = 2
    METADATA = 3
    SYMLINK = 4
    HAMT_SHARD = 5


@dataclass(slots=True)
class Data:
    kind: Kind
    data: bytes | None = None
    filesize: int | None = None
    blocksizes: list[int] = field(default_factory=list)
    hash_type: int | None = None
    fanout: int | None = None


def encode(kind: Kind, data: bytes | memoryview | None = None, filesize: int | None = None,
           blocksizes: list[int] | None = None, hash_type: int | None = None, fanout: int | None = None) -> bytes:
    """Encode the fields kubo writes; blocksizes are unpacked, as go-unixfs's proto2 schema has them."""
    out: list[bytes | memoryview] = [b"\x08", varint.encode(kind)]
    if data is not None:
        out += [b"\x12", varint.encode(len(data)), data]
    if filesize is not None:
        out += [b"\x18", varint.encode(filesize)]
    for size in blocksizes or ():
        out += [b"\x20", varint.encode(size)]
    if hash_type is not None:
        out += [b"\x28", varint.encode(hash_type)]
    if fanout is not None:
        out += [b"\x30", varint.encode(fanout)]
    return b"".join(out)


def decode(buf: bytes) -> Data:
    kind: int | None = None
    result = Data(Kind.RAW)
    i, end = 0, len(buf)
    try:
        while i < end:
            key, i = varint.decode(buf, i)
            fnum, wire = key >> 3, key & 7
            if wire == 0:
                value, i = varint.decode(buf, i)
                if fnum == 1:
                    kind = value
                elif fnum == 3:
                    result.filesize = value
                elif fnum == 4:
                    result.blocksizes.append(value)
                elif fnum == 5:
                    result.hash_type = value
                elif fnum == 6:
                    result.fanout = value
                # 7 (mode) and unknown varints carry nothing we need to read a file back
            elif wire == 2:
                n, i = varint.decode(buf, i)
                if i + n > end:
                    raise DecodeError("UnixFS field overruns its message")
                if fnum == 2:
                    result.data = buf[i:i + n]
                elif fnum == 4:  # packed blocksizes, as some writers emit them
                    j = i
                    while j < i + n:
                        value, j = varint.decode(buf, j)
                        result.blocksizes.append(value)
                i += n
            elif wire == 5:
                i += 4
            elif wire == 1:
                i += 8
            else:
                raise DecodeError(f"unexpected UnixFS wire type {wire}")
    except IndexError:
        raise DecodeError("truncated UnixFS data") from None
    if kind is None:
        raise DecodeError("UnixFS data without a Type")
    try:
        result.kind = Kind(kind)
    except ValueError:
        raise DecodeError(f"unknown UnixFS type {kind}") from None
    return result
