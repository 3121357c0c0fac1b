"""The IPFS project's gateway conformance suite (github.com/ipfs/gateway-conformance) against `cats node start`.

The suite is a Go test binary (scripts/build-conformance builds it once per machine; CATS_TEST_CONFORMANCE
names it, its fixtures beside it). Every CAR fixture it ships is imported into the node's store, then
the suite runs its trustless-gateway specs against the node: raw blocks, CARs with dag-scope,
entity-bytes, paths, order and duplicates, and their headers and errors. Every test case of those
groups must pass, and each group must still hold the cases it held when this was written, so a case
that the suite stops running cannot pass unseen.

Left out: trustless-ipns-gateway, since a node serves no IPNS records (it names content by CID only),
nor the path, subdomain and DNSLink gateway specs (cats.mesh.node.gateway says why).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from nodes import RealNode, start_all

from cats.cas import car

ENV = "CATS_TEST_CONFORMANCE"
SPECS = "trustless-block-gateway,trustless-car-gateway,trustless-car-gateway-optional"
# test cases (the suite's second level: one request and its checks) passed per group, with suite v0.13.2
EXPECTED = {
    "TestTrustlessRaw": 5,
    "TestTrustlessRawRanges": 2,
    "TestTrustlessCarPathing": 8,
    "TestTrustlessCarDagScopeBlock": 6,
    "TestTrustlessCarDagScopeEntity": 10,
    "TestTrustlessCarDagScopeAll": 4,
    "TestTrustlessCarEntityBytes": 22,
    "TestTrustlessCarFormatPrecedence": 2,
    "TestTrustlessCarOrderAndDuplicates": 7,
}
# a group of the suite that belongs to another spec and only reports its cases skipped
NOT_TRUSTLESS = {"TestRedirectsFileWithIfNoneMatchHeader"}
_RESULT = re.compile(r"\s*--- (PASS|FAIL|SKIP): (\S+)")


@pytest.fixture(scope="module")
def suite() -> Path:
    binary = os.environ.get(ENV, "")
    if not binary:
        why = os.environ.get(f"{ENV}_ERROR", "")
        pytest.skip(f"the gateway conformance suite is not available: set {ENV} to its test binary "
                    f"(scripts/build-conformance builds it){f'; building it failed: {why}' if why else ''}")
    path = Path(binary)
    assert (path.parent / "fixtures").is_dir(), f"{ENV}={binary} has no fixtures/ beside it"
    return path


@pytest.fixture(scope="module")
def node(suite: Path, tmp_path_factory: pytest.TempPathFactory, ray_session: str) -> Iterator[RealNode]:
    node = RealNode(tmp_path_factory.mktemp("conformance"), ray_session)
    store = node.store
    cars = sorted((suite.parent / "fixtures").rglob("*.car"))
    assert len(cars) > 10, cars
    for fixture in cars:
        with open(fixture, "rb") as f:
            car.import_car(store, f)
    start_all(node)
    try:
        yield node
    finally:
        node.stop()


def test_trustless_gateway_specs_pass(suite: Path, node: RealNode, tmp_path: Path) -> None:
    proc = subprocess.run([str(suite), "-test.v", f"-specs={SPECS}", "-test.timeout=120s"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=180,
                          env={**os.environ, "GATEWAY_URL": node.url, "GATEWAY_CONFORMANCE_HOME": str(suite.parent)})
    results = {m.group(2): m.group(1) for m in map(_RESULT.match, proc.stdout.splitlines()) if m}
    failed = sorted(name for name, result in results.items() if result == "FAIL")
    assert not failed and proc.returncode == 0, (
        f"exit {proc.returncode}; failed:\n" + "\n".join(failed) + "\n" + proc.stdout[-4000:] + proc.stderr[-2000:])
    passed = Counter(name.split("/")[0] for name, result in results.items()
                     if result == "PASS" and name.count("/") == 1 and name.split("/")[0] not in NOT_TRUSTLESS)
    assert dict(passed) == EXPECTED
