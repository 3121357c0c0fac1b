"""The declared dependencies match the imports: every package the installed code imports is declared
(in the base install, or in the extra whose absence the code names), nothing is declared that nothing
uses, and everything the tests import is in the test extra. The clean install itself (a new venv,
non-editable, then the README's main job) is proven by scripts/check-install, which the test command
runs."""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
import tomllib
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

# Modules that may import packages of an extra, and the extra (their import errors name it).
IN_EXTRA = {"cats/demo/thumbnails.py": "demo"}
# Imported only to tell whether a dependency's own extra is installed; the error names what to install.
OPTIONAL = {"grpc": ("cats/plant/__init__.py", "pip install 'ray[client]'")}
# Declared, never imported by CATs itself: used by what CATs drives.
USED_INDIRECTLY = {"virtualenv": "Ray's pip runtime_env creates a virtualenv for an Order's requirements"}


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group()).lower()


def _imports(paths: list[Path]) -> dict[str, set[str]]:
    """Top-level third-party module -> the files importing it (absolute imports, anywhere in the file)."""
    found: dict[str, set[str]] = defaultdict(set)
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names:
                    found[top].add(str(path.relative_to(ROOT)))
    return found


@functools.cache
def _packages() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _distributions(module: str) -> set[str]:
    return {_name(d) for d in _packages().get(module, [])}


def _declared(*extras: str) -> set[str]:
    names = {_name(r) for r in PROJECT["dependencies"]}
    for extra in extras:
        names |= {_name(r) for r in PROJECT["optional-dependencies"][extra]}
    return names


def test_every_import_of_the_package_is_declared() -> None:
    missing = []
    for module, files in sorted(_imports(sorted((ROOT / "cats").rglob("*.py"))).items()):
        if module == "cats":
            continue
        if module in OPTIONAL:
            where, remedy = OPTIONAL[module]
            assert files == {where} and remedy in (ROOT / where).read_text(), (module, files)
            continue
        extras = {IN_EXTRA[f] for f in files if f in IN_EXTRA}
        base_files = files - IN_EXTRA.keys()
        dists = _distributions(module)
        assert dists, f"{module} (imported by {sorted(files)}) is not installed here"
        if base_files and not dists & _declared():
            missing.append(f"{module} ({'/'.join(sorted(dists))}) imported by {sorted(base_files)}")
        elif not base_files and not dists & _declared(*extras):
            missing.append(f"{module} imported by {sorted(files)} is in no extra {sorted(extras)}")
    assert not missing, "imported but not declared: " + "; ".join(missing)


def test_nothing_is_declared_that_nothing_imports() -> None:
    imported: set[str] = set()
    for module in _imports(sorted((ROOT / "cats").rglob("*.py"))):
        imported |= _distributions(module)
    unused = _declared() - imported - {_name(n) for n in USED_INDIRECTLY}
    assert not unused, f"declared but never imported by cats/: {sorted(unused)}"


def test_the_test_extra_covers_what_the_tests_import() -> None:
    files = sorted((ROOT / "tests").glob("*.py")) + sorted((ROOT / "bench").glob("*.py"))
    local = {p.stem for p in files}
    missing = [f"{module} imported by {sorted(where)}" for module, where in sorted(_imports(files).items())
               if module not in local and module != "cats" and not module.startswith("bench_")  # benches write those
               and not _distributions(module) & _declared("test")]
    assert not missing, "imported by tests or benchmarks, not in the test extra: " + "; ".join(missing)


def test_the_build_backend_reads_the_license_expression() -> None:
    """`license = "Apache-2.0"` is an SPDX expression (PEP 639), which setuptools reads from 77 on."""
    text = (ROOT / "pyproject.toml").read_text()
    assert PROJECT["license"] == "Apache-2.0"
    assert re.search(r'requires = \["setuptools>=(\d+)', text) and \
        int(re.search(r'requires = \["setuptools>=(\d+)', text).group(1)) >= 77
