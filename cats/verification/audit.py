"""`verify`: check a BOM from the store alone, by re-executing its slices or by integrity only.

Re-execution loads the code, inputs and seeds the BOM records and runs the function again on Ray,
computing output CIDs without writing them; each slice's CID must equal the recorded one, and the
merge of the recorded outputs must give the recorded output. Every block read on the way is
checked against its CID, and each kind of failure gets its own reason.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from cats import data
from cats.bom import BOM, SliceRecord, record_block, records
from cats.bom.home import Home
from cats.bom.ref import load_ref
from cats.bom.signatures import Signatures
from cats.cas import dag, dagcbor
from cats.cas.cid import CID
from cats.cas.store import BlockStore
from cats.data import Info
from cats.data.views import View
from cats.errors import BlockNotFound, CatsError, DataError, DataIntegrityError, DecodeError, IntegrityError
from cats.factory import SliceOutcome, egress, ingress, reexecute
from cats.factory.confine import Policy
from cats.order import Order, label
from cats.verification import drift, sampling
from cats.verification.report import Problem, Reason, Report, Sample, SliceResult, SourceBOM


class _Stop(Exception):
    """Verification cannot go on (the BOM or its Order is unreadable); the report says why."""


Fetch = Callable[[CID], "str | None"]


def verify(store: BlockStore, bom_cid: CID, *, sample: int | None = None, fraction: float | None = None,
           seed: int | None = None, recursive: bool = False, integrity: bool = False,
           quiet: bool = True, trusted: Collection[str] = (), fetch: Fetch | None = None,
           home: Home | None = None) -> Report:
    """Verify a BOM (and with `recursive` its ancestors and its sub-Orders' BOMs), with the signatures
    kept in `home` (default `CATS_HOME`), which also lays out a user split's code. A linked BOM
    missing here is asked of `fetch(cid)` (e.g. a pull from the peers' nodes; it returns an error text
    or None); one whose code or data cannot be read here is accepted on a signature by one of the
    `trusted` DIDs, and its report says so (mode "signature"). Every signature kept for a BOM is
    checked in every mode: one that does not hold fails it (signature-invalid). With `integrity`, the
    source BOM of each reused slice must bear a signature by one of the `trusted` DIDs."""
    with Home.given(home, store) as here:
        return _verify(store, bom_cid, sample, fraction, seed, recursive, integrity, quiet, trusted, fetch, here)


def _verify(store: BlockStore, bom_cid: CID, sample: int | None, fraction: float | None, seed: int | None,
            recursive: bool, integrity: bool, quiet: bool, trusted: Collection[str], fetch: Fetch | None,
            home: Home) -> Report:
    report = Report(bom=str(bom_cid), verified=False, mode="integrity" if integrity else "reexecute")
    _check_signatures(bom_cid, report, trusted, home.signatures)
    try:
        bom, order = _load(store, bom_cid, report)
        report.name = bom.name
        if bom.invoice.federation is not None:
            report.mode = "federation"
            _federation(store, bom, order, report, trusted, home.signatures)
        elif integrity:
            _integrity(store, bom, report, trusted, home.signatures)
        else:
            _reexecute(store, bom, order, report, sample, fraction, seed, quiet, home)
        if order.checks:
            _run_checks(store, bom, order, report, seed)
        lock = bom.structure.lock  # drift is never a failure; a recorded lock gone or altered is one
        if lock and _check_dag(store, lock, report, "bom-altered", "environment lock"):
            report.drift = drift.compare(store, lock)
        if recursive:  # the BOMs that made its inputs, and those of the sub-Orders its slices submitted
            for linked, reports in ((bom.parents, report.ancestors), (bom.children, report.children)):
                for cid in linked:
                    fetched = fetch(cid) if fetch is not None and not store.has(cid) else None
                    linked_report = _verify(store, cid, sample, fraction, seed, True, integrity, quiet, trusted, fetch,
                                            home)
                    if fetched and not store.has(cid):
                        linked_report.problems[0].detail += f"; fetching it failed: {fetched}"
                    reports.append(_on_signature(store, cid, linked_report, trusted))
    except _Stop:
        pass
    report.verified = not report.problems and all(r.verified for r in (*report.ancestors, *report.children))
    return report


def _on_signature(store: BlockStore, cid: CID, report: Report, trusted: Collection[str]) -> Report:
    """A BOM that is here and intact, but whose code or data are not (only block-missing problems),
    stands on a trusted signature if it has one: the report keeps what could not be checked."""
    vouching = [d for d in report.signers if d in trusted]
    unreachable = report.problems and all(p.reason == "block-missing" for p in report.problems)
    if report.verified or not vouching or not unreachable or not store.has(cid):
        return report
    accepted = report.model_copy(update={"mode": "signature", "unchecked": report.problems, "problems": [],
                                         "slices": []})
    accepted.verified = all(r.verified for r in (*accepted.ancestors, *accepted.children))
    return accepted


def _federation(store: BlockStore, bom: BOM, order: Order, report: Report, trusted: Collection[str],
                signatures: Signatures) -> None:
    """A federated BOM ran nothing itself: its parts are the Order over disjoint shares of its inputs,
    together all of them, each in a BOM signed by the node the invoice names, and their output folders
    join (`egress.union`, from folder blocks) into its output. The parts' runs are verified as its
    children (--recursive)."""
    federation = bom.invoice.federation
    assert federation is not None
    if bom.slices or sorted(c.bom for c in federation.parts) != sorted(bom.children):
        _problem(report, "bom-altered", "a federated BOM records no slices of its own and links exactly its "
                 "parts' BOMs as children", bom.order)
        return
    covered: list[str] = []
    outputs = []
    for part in federation.parts:
        try:
            child = BOM.model_validate(dagcbor.decode(store.get(part.bom)))
            sub = Order.model_validate(dagcbor.decode(store.get(child.order)))
        except BlockNotFound as e:
            _problem(report, "block-missing", f"part {part.bom}: block {e.cid} is not in the store", e.cid)
            continue
        except (IntegrityError, DecodeError, ValueError) as e:
            _problem(report, "bom-altered", f"part {part.bom} is not intact: {str(e).splitlines()[0]}", part.bom)
            continue
        report.blocks_checked += 2
        if child.order != part.order or sub.model_copy(update={"inputs": order.inputs}) != order:
            _problem(report, "bom-altered", f"part {part.bom} ran Order {child.order}, which is not this Order over "
                     "some of its inputs", child.order)
        valid, _ = signatures.check(part.bom, trusted)
        if part.executor.did not in valid or part.executor.did not in trusted:
            _problem(report, "source-unsigned", f"part {part.bom} bears no signature by {part.executor.did}, the "
                     "node its record names, trusted here", part.bom)
        covered += [label(i) for i in sub.sources]
        outputs.append(child.outputs[0])
    if sorted(covered) != sorted(label(i) for i in order.sources):
        _problem(report, "bom-altered", "the parts' inputs are not the Order's inputs, each once", bom.order)
    if report.problems:
        return
    try:
        merged = egress.union(store, outputs, write=False)
    except BlockNotFound as e:
        _problem(report, "block-missing", f"merging the parts' output folders: {e}", e.cid)
        return
    except (IntegrityError, DecodeError) as e:
        _problem(report, "output-differs", f"merging the parts' output folders: {e}", getattr(e, "cid", None))
        return
    except CatsError as e:
        _problem(report, "output-differs", f"merging the parts' output folders: {e}", bom.outputs[0])
        return
    if [merged] != bom.outputs:
        _problem(report, "output-differs", f"the parts' output folders merge to {merged}, the BOM says "
                 f"{bom.outputs[0]}", bom.outputs[0])


def _check_signatures(bom_cid: CID, report: Report, known: Collection[str], signatures: Signatures) -> None:
    """Every signature kept for the BOM must hold: one that does not fails the verdict, naming its
    claimed signer and why. No signature at all is not a failure (the report says "unsigned")."""
    report.signers, report.bad_signatures = signatures.check(bom_cid, known)
    for bad in report.bad_signatures:
        _problem(report, "signature-invalid", f"{bad.signer}: {bad.reason}" if bad.signer else bad.reason, bom_cid)


def _problem(report: Report, reason: Reason, detail: str, cid: object = None, slice: int | None = None) -> None:
    report.problems.append(Problem(reason=reason, detail=detail, cid=str(cid) if cid else None, slice=slice))


def _load(store: BlockStore, bom_cid: CID, report: Report) -> tuple[BOM, Order]:
    try:
        bom = BOM.model_validate(dagcbor.decode(store.get(bom_cid)))
    except BlockNotFound:
        _problem(report, "block-missing", "the BOM is not in the store", bom_cid)
        raise _Stop from None
    except (IntegrityError, DecodeError, ValueError) as e:
        _problem(report, "bom-altered", f"the BOM block is not a valid BOM: {str(e).splitlines()[0]}", bom_cid)
        raise _Stop from None
    try:
        order = Order.model_validate(dagcbor.decode(store.get(bom.order)))
    except BlockNotFound:
        _problem(report, "block-missing", "the BOM's Order is not in the store", bom.order)
        raise _Stop from None
    except (IntegrityError, DecodeError, ValueError) as e:
        _problem(report, "bom-altered", f"the Order block is not a valid Order: {str(e).splitlines()[0]}", bom.order)
        raise _Stop from None
    contradictions = [what for what, same in (
        ("code", bom.code == order.function.code), ("inputs", bom.inputs == order.inputs),
        ("structure", bom.structure == order.structure)) if not same]
    if contradictions:
        _problem(report, "bom-altered", f"the BOM's {', '.join(contradictions)} contradict its Order", bom.order)
        raise _Stop
    return bom, order


def _records(store: BlockStore, bom: BOM, report: Report) -> list[SliceRecord]:
    try:
        return list(records(store, bom))
    except BlockNotFound as e:
        _problem(report, "block-missing", f"slice records: {e}", e.cid)
    except (IntegrityError, DecodeError, ValueError) as e:
        _problem(report, "bom-altered", f"slice records: {str(e).splitlines()[0]}", getattr(e, "cid", None))
    raise _Stop


def _check_dag(store: BlockStore, root: CID, report: Report, reason: Reason, what: str,
               slice: int | None = None, seen: set[CID] | None = None) -> bool:
    try:
        report.blocks_checked += sum(1 for _ in dag.walk(store, root, read_leaves=True, seen=seen))
        return True
    except BlockNotFound as e:
        _problem(report, "block-missing", f"{what}: {e}", e.cid, slice)
    except (IntegrityError, DecodeError) as e:
        _problem(report, reason, f"{what}: {e}", getattr(e, "cid", None) or root, slice)
    return False


def _integrity(store: BlockStore, bom: BOM, report: Report, trusted: Collection[str], signatures: Signatures) -> None:
    """No re-execution: every block the BOM reaches exists and hashes to its CID, and each reused
    slice's source BOM vouches for it. Each block is checked once, under the part of the lineage it
    belongs to: the slice records link inputs and outputs, so an altered input block reads as
    input-altered, not as altered records."""
    report.blocks_checked += 2
    seen: set[CID] = set()
    _check_dag(store, bom.code, report, "code-altered", "code", seen=seen)
    if bom.structure.iac:
        _check_dag(store, bom.structure.iac, report, "code-altered", "IaC", seen=seen)
    for item in bom.inputs:
        if isinstance(item, (Info, View)):
            _check_source(item if isinstance(item, Info) else item.info, report, "input-altered", f"input {item.uri}")
        else:
            _check_dag(store, item, report, "input-altered", f"input {item}", seen=seen)
    for cid in bom.outputs:
        _check_dag(store, cid, report, "output-differs", f"output {cid} (stored output altered)", seen=seen)
    recs = _records(store, bom, report)  # reads and hashes the record blocks themselves
    report.blocks_checked += len(bom.slices)
    for rec in recs:  # what the records link that the DAGs above did not reach (e.g. concat parts)
        if rec.input.cid is not None:
            _check_dag(store, rec.input.cid, report, "input-altered", f"input of slice {rec.index}", rec.index, seen)
        if _check_dag(store, rec.output, report, "output-differs", f"stored output of slice {rec.index}",
                      rec.index, seen) and rec.encoding == "ref":
            ref = load_ref(store, rec.output)
            _check_source(Info(ref.uri, ref.size, ref.version), report, "output-differs",
                          f"output of slice {rec.index} at {ref.uri}", rec.index)
    _check_reused(store, recs, report, trusted, signatures)


def _check_reused(store: BlockStore, recs: list[SliceRecord], report: Report, trusted: Collection[str],
                   signatures: Signatures) -> None:
    """A slice taken instead of executed stands on the run that computed it. The BOM its record names
    (`reused_from`, or `vouched` for a trusted peer's) must be here and hash, bear a signature by one of
    the `trusted` DIDs (this node, its trusted peers; for a peer's BOM, by the signer the record names),
    and hold a record of its own execution giving the same output. Each slice whose source fails gets
    one problem naming the slice and the source BOM."""
    taken: dict[tuple[CID, bool], list[SliceRecord]] = {}
    for rec in recs:
        if rec.reused_from is not None:
            taken.setdefault((rec.reused_from, False), []).append(rec)
        elif rec.vouched is not None:
            taken.setdefault((CID.parse(rec.vouched.bom), True), []).append(rec)
    for (source, peer), reused in taken.items():
        source_check = _vouching(store, source, report, trusted, signatures, peer)
        failed = 0
        for rec in reused:
            wrong = source_check.fault or source_check.against(rec)
            if wrong is not None:
                failed += 1
                how = "taken from the peer BOM" if peer else "reused from BOM"
                _problem(report, wrong[0], f"slice {rec.index} {how} {source}: {wrong[1]}", source, rec.index)
        report.reused_from.append(SourceBOM(bom=str(source), slices=len(reused), signers=source_check.signers,
                                            verified=not failed, peer=peer))


@dataclass
class _Source:
    """What a source BOM vouches for: the (output, encoding) of the slices it executed, the DIDs whose
    signatures on it hold (`valid`) and those of them trusted here (`signers`), and what is wrong with
    it as a whole (reason, detail), if anything."""

    computed: set[tuple[CID, str]] = field(default_factory=set)
    valid: list[str] = field(default_factory=list)
    signers: list[str] = field(default_factory=list)
    fault: tuple[Reason, str] | None = None
    partial: bool = False  # only some of its record blocks are here (a peer's: those that proved what was taken)

    def against(self, rec: SliceRecord) -> tuple[Reason, str] | None:
        """What is wrong with `rec` standing on this source: a peer's slice names the DID that vouched for
        it, whose signature must hold and be trusted here; and the source must have computed its output."""
        if rec.vouched is not None and rec.vouched.signer not in self.signers:
            signer = rec.vouched.signer
            if signer in self.valid:
                return "source-unsigned", f"its signer {signer} is neither this node nor a trusted peer"
            return "source-unsigned", f"no signature by {signer}, the signer its record names, is kept for it"
        if (rec.output, rec.encoding) in self.computed:
            return None
        return "bom-altered", (f"it never computed output {rec.output} ({rec.encoding})"
                               f"{' in the record blocks of it kept here' if self.partial else ''}")


def _vouching(store: BlockStore, source: CID, report: Report, trusted: Collection[str], signatures: Signatures,
              peer: bool) -> _Source:
    """A source BOM as `_Source` sees it. A peer's BOM is here with only the record blocks that proved
    what was taken from it: those that are here are read, and there must be one."""
    try:
        bom = BOM.model_validate(dagcbor.decode(store.get(source)))
        kept = [cid for cid in bom.slices if store.has(cid)] if peer else bom.slices
        recs = [r for cid in kept for r in record_block(store, cid)]
    except BlockNotFound as e:
        what = "the source BOM" if e.cid == source else f"its slice records: block {e.cid}"
        return _Source(fault=("block-missing", f"{what} is not in the store"))
    except (IntegrityError, DecodeError, ValueError) as e:
        return _Source(fault=("bom-altered", f"the source BOM is not intact: {str(e).splitlines()[0]}"))
    report.blocks_checked += 1 + len(kept)
    valid, bad = signatures.check(source, trusted)
    found = _Source(valid=valid, signers=[did for did in valid if did in trusted], partial=len(kept) < len(bom.slices))
    if bad:
        first = bad[0]
        found.fault = ("signature-invalid", f"a signature kept for it does not hold: "
                       f"{f'{first.signer}: ' if first.signer else ''}{first.reason}")
    elif not found.signers:
        others = f" (only by {', '.join(valid)})" if valid else ""
        found.fault = ("source-unsigned", f"it is signed by neither this node nor a trusted peer{others}")
    elif not kept:
        found.fault = ("block-missing", f"none of its {len(bom.slices)} record blocks is in the store")
    else:
        found.computed = {(r.output, r.encoding) for r in recs if r.executed}
    return found


def _check_source(pinned: Info, report: Report, reason: Reason, what: str, slice: int | None = None) -> bool:
    """A URI the BOM pins must still be at its recorded version (asking costs one stat, no data)."""
    try:
        now = data.stat(pinned.uri)
    except DataError as e:
        _problem(report, "block-missing", f"{what}: {e}", pinned.uri, slice)
        return False
    if now.version != pinned.version:
        _problem(report, reason, f"{what} changed: version {pinned.version} recorded, {now.version} now",
                 pinned.uri, slice)
        return False
    return True


def _reexecute(store: BlockStore, bom: BOM, order: Order, report: Report, sample: int | None,
               fraction: float | None, seed: int | None, quiet: bool, home: Home) -> None:
    recs = _records(store, bom, report)
    chosen, used_seed = sampling.choose(len(recs), sample, fraction, seed)
    if sample is not None or fraction is not None:
        report.sample = Sample(total=len(recs), checked=len(chosen), seed=used_seed,
                               detection=sampling.detection_table(len(recs), len(chosen)))
    if not _check_dag(store, bom.code, report, "code-altered", "code"):
        for i in chosen:
            report.slices.append(SliceResult(index=i, name=recs[i].input.name, recorded=str(recs[i].output),
                                             ok=False, reason="code-altered"))
        return
    if store.url is None:
        raise CatsError("re-execution needs a store its Ray workers can open too (file://…, an IPFS daemon)")
    if not _check_split(store, order, recs, report, home):
        return
    # code that ran confined is re-executed confined (the Order's Plant may not say so: a node confines peers' code)
    confine = Policy() if bom.invoice.confined else None
    outcomes = reexecute(order, store, [recs[i] for i in chosen], home=home, quiet=quiet, confine=confine)
    for i in chosen:
        rec = recs[i]
        out = outcomes[i]
        result = SliceResult(index=i, name=rec.input.name, recorded=str(rec.output), ok=False)
        if out.error is not None:
            if out.kind in ("missing", "data"):
                result.reason = "block-missing"
            elif out.kind == "integrity":
                result.reason = "input-altered"
            else:
                result.reason = "reexecution-failed"
            last = (out.error.strip().splitlines() or ["failed"])[-1]
            _problem(report, result.reason, f"slice {i}: {last}", out.cid or out.uri, i)
        else:
            # a result written to a URI is recorded as a reference block; its content CID is what re-executes
            recorded = load_ref(store, rec.output).content if rec.encoding == "ref" else str(rec.output)
            result.recomputed = str(out.content or out.output)
            if result.recomputed != recorded:
                result.reason = "output-differs"
                _problem(report, "output-differs", f"slice {i} re-executed to {result.recomputed}, the BOM says "
                         f"{recorded} (non-deterministic code or a forged record)", rec.output, i)
            elif _check_dag(store, rec.output, report, "output-differs", f"stored output of slice {i}", i):
                result.ok = _check_children(rec, out, report, result)
            else:
                result.reason = report.problems[-1].reason
        report.slices.append(result)
    _check_merge(store, bom, order, recs, report, home)


def _check_children(rec: SliceRecord, out: SliceOutcome, report: Report, result: SliceResult) -> bool:
    """The sub-Orders the re-executed slice submitted must be those its record attributes to it."""
    recorded = [str(c.order) for c in rec.children or ()]
    submitted = out.submitted or []
    if submitted == recorded:
        return True
    result.reason = "child-differs"
    _problem(report, "child-differs", f"slice {rec.index} re-executed submitting child Orders {submitted or 'none'}, "
             f"its record says {recorded or 'none'}", min(set(submitted) ^ set(recorded), default=None), rec.index)
    return False


def _run_checks(store: BlockStore, bom: BOM, order: Order, report: Report, seed: int | None) -> None:
    """The Order's cheap validators on the recorded output; each reports bytes fetched and its odds."""
    from cats.order import checking

    try:
        results = checking.run_order(store, order.checks, bom.inputs, bom.outputs[0], seed)
    except BlockNotFound as e:
        _problem(report, "block-missing", f"checks: {e}", e.cid)
        return
    except (IntegrityError, CatsError) as e:
        _problem(report, "check-failed", f"checks could not run: {e}", getattr(e, "cid", None))
        return
    for result in results:
        report.checks.append(result.model_dump(mode="json"))
        if not result.passed:
            _problem(report, "check-failed", f"{result.kind}: {result.detail}", bom.outputs[0])


def _check_split(store: BlockStore, order: Order, recs: list[SliceRecord], report: Report, home: Home) -> bool:
    """Splitting the recorded inputs again must give the recorded slices: this reads every input's
    folder blocks (an altered listing shows here) and ties each record to the inputs it claims."""
    try:
        pieces = ingress.split(order, store)
    except BlockNotFound as e:
        _problem(report, "block-missing", f"splitting the inputs: {e}", e.cid)
        return False
    except (IntegrityError, DecodeError) as e:
        _problem(report, "input-altered", f"splitting the inputs: {e}", getattr(e, "cid", None))
        return False
    except DataIntegrityError as e:
        _problem(report, "input-altered", f"splitting the inputs: {e}", e.uri)
        return False
    except DataError as e:
        _problem(report, "block-missing", f"splitting the inputs: {e}", e.uri)
        return False
    if [(p, a) for p, a in pieces] != [(r.input, r.assembly) for r in recs]:
        _problem(report, "bom-altered", f"the slice records do not match the split of the inputs "
                 f"({len(recs)} records, {len(pieces)} slices)", label(order.sources[0]))
        return False
    return True


def _check_merge(store: BlockStore, bom: BOM, order: Order, recs: list[SliceRecord], report: Report,
                 home: Home) -> None:
    """The merge of the recorded slice outputs must give the recorded output."""
    how = order.infra.merge if isinstance(order.infra.merge, str) else order.infra.merge.model_dump()
    if order.output_uri:
        how = "list"
    parts = [{"index": r.index, "output": r.output, "encoding": r.encoding, "size": r.size, "tsize": r.tsize,
              "name": r.input.name, "assembly": r.assembly} for r in recs]  # CIDs as objects: no re-parsing
    assert store.url is not None  # re-execution checked it
    try:
        merged = egress.merge(store.url, how, parts, write=False)
    except BlockNotFound as e:
        _problem(report, "block-missing", f"merging the recorded outputs: {e}", e.cid)
        return
    except IntegrityError as e:
        _problem(report, "output-differs", f"merging the recorded outputs: {e}", e.cid)
        return
    if [merged["output"]] != [str(o) for o in bom.outputs]:
        _problem(report, "output-differs", f"the recorded slice outputs merge to {merged['output']}, "
                 f"the BOM says {bom.outputs[0]}", bom.outputs[0])
