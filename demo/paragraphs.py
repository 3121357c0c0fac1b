"""Words per paragraph: an Order with its own split and merge, run from Python.

    python demo/paragraphs.py

The split cuts every text of a folder into paragraphs (byte ranges between blank lines), the
function counts the words of one paragraph, and the merge gathers the counts per text.
"""

from collections.abc import Iterator
from pathlib import Path

import cats
from cats.cas import reader


def paragraphs(inputs, store: cats.BlockStore) -> Iterator[tuple[cats.Slice, dict[str, str | int]]]:
    """The split, run once on the driver: one slice per paragraph of each text, and where it is."""
    for folder in inputs:
        for name, text_cid, _ in reader.entries(store, folder):
            text = b"".join(reader.read(store, text_cid))
            start = 0
            for k, part in enumerate(text.split(b"\n\n")):
                piece = cats.Slice(cid=text_cid, offset=start, length=len(part), name=f"{name}#{k}")
                yield piece, {"text": name, "paragraph": k}
                start += len(part) + 2


def words(data: bytes) -> int:
    """The function, once per slice in a Ray task: a paragraph's bytes in, its word count out."""
    return len(data.split())


def per_text(parts: list[tuple[int, dict[str, str | int]]]) -> dict[str, list[int]]:
    """The merge: each slice's (result, assembly), in slice order; the word counts of each text."""
    counts: dict[str, list[int]] = {}
    for n, where in parts:
        counts.setdefault(str(where["text"]), []).append(n)
    return counts


order = cats.Order(
    name="words per paragraph",
    function=cats.Function.of(words),
    inputs=[Path(__file__).with_name("texts")],
    infra=cats.InfraFunction(split=cats.Function.of(paragraphs), merge=cats.Function.of(per_text)),
)

if __name__ == "__main__":
    run = cats.run(order)
    print("BOM   ", run.bom)
    print("output", cats.read(run.bom))
    report = cats.verify(run.bom)
    print("verified" if report.verified else report.problems)
