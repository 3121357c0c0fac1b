"""No Factory run from inside the user code the Factory itself is loading or running.

Workers import a Function's module to run its slices. An Order file that calls `cats.factory.run`
at module level, not under `if __name__ == "__main__":`, would start a whole run in every worker
importing it, each of whose workers would start another: the runs multiply until the machine gives
out; so would a verification re-executing slices there, or a submission to a node. So while user
code is imported or a slice runs, any of those in that process is refused at once, and the refusal
fails the slice with the reason. A slice's own sub-Orders go through
`cats.factory.submit`, which runs them elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from cats.errors import ReentrantRun

_IMPORTING = 'put the call under `if __name__ == "__main__":`, or every import of the file runs the Order again'
_RUNNING = "a slice runs a sub-Order with cats.factory.submit"

# What user code this process is in, and what to do instead; a module global, not a context
# variable, so threads the user code starts are refused too.
_inside: tuple[str, str] | None = None


@contextmanager
def _inside_user_code(doing: str, advice: str) -> Iterator[None]:
    global _inside
    outer, _inside = _inside, (doing, advice)
    try:
        yield
    finally:
        _inside = outer


@contextmanager
def importing(doing: str) -> Iterator[None]:
    """Around an import of user code; `doing` says what, e.g. "importing m to run slice 3 in a worker"."""
    with _inside_user_code(doing, _IMPORTING):
        yield


@contextmanager
def running(doing: str) -> Iterator[None]:
    """Around a call of a slice's function; `doing` says which, e.g. "running slice 3 of m:f"."""
    with _inside_user_code(doing, _RUNNING):
        yield


def check(call: str = "cats.factory.run") -> None:
    """Raise ReentrantRun if this process is inside user code the Factory is loading or running:
    `call` (a run, a verification that re-executes, a submission to a node) would start Ray tasks
    that import the same code again."""
    if _inside is not None:
        doing, advice = _inside
        raise ReentrantRun(f"{call} called while {doing}: {advice}")
