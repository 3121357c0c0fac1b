"""The quickstart Order: count lines, words and bytes of every file in demo/sample.

    cats run demo/quickstart.py

adds demo/sample to the local store, runs one Ray task per batch of files on the embedded local
Ray, writes one result file per input (same names) and prints the BOM CID that records it all.
"""

from pathlib import Path

from cats.order import Function, Order


def count(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace")
    return f"{len(text.splitlines())} lines, {len(text.split())} words, {len(data)} bytes\n"


order = Order(
    name="quickstart: count lines, words, bytes",
    function=Function.of(count),
    inputs=[Path(__file__).parent / "sample"],
)
