"""The Plant as code: the `terraform/` module, the Ray cluster-launcher YAML, and what CATs reads of them.

Terraform cannot fetch its providers here, so `terraform validate` cannot run: every `.tf` is parsed
with python-hcl2 instead (a syntax error fails), and the checks Terraform would make that matter to
CATs are made on the parsed module: the outputs the Plant reads exist, every variable is declared
and used, every resource and local referenced is defined, the providers are pinned. A run against a
real deployment is not possible here either; `cats run --deployment` is run against this session's
Ray and a real IPFS daemon standing in for the deployed ones.
"""

from __future__ import annotations

import json
import re
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hcl2
import jsonschema
import pytest
import yaml

from cats.bom import load as load_bom
from cats.cas import dagcbor
from cats.cas.cid import CID
from cats.cas.importer import Importer
from cats.cas.store.ipfs import IPFSStore
from cats.cas.store.memory import MemoryStore
from cats.errors import CatsError
from cats.order import Function, Order, Structure
from cats.order.seal import seal
from cats.plant import Plant
from cats.plant.deployment import OUTPUTS, Deployment

TERRAFORM = Path(__file__).resolve().parent.parent / "terraform"
TF_FILES = sorted(TERRAFORM.rglob("*.tf"))
LAUNCHER = TERRAFORM / "ray-cluster.yaml"
_OPTIONS = hcl2.SerializationOptions(strip_string_quotes=True, with_comments=False, explicit_blocks=False)


def _parse(path: Path) -> dict[str, Any]:
    with path.open() as f:
        return hcl2.load(f, serialization_options=_OPTIONS)


@pytest.fixture(scope="module")
def module() -> dict[str, list[Any]]:
    """Every top-level block of the module, all files together: {"variable": [...], "output": [...], ...}."""
    blocks: dict[str, list[Any]] = {}
    for path in TF_FILES:
        for kind, entries in _parse(path).items():
            blocks.setdefault(kind, []).extend(entries)
    return blocks


def _named(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    """Labelled blocks (`variable "x" {...}`) by label."""
    return {name: body for block in blocks for name, body in block.items()}


def _resources(module: dict[str, list[Any]]) -> dict[str, Any]:
    """Resource blocks by address ("helm_release.ray_cluster")."""
    return {f"{kind}.{name}": body for block in module["resource"] for kind, named in block.items()
            for name, body in named.items()}


def _expressions(node: Any) -> Iterator[str]:
    """Every string of a parsed block that holds an expression (`${...}`)."""
    if isinstance(node, str):
        if "${" in node:
            yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _expressions(value)
    elif isinstance(node, list):
        for value in node:
            yield from _expressions(value)


def _refs(pattern: str, nodes: list[Any]) -> set[str]:
    return {m.group(1) for node in nodes for text in _expressions(node) for m in re.finditer(pattern, text)}


def test_the_module_has_its_files() -> None:
    assert {p.name for p in TF_FILES} >= {"versions.tf", "variables.tf", "main.tf", "outputs.tf"}


@pytest.mark.parametrize("path", TF_FILES, ids=lambda p: str(p.relative_to(TERRAFORM)))
def test_every_tf_file_parses(path: Path) -> None:
    assert _parse(path), f"{path.name} is empty"


def test_hcl_syntax_errors_are_caught(tmp_path: Path) -> None:
    """The parse above is a real check: an unclosed block fails it."""
    broken = tmp_path / "broken.tf"
    broken.write_text('variable "workers" {\n  default = 2\n')
    with pytest.raises(Exception):  # noqa: B017 - lark's error classes are the parser's business
        _parse(broken)


def test_providers_are_pinned(module: dict[str, list[Any]]) -> None:
    (settings,) = module["terraform"]
    assert settings.get("required_version", "").startswith(">=")
    providers = {name: spec for block in settings["required_providers"] for name, spec in block.items()}
    for name in ("helm", "kubernetes"):
        assert providers[name]["source"] == f"hashicorp/{name}"
        assert re.fullmatch(r"(~>|>=|=)\s*\d+\.\d+(\.\d+)?(,\s*<\s*\d+(\.\d+)*)?", providers[name]["version"]), \
            providers[name]["version"]


def test_the_plant_reads_outputs_the_module_has(module: dict[str, list[Any]]) -> None:
    outputs = _named(module["output"])
    missing = set(OUTPUTS) - set(outputs)
    assert not missing, f"outputs.tf lacks {missing}, which cats.plant.deployment reads"
    for name, body in outputs.items():
        assert body.get("description"), f"output {name} has no description"
    # the Ray Client port of the KubeRay head Service; kubo's RPC API port
    assert re.fullmatch(r"ray://\$\{local\.head_host\}:10001", outputs["ray_address"]["value"])
    assert outputs["ipfs_api"]["value"] == "${local.ipfs_api}"
    locals_ = {k: v for block in module["locals"] for k, v in block.items()}
    assert locals_["head_host"].startswith("${helm_release.ray_cluster.name}-head-svc.")
    assert locals_["ipfs_api"].startswith("http://") and locals_["ipfs_api"].endswith(":${local.kubo_ports.api}")
    assert locals_["kubo_ports"] == {"swarm": 4001, "api": 5001, "gateway": 8080}


def test_every_variable_is_declared_typed_and_used(module: dict[str, list[Any]]) -> None:
    declared = _named(module["variable"])
    # a variable's own validation refers to it: that is no use
    elsewhere = [block for kind, blocks in module.items() if kind != "variable" for block in blocks]
    used = _refs(r"\bvar\.([A-Za-z_][A-Za-z0-9_-]*)", elsewhere)
    assert used - set(declared) == set(), "referenced but not declared"
    assert set(declared) - used == set(), "declared but never used"
    for name, body in declared.items():
        assert body.get("type") and body.get("description"), f"variable {name} needs a type and a description"
    for name in ("namespace", "ray_image", "head_cpu", "head_memory", "worker_cpu", "worker_memory",
                 "worker_replicas", "worker_min_replicas", "worker_max_replicas", "kuberay_version",
                 "kubo_image", "kubo_storage_size", "store_name"):
        assert name in declared, f"variable {name} is missing"


def test_every_resource_and_local_referenced_is_defined(module: dict[str, list[Any]]) -> None:
    """What `terraform validate` would catch first: a reference to a resource or local that is not there."""
    everything = [block for blocks in module.values() for block in blocks]
    resources = set(_resources(module))
    referenced = _refs(r"\b((?:helm|kubernetes)_[a-z0-9_]+\.[a-z_][a-z0-9_]*)", everything)
    assert referenced - resources == set()
    locals_ = {name for block in module["locals"] for name in block}
    assert _refs(r"\blocal\.([a-z_][a-z0-9_]*)", everything) - locals_ == set()
    assert {"kubernetes_namespace_v1.cats", "helm_release.kuberay_operator", "helm_release.ray_cluster",
            "kubernetes_stateful_set_v1.kubo", "kubernetes_service_v1.kubo"} <= resources


def test_ray_pods_use_the_kubo_store(module: dict[str, list[Any]]) -> None:
    resources = _resources(module)
    operator, cluster = resources["helm_release.kuberay_operator"], resources["helm_release.ray_cluster"]
    for release, chart in ((operator, "kuberay-operator"), (cluster, "ray-cluster")):
        assert release["chart"] == chart and release["version"] == "${var.kuberay_version}"
    locals_ = {k: v for block in module["locals"] for k, v in block.items()}
    assert locals_["kuberay_charts"] == "https://ray-project.github.io/kuberay-helm/"
    assert locals_["cats_env"] == [{"name": "CATS_IPFS_API", "value": "${local.ipfs_api}"}]
    assert "cats-store:${var.store_name}" in locals_["store_resources"]
    (values,) = cluster["values"]
    for needed in ("common = {containerEnv = local.cats_env}", "rayStartParams = {resources = local.store_resources}",
                   "fullnameOverride = var.cluster_name"):
        assert needed in values, needed
    kubo = resources["kubernetes_stateful_set_v1.kubo"]["spec"][0]
    (claim,) = kubo["volume_claim_template"]
    assert claim["spec"][0]["resources"][0]["requests"] == {"storage": "${var.kubo_storage_size}"}


def test_launcher_yaml_follows_rays_schema() -> None:
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__path__[0]) / "ray-schema.json").read_text())
    config = yaml.safe_load(LAUNCHER.read_text())
    jsonschema.validate(config, schema)
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert all(t.get("max_workers", 0) <= config["max_workers"] for t in types.values())
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        commands = "\n".join(config[key])
        assert "ipfs daemon" in commands
        start = next(c for c in config[key] if "ray start" in c)
        assert "CATS_IPFS_API=http://127.0.0.1:5001" in start and '\\"cats-store:$(hostname)\\": 1000' in start
    assert any("pip install" in c and "cats" in c for c in config["setup_commands"])


def test_launcher_schema_check_is_real() -> None:
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__path__[0]) / "ray-schema.json").read_text())
    config = yaml.safe_load(LAUNCHER.read_text())
    config["available_node_types"]["ray.worker.default"]["resources"] = {"cats-store:x": 0.5}
    with pytest.raises(jsonschema.ValidationError):  # the launcher wants whole resource amounts
        jsonschema.validate(config, schema)


# -- what the Plant reads ----------------------------------------------------------------------------
RAY = "ray://cats-head-svc.cats.svc.cluster.local:10001"
IPFS = "http://kubo.cats.svc.cluster.local:5001"


def _outputs(**changes: Any) -> dict[str, Any]:
    """`terraform output -json` of the module at its defaults (changes: value, or None to drop)."""
    values = {"ray_address": RAY, "ray_dashboard": "http://cats-head-svc.cats.svc.cluster.local:8265",
              "ipfs_api": IPFS, "ipfs_gateway": "http://kubo.cats.svc.cluster.local:8080",
              "namespace": "cats", "store_resource": "cats-store:kubo", **changes}
    return {name: {"sensitive": False, "type": "string", "value": value}
            for name, value in sorted(values.items()) if value is not None}


def test_the_realistic_outputs_are_the_modules(module: dict[str, list[Any]]) -> None:
    assert set(_outputs()) == set(_named(module["output"]))


def test_deployment_from_outputs(tmp_path: Path) -> None:
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(_outputs(), indent=2))
    for source in (path, str(path), _outputs()):
        deployment = Deployment.from_outputs(source)
        assert deployment == Deployment(ray_address=RAY, ipfs_api=IPFS)
    plant = Plant(num_cpus=2, replicas=3, resources={"memory": 1e9})
    deployed = deployment.plant(plant)
    assert deployed.address == RAY
    assert deployed.model_dump(exclude={"address"}) == plant.model_dump(exclude={"address"})
    assert deployment.environment() == {"CATS_IPFS_API": IPFS}


@pytest.mark.parametrize(("outputs", "culprits"), [
    ({}, ["no output 'ray_address'", "outputs found: none"]),
    (_outputs(ipfs_api=None), ["no output 'ipfs_api'", "namespace, ray_address"]),
    (_outputs(ray_address=6379), ["output 'ray_address'", "non-empty string", "6379"]),
    (_outputs(ipfs_api="  "), ["output 'ipfs_api'", "non-empty string"]),
    ({**_outputs(), "ray_address": RAY}, ["output 'ray_address'", "non-empty string"]),  # not {"value": ...}
    (_outputs(ipfs_api="ftp://kubo:5001"), ["output 'ipfs_api'", "ftp://kubo:5001"]),
    ([RAY, IPFS], ["JSON object of outputs"]),
])
def test_deployment_errors_name_the_output(tmp_path: Path, outputs: Any, culprits: list[str]) -> None:
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(outputs))
    for source in [path] + ([outputs] if isinstance(outputs, dict) else []):
        with pytest.raises(CatsError) as err:
            Deployment.from_outputs(source)
        for text in culprits:
            assert text in str(err.value), (text, str(err.value))


def test_deployment_file_errors(tmp_path: Path) -> None:
    with pytest.raises(CatsError, match=r"absent\.json: no such file"):
        Deployment.from_outputs(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("ray_address = ray://x\n")  # `terraform output` without -json
    with pytest.raises(CatsError, match=r"bad\.json: not JSON"):
        Deployment.from_outputs(bad)


# -- the IaC folder in the lineage ---------------------------------------------------------------------
def _sealed_iac(tmp_path: Path, iac: Path) -> CID:
    source = tmp_path / "fx_iac_job.py"
    source.write_text("def same(data):\n    return data\n")
    order = Order(function=Function(entry="fx_iac_job:same", source=source), inputs=[CID.hash(b"x", 0x55)],
                  structure=Structure(iac_path=iac))
    sealed = seal(order, MemoryStore())
    assert sealed.structure.iac_path is None and sealed.structure.iac is not None
    return sealed.structure.iac


def _folder_cid(path: Path) -> CID:
    with Importer(MemoryStore(), cid_version=1, hidden=True) as importer:
        *_, top = importer.add_path(path)
    return top.cid


def test_the_terraform_folder_is_the_structures_iac(cats_home: Path, tmp_path: Path) -> None:
    """Sealing an Order with Structure(iac_path=terraform/) puts that folder's CID in its Structure,
    so a changed deployment (here: a variable's default) is a different Order, hence a new BOM."""
    assert _sealed_iac(tmp_path, TERRAFORM) == _folder_cid(TERRAFORM)

    copy = tmp_path / "terraform"
    shutil.copytree(TERRAFORM, copy)
    original = _sealed_iac(tmp_path, copy)
    assert original == _folder_cid(TERRAFORM)  # content-addressed: where the folder lies is no part of it
    variables = copy / "variables.tf"
    text = variables.read_text()
    more = re.sub(r'(variable "worker_replicas" \{[^}]*default\s*=\s*)2', r"\g<1>3", text)
    assert more != text
    variables.write_text(more)
    assert _parse(variables)  # still a valid module
    changed = _sealed_iac(tmp_path, copy)
    assert changed != original
    variables.write_text(text)
    assert _sealed_iac(tmp_path, copy) == original


def test_state_plans_and_provider_downloads_stay_out_of_the_iac(cats_home: Path, tmp_path: Path) -> None:
    """The lock file pins the providers, so it is part of the deployment; state holds secrets, and
    .terraform/ holds provider binaries: neither is the deployment's definition."""
    copy = tmp_path / "terraform"
    shutil.copytree(TERRAFORM, copy)
    original = _sealed_iac(tmp_path, copy)
    (copy / ".terraform" / "providers").mkdir(parents=True)
    (copy / ".terraform" / "providers" / "helm").write_bytes(b"\x7fELF provider binary")
    (copy / "terraform.tfstate").write_text('{"secret": "s3cr3t"}')
    (copy / "terraform.tfstate.backup").write_text('{"secret": "old"}')
    (copy / "next.tfplan").write_bytes(b"plan")
    assert _sealed_iac(tmp_path, copy) == original
    lock = 'provider "registry.terraform.io/hashicorp/helm" {\n  version = "3.0.2"\n}\n'
    (copy / ".terraform.lock.hcl").write_text(lock)
    assert _sealed_iac(tmp_path, copy) != original


# -- cats run --deployment -------------------------------------------------------------------------
def _order_file(folder: Path, name: str, inputs: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(f"""
        from cats.order import Function, Order

        def shout(data):
            return data.upper()

        order = Order(function=Function.of(shout), inputs=["{inputs}"], name="{name}")
    """))
    return path


def test_cli_run_with_bad_deployment_outputs(cli, cats_home: Path, tmp_path: Path) -> None:
    order_file = _order_file(tmp_path, "fx_iac_cli", str(CID.hash(b"x", 0x55)))
    cli("run", order_file, "--deployment", tmp_path / "nowhere.json").error_line("nowhere.json", "no such file")
    bad = tmp_path / "plain.json"
    bad.write_text("ray_address = ray://x\n")
    cli("run", order_file, "--deployment", bad).error_line("plain.json", "not JSON")
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps(_outputs(ipfs_api=None)))
    cli("run", order_file, "--deployment", partial).error_line("partial.json", "no output 'ipfs_api'")


@pytest.mark.slow
def test_cli_run_on_a_deployment(ray_session: str, cli, cats_home: Path, tmp_path: Path,
                                 ipfs_api: str) -> None:
    """The outputs of a deployment point `cats run` at its Ray and its IPFS node: here this session's
    Ray and a real daemon stand in for the deployed ones (and no RAY_ADDRESS or CATS_IPFS_API is set)."""
    daemon = IPFSStore(ipfs_api)
    folder = tmp_path / "inputs"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"alpha\n")
    with Importer(daemon, cid_version=1) as importer:
        *_, top = importer.add_path(folder)
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(_outputs(ray_address=ray_session, ipfs_api=ipfs_api)))
    order_file = _order_file(tmp_path, "fx_iac_deployed", str(top.cid))

    res = cli("run", order_file, "--deployment", outputs, "--json", cwd=tmp_path)

    assert res.code == 0, res.err
    summary = json.loads(res.out.strip().splitlines()[-1])
    bom = load_bom(daemon, CID.parse(summary["bom"]))  # the BOM is in the deployment's store
    assert daemon.get(CID.parse(summary["output"]))
    assert dagcbor.decode(daemon.get(bom.order))["plant"]["address"] == ray_session
    assert not (cats_home / "blocks").exists() or not any((cats_home / "blocks").iterdir())  # nothing local
    daemon.close()
