"""`cats export-provenance`: a BOM re-stated for other ecosystems (in-toto/SLSA, OpenLineage).

Both formats are JSON already, so the output suits pipes and `jq` as it is.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path

import typer

from cats.cas.store import open_store
from cats.cli.bom import _emit


class Format(StrEnum):
    intoto = "in-toto"
    openlineage = "openlineage"


def export_provenance(
    cid: str = typer.Argument(..., metavar="BOM_CID", help="The BOM to export."),
    fmt: Format = typer.Option(..., "-f", "--format",
                               help="in-toto: a DSSE envelope, signed by this node, over an in-toto Statement "
                                    "with a SLSA provenance v1 predicate; openlineage: START and COMPLETE "
                                    "RunEvents as JSON lines."),
    output: Path | None = typer.Option(None, "-o", "--output", help="Write to this file instead of stdout."),
) -> None:
    """Export a BOM's provenance in a format other tools read."""
    store = open_store()
    if fmt is Format.intoto:
        from cats.provenance import intoto

        text = json.dumps(intoto.envelope(store, cid).model_dump(), indent=2) + "\n"
    else:
        from cats.provenance import openlineage

        text = openlineage.lines(store, cid)
    _emit(text, output)


def register(app: typer.Typer) -> None:
    app.command("export-provenance")(export_provenance)
