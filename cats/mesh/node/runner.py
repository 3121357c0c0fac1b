"""One Order run by the Factory in a process of its own, for the node's worker thread.

    python -P -m cats.mesh.node.runner ORDER_CID STORE_DIR RESULT.json POLICY JOB   # in an empty folder of its own

The Order block (sealed, admitted by the node) is read from the on-disk store in STORE_DIR; the DAGs
it names that are not there yet are pulled from the trusted peers holding them (`fetch.gather`), and
it is run with `cats.factory.run` on the embedded local Ray, or on RAY_ADDRESS's, every slice confined under POLICY
(the JSON of a `cats.factory.confine.Policy`, the node's reach for the Order's inputs included; `null`:
unconfined, the operator's choice) as JOB, the node's job for it in CATS_HOME's job table (this process
drives it: `cats jobs cancel` signals it); its BOM is signed with CATS_HOME's identity, the node's.
RESULT.json gets `{"bom", "output"}`, or `{"error"}` when the run fails. SIGINT stops the run (and the
Ray it started).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def _write(path: Path, answer: dict[str, str]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(answer))
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    order_cid, store_dir, result, policy, job = argv
    from cats import factory
    from cats.cas.cid import CID
    from cats.cas.pins import Pins
    from cats.cas.store.local import LocalStore
    from cats.config import home
    from cats.errors import CatsError
    from cats.factory.confine import Policy
    from cats.identity import Identity
    from cats.identity.trust import Trust
    from cats.mesh.node.fetch import gather, sources
    from cats.mesh.node.orders import load_order

    given = json.loads(policy)
    confine = None if given is None else Policy.from_dict(given)
    try:
        store = LocalStore(store_dir)
        cid = CID.parse(order_cid)
        order = load_order(store, cid)
        me = Identity.load()
        gather(store, cid, order, sources(Trust().peers(), me.did), me)
        Pins(home() / "pins").add(store, cid)  # whole now, and kept from gc: it runs from these blocks
        run = factory.run(order, store=store, quiet=True, confine=confine, job=job)
    except CatsError as e:
        _write(Path(result), {"error": str(e)})
        return 1
    except KeyboardInterrupt:
        _write(Path(result), {"error": "interrupted"})
        return 130
    except Exception as e:  # reported to the submitter, with its type: not one of CATs' own errors
        _write(Path(result), {"error": f"{type(e).__name__}: {e}"})
        raise
    _write(Path(result), {"bom": str(run.bom), "output": str(run.output)})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
