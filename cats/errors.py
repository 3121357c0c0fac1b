"""One exception hierarchy, so the CLI can turn any of them into a one-line error and exit non-zero."""

from __future__ import annotations


class CatsError(Exception):
    """Base of every error CATs raises on purpose; its message names the culprit."""


class ReentrantRun(CatsError):
    """A Factory run started by user code the Factory (or `cats run`) is importing or running in that process,
    e.g. an Order file that calls cats.factory.run at module level, which every worker importing it would run."""


class InvalidCID(CatsError, ValueError):
    """A string or byte sequence is not a well-formed CID."""


class UnknownCodec(CatsError, ValueError):
    """A multicodec, multihash or multibase code that CATs does not implement."""


class DecodeError(CatsError, ValueError):
    """Bytes that do not decode under the codec their CID names."""


class BlockNotFound(CatsError, KeyError):
    """A block is not in the store. `cid` names it, for callers that classify failures."""

    def __init__(self, message: str, cid: object = None) -> None:
        super().__init__(message)
        self.cid = cid

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "block not found"


class IntegrityError(CatsError):
    """A block's bytes do not hash to its CID; the bytes are never handed out. `cid` names it."""

    def __init__(self, message: str, cid: object = None) -> None:
        super().__init__(message)
        self.cid = cid


class CarError(CatsError, ValueError):
    """A CAR file is truncated, malformed or carries a block that does not match its CID."""


class CarTruncated(CarError):
    """A CAR stream that ends inside its header or a section: what came before it is whole."""


class UnsafePath(CatsError, ValueError):
    """A folder entry name that would escape its folder (`..`, `/`, empty, NUL) or that the folder holds twice,
    or a symlink that would lead outside the tree being written."""


class PathNotFound(CatsError, KeyError):
    """A path inside a directory CID names no entry."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "path not found"


class EncodeError(CatsError, TypeError):
    """A value that a codec cannot represent (e.g. a float NaN in DAG-CBOR, a non-string map key)."""


class DataError(CatsError):
    """A data reference (URI) could not be read or written. `uri` names it, for callers that classify failures."""

    def __init__(self, message: str, uri: str | None = None) -> None:
        super().__init__(message)
        self.uri = uri


class DataNotFound(DataError):
    """The URI names nothing: HTTP 404/410, a missing S3 key or bucket, file, mem key or IPFS path."""


class DataForbidden(DataError):
    """The source refuses access (HTTP 401/403), or the reader's Reach refuses the URI (cats.data.reach):
    a file:// path outside the roots or inside CATS_HOME, a special address, an unpinned CID."""


class DataTimeout(DataError):
    """The source did not answer within the configured timeout."""


class DataUnavailable(DataError):
    """The source kept failing (connection errors, HTTP 5xx) after the bounded retries."""


class DataIntegrityError(DataError):
    """The source changed under the same URI: its version token no longer matches the pinned one."""


class ViewError(DataError, ValueError):
    """A view that cannot be built or read as asked: the message names the view (its URI and ops) and why."""


class UnsupportedScheme(DataError, ValueError):
    """No resolver handles the URI's scheme (or the scheme cannot do what was asked, e.g. write)."""


class MalformedURI(DataError, ValueError):
    """The text is not a URI the scheme's resolver can interpret."""


class FetchTooLarge(DataError):
    """A read would transfer more than `CATS_DATA_MAX_FETCH` bytes."""


class DataServiceError(CatsError):
    """The Data Service refused or failed a request, or could not be reached. `status` is its HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class EnvelopeError(CatsError):
    """A signature envelope that cannot be read (not JSON, a field missing or of the wrong type, too
    large). `claimed` lists the key ids it still names, so a report can say whose signatures fell."""

    def __init__(self, message: str, claimed: list[str] | None = None) -> None:
        super().__init__(message)
        self.claimed = claimed or []


class SliceFailed(CatsError):
    """A slice raised, or its replicas disagreed; the message names the slices and carries the
    remote traceback, or which replica said what."""


class Cancelled(CatsError):
    """A run stopped by SIGINT: Ctrl-C, or `cats jobs cancel` from anywhere. Its finished slices are
    kept, so running it again resumes."""


class StageFailed(CatsError):
    """A stage of a pipeline failed; the message names the stage and why, and `__cause__` is its own error.
    The stages before it are recorded, so a re-run reuses them."""


class CheckFailed(CatsError):
    """A check of an Order that gates its run (`check_on_run`) rejected the output, or could not run on it;
    the message names the check and says nothing was recorded."""


class ChildFailed(CatsError):
    """A sub-Order failed on every attempt or ran out of time; the message names it and its slice."""


class MeshError(CatsError):
    """A node refused a request, answered nonsense, or could not be reached. `status` is the HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None, url: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.url = url


class StreamCut(MeshError):
    """A CAR stream stopped before its end: the connection dropped, or the node lacks a deeper block
    (it then closes the connection rather than send a CAR that merely looks complete)."""
