"""A Function's entry checked against its code before anything runs: `module:qualname` must name
something the module defines.

The module is parsed, never imported: importing user code runs it. A name bound in a way a parse
cannot follow (a star import, a module `__getattr__`, `globals()`, `exec`, `sys.modules`, an
attribute a class may inherit or a decorator add) is left to the worker to find, as is code the
store lacks and a module the code does not hold but this environment does.
"""

from __future__ import annotations

import ast
import difflib
import importlib.machinery
import importlib.util
from collections.abc import Callable, Iterator
from pathlib import PurePosixPath

from cats.cas import reader
from cats.cas.store import BlockStore
from cats.errors import BlockNotFound, CatsError, PathNotFound
from cats.order.function import Function

# Calls that can bind module names a parse does not see (also reached as builtins.exec and the like).
_DYNAMIC_CALLS = ("globals", "vars", "locals", "exec", "setattr", "__import__")
_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


class _Unknown(Exception):
    """The code may define the name in a way a parse cannot see."""


def check_entry(fn: Function, store: BlockStore) -> None:
    """Raise CatsError, naming the file and the entry, if the Function's module does not define its
    qualname (with the closest name it does define, or what it defines)."""
    read = _reader(fn, store)
    if read is None:
        return
    folder = fn.module.replace(".", "/")
    try:
        found = next(((rel, text) for rel in (f"{folder}.py", f"{folder}/__init__.py")
                      if (text := read(rel)) is not None), None)
    except _Unknown:
        return
    source = fn.source if fn.code is None else None
    if found is None:
        if _installed(fn.module.partition(".")[0]) or _compiled(read, folder):
            return  # not in the code, or not as source: the worker imports it
        hint = f"its module is {source.stem!r}" if source is not None and source.is_file() else \
            f"it has neither {folder}.py nor {folder}/__init__.py"
        raise CatsError(f"{source if source is not None else f'code {fn.code}'} holds no module {fn.module!r} "
                        f"(entry {fn.entry!r}): {hint}")
    rel, text = found
    where = str(source.parent / rel) if source is not None else f"{fn.code}/{rel}"
    try:
        tree = ast.parse(text, filename=where)
    except SyntaxError as e:
        raise CatsError(f"{where} does not parse: {e.msg} (line {e.lineno}); entry {fn.entry!r}") from None
    try:
        _find(tree, fn.qualname.split("."), where, fn.entry)
    except _Unknown:
        return


def _compiled(read: Callable[[str], bytes | None], folder: str) -> bool:
    """Whether the code holds the module in a form a parse cannot read (bytecode, an extension)."""
    suffixes = [s for s in importlib.machinery.all_suffixes() if s != ".py"]
    return any(read(rel) is not None
               for suffix in suffixes for rel in (f"{folder}{suffix}", f"{folder}/__init__{suffix}"))


def _installed(name: str) -> bool:
    """Whether this environment has a top-level module of that name (finding it imports nothing)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # not a module name
        return False


def _reader(fn: Function, store: BlockStore) -> Callable[[str], bytes | None] | None:
    """A reader of the code folder's files by relative path (None for a file it does not hold), or None
    when the code is not here to read: a local source that is missing (sealing says so), or a code
    CID this store lacks (the worker fetches it)."""
    if fn.code is None:
        source = fn.source
        assert source is not None
        if not source.exists():
            return None

        def local(rel: str) -> bytes | None:  # sealing wraps the source in a folder, under its name
            parts = PurePosixPath(rel).parts
            path = source.parent.joinpath(*parts)
            return path.read_bytes() if parts[0] == source.name and path.is_file() else None

        return local
    code = fn.code
    try:
        if not reader.is_folder(store, code):
            return None
    except CatsError:  # not in this store (or not UnixFS)
        return None

    def stored(rel: str) -> bytes | None:
        try:
            return b"".join(reader.read(store, reader.resolve(store, code, rel)))
        except PathNotFound:
            return None
        except BlockNotFound:
            raise _Unknown from None
        except CatsError:  # a folder of that name, not a file
            return None

    return stored


def _find(tree: ast.Module, qualname: list[str], where: str, entry: str) -> None:
    """Walk `qualname` down the module's (then a class's) bindings; CatsError at the first part missing."""
    if any(_dynamic(node) for node in ast.walk(tree)):
        raise _Unknown
    names = _bindings(tree.body)
    names.update({name: tree for node in ast.walk(tree) if isinstance(node, ast.Global) for name in node.names})
    names.update({node.target.id: tree for node in _module_level(tree) if isinstance(node, ast.NamedExpr)})
    if "__getattr__" in names:
        raise _Unknown
    for k, part in enumerate(qualname):
        if part not in names:
            prefix = "".join(f"{p}." for p in qualname[:k])
            raise CatsError(f"{where} has no {'.'.join(qualname)!r} (entry {entry!r}); "
                            + _hint(part, names, prefix))
        node = names[part]
        if k == len(qualname) - 1:
            return
        if not isinstance(node, ast.ClassDef):
            raise _Unknown  # an object a parse cannot follow
        names = _bindings(node.body)
        if (node.bases or node.keywords or node.decorator_list) and qualname[k + 1] not in names:
            raise _Unknown  # inherited, or added by a decorator or metaclass


def _dynamic(node: ast.AST) -> bool:
    """A call or a name through which code may bind module names out of a parse's sight: `exec`,
    `setattr`, `globals()` and their kind, and any `modules` (as in `sys.modules[__name__]`)."""
    if isinstance(node, ast.Call):
        func = node.func
        return (func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute)
                else None) in _DYNAMIC_CALLS
    if isinstance(node, ast.Attribute):
        return node.attr == "modules"
    if isinstance(node, ast.ImportFrom):
        return any(alias.name == "modules" for alias in node.names)
    return False


def _module_level(tree: ast.Module) -> Iterator[ast.AST]:
    """Every node run in the module's own scope: not inside a function, lambda or class body."""
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            todo.extend(ast.iter_child_nodes(node))


def _bindings(body: list[ast.stmt]) -> dict[str, ast.AST]:
    """The names a module or class body binds at its own level (through if/try/with/for/match too)."""
    names: dict[str, ast.AST] = {}
    for stmt in body:
        if isinstance(stmt, _DEFS):
            names[stmt.name] = stmt
        elif isinstance(stmt, ast.Assign | ast.AnnAssign | ast.AugAssign):
            for target in stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]:
                names.update((n.id, stmt) for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(stmt, ast.Import | ast.ImportFrom):
            for alias in stmt.names:
                if alias.name == "*":
                    raise _Unknown
                names[alias.asname or alias.name.partition(".")[0]] = stmt
        else:
            if isinstance(stmt, ast.For | ast.AsyncFor | ast.With | ast.AsyncWith):
                targets = [stmt.target] if isinstance(stmt, ast.For | ast.AsyncFor) else \
                    [i.optional_vars for i in stmt.items if i.optional_vars is not None]
                names.update((n.id, stmt) for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
            for nested in _blocks(stmt):
                names.update(_bindings(nested))
    return names


def _blocks(stmt: ast.stmt) -> list[list[ast.stmt]]:
    """The statement lists run at the same level as `stmt` (its branches), not in a new scope."""
    blocks = [getattr(stmt, field) for field in ("body", "orelse", "finalbody") if hasattr(stmt, field)]
    blocks += [handler.body for handler in getattr(stmt, "handlers", ())]
    blocks += [case.body for case in getattr(stmt, "cases", ())]
    return blocks


def _hint(part: str, names: dict[str, ast.AST], prefix: str) -> str:
    close = difflib.get_close_matches(part, [n for n in names if not n.startswith("__")], n=1)
    if close:
        return f"did you mean {prefix + close[0]!r}?"
    functions = sorted(prefix + n for n, node in names.items() if isinstance(node, _DEFS))
    if not functions:
        return "it defines no functions"
    shown = ", ".join(functions[:20]) + (f" and {len(functions) - 20} more" if len(functions) > 20 else "")
    return f"it defines {shown}"
