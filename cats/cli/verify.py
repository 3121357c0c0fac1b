"""`cats verify`: check a BOM by re-execution, sampled audit or integrity; exit 0 only if verified."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:  # imported lazily to keep start-up light
    from rich.console import Console

    from cats.verification.report import Report


def verify(
    cid: str = typer.Argument(..., metavar="BOM_CID"),
    sample: int | None = typer.Option(None, "--sample", min=1, help="Re-execute this many random slices."),
    fraction: float | None = typer.Option(None, "--fraction", help="Re-execute this fraction of the slices."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the random sample (reported when chosen)."),
    recursive: bool = typer.Option(False, "--recursive",
                                   help="Verify the whole lineage back to its roots, and every sub-Order."),
    integrity: bool = typer.Option(False, "--integrity", help="No re-execution: every block exists and hashes, "
                                   "and each reused slice's source BOM is intact, signed and computed it."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
) -> None:
    """Verify a BOM from the store alone; the report names every mismatch and its reason.

    Every signature kept for the BOM must hold: one that does not (forged, another key, another
    CID, a malformed envelope) is a signature-invalid failure naming its signer; an unsigned BOM
    is reported as unsigned, not as a failure.

    Slices a run reused from another run's BOM are re-executed like any other. With --integrity,
    each source BOM must be here and hash, carry a signature by this node or a trusted peer, and
    hold a record of its own execution giving the reused output. A slice taken from a trusted peer
    (`--reuse-from`) stands on the peer's BOM and the record blocks kept when it was taken: the
    signature must be by the peer its record names.

    With --recursive, ancestors missing here are pulled from trusted peers' nodes (`cats mesh trust
    add DID --url URL`); one whose code or data cannot be read here is accepted on the signature of
    a trusted peer (or this node), and the report says so.
    """
    from cats.api import verify as run

    report = run(cid, sample=sample, fraction=fraction, seed=seed, recursive=recursive, integrity=integrity,
                 quiet=as_json)
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
    else:
        print_report(report)
    raise typer.Exit(0 if report.verified else 1)


def report_console() -> Console:
    """stdout for reports: no emoji (a DID holds ":key:"), and never a CID wrapped when piped."""
    from rich.console import Console

    out = Console(emoji=False)
    return out if out.is_terminal else Console(emoji=False, width=1 << 12)


def print_report(report: Report, depth: int = 0, role: str = "", out: Console | None = None) -> None:
    from rich.table import Table
    from rich.text import Text

    console = out or report_console()
    title = f"{'  ' * depth}{role}{'[green]VERIFIED' if report.verified else '[red]NOT VERIFIED'}[/] {report.bom}"
    console.print(title + (f"  ({report.name})" if report.name else "") + f"  [dim]{report.mode}[/]")
    if report.sample:
        s = report.sample
        odds = ", ".join(f"{m} bad: {p:.1%}" for m, p in s.detection.items())
        console.print(f"{'  ' * depth}sampled {s.checked} of {s.total} slices (seed {s.seed}); "
                      f"chance to catch {odds}")
    elif report.slices:
        ok = sum(r.ok for r in report.slices)
        console.print(f"{'  ' * depth}{ok} of {len(report.slices)} slices re-executed to their recorded CIDs")
    if report.mode == "federation" and not report.problems:
        console.print(f"{'  ' * depth}the parts' BOMs run this Order over its inputs and merge into its output"
                      + ("" if report.children else "; --recursive verifies the parts' runs"))
    if report.mode == "integrity":
        console.print(f"{'  ' * depth}{report.blocks_checked} blocks checked")
    for source in report.reused_from:
        state = f"signed by {', '.join(source.signers)}" if source.verified else "[red]does not vouch for them[/]"
        how = "taken from the peer BOM" if source.peer else "reused from BOM"
        console.print(f"{'  ' * depth}{source.slices} slice(s) {how} {source.bom}: {state}")
    if report.signers:
        console.print(f"{'  ' * depth}signed by {', '.join(report.signers)}")
    if report.signature == "unsigned":
        console.print(f"{'  ' * depth}[dim]unsigned: no signature over this BOM is kept here[/]")
    elif report.signature == "invalid":  # each one is a signature-invalid row of the table below
        console.print(f"{'  ' * depth}[red]{len(report.bad_signatures)} signature(s) kept for this BOM do not hold[/]")
    if report.mode == "signature":
        console.print(f"{'  ' * depth}[yellow]not re-executed here[/] ({len(report.unchecked)} parts unreadable, "
                      f"e.g. {report.unchecked[0].detail}); accepted on a trusted signature")
    if report.problems:
        table = Table("reason", "slice", "CID", "detail", show_lines=False)
        for p in report.problems:
            # as plain text: a detail quotes what it found (an envelope's field, a path), which may hold "[...]"
            table.add_row(p.reason, "" if p.slice is None else str(p.slice), Text(p.cid or ""), Text(p.detail))
        console.print(table)
    for check in report.checks:
        verdict = "[green]passed[/]" if check["passed"] else "[red]FAILED[/]"
        console.print(f"{'  ' * depth}check {check['kind']} {verdict}: fetched {check['bytes_fetched']:,} of "
                      f"{check['total_bytes']:,} bytes, false accept <= {check['false_accept_probability']:.2g}")
    if report.drift:
        changed = ", ".join(f"{d.package} {d.recorded or '-'} -> {d.current or '-'}" for d in report.drift[:8])
        more = f" and {len(report.drift) - 8} more" if len(report.drift) > 8 else ""
        console.print(f"{'  ' * depth}[yellow]environment drift[/] (not a failure): {changed}{more}")
    for ancestor in report.ancestors:
        print_report(ancestor, depth + 1, out=console)
    for child in report.children:
        print_report(child, depth + 1, "part " if report.mode == "federation" else "sub-Order ", out=console)


def register(app: typer.Typer) -> None:
    app.command()(verify)
