"""The work both the Factory benchmarks and their plain-Ray baselines run per slice.

Benchmarks copy this file into their scratch folder as a module of their own, so Ray workers and
the Factory (which captures a function by its source file) import the same code.
"""

import time


def spin(data: bytes, ms: float = 10.0) -> bytes:
    """ms milliseconds of CPU work, then a small transform of the input."""
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass
    return data.upper()


def count_lines(data: bytes) -> bytes:
    """The lines of a slice, counted: work that costs next to nothing beside reading the slice."""
    return b"%d\n" % data.count(b"\n")
