"""The gate of a run: an Order with `check_on_run` has its checks run on the merged output before its
BOM is recorded, so an output its own validators reject is never recorded as the Order's result (no BOM
indexed, pinned or signed). The seeds are drawn here, after the output is fixed, so no slice could
have known which entries a sampled check reads."""

from __future__ import annotations

from cats.cas.cid import CID
from cats.cas.store import BlockStore
from cats.errors import CatsError, CheckFailed
from cats.order import Order
from cats.order.checks import CheckReport

_KEPT = ("nothing was recorded (no BOM indexed, pinned or signed); the finished slices are kept, "
         "so a re-run merges and checks again without executing them")


def check(order: Order, order_cid: CID, store: BlockStore, output: CID) -> list[CheckReport] | None:
    """Run every check of an Order that asks for it on `output`; their reports, or None if it does not ask.

    Raises CheckFailed naming the first check that failed, or could not run (a reference to nothing,
    an output that is not a .npy), and how many others did."""
    if not order.check_on_run:
        return None
    from cats.order import checking  # loads numpy: only for Orders that ask

    reports: list[CheckReport] = []
    failed: list[str] = []
    for i, spec in enumerate(order.checks):
        name = f"check {i + 1} of {len(order.checks)}, {spec.label()},"
        try:
            report = checking.run(store, spec, order.sources, output)
        except CatsError as e:
            failed.append(f"{name} could not run on output {output}: {' '.join(str(e).split())}")
            continue
        if not report.passed:
            failed.append(f"{name} failed on output {output}: {report.detail} (seed {report.seed})")
        reports.append(report)
    if failed:
        more = f" ({len(failed) - 1} more checks failed)" if len(failed) > 1 else ""
        raise CheckFailed(f"order {order_cid}: {failed[0]}{more}; {_KEPT}")
    return reports
