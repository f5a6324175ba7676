"""The architecture rules, read from the source: which module may import which.

Every ``.py`` file of the three installed trees is parsed (never imported):
``coordkit/`` is ``coordkit``, ``backends/`` is ``coordkit.backends`` and
``recipes/`` is ``coordkit.recipes``, as ``[tool.setuptools] package-dir``
maps them. Every import counts, wherever it stands: at the top, inside a
function, or under ``TYPE_CHECKING`` (a cycle of type-only imports is still a
cycle in the design). :func:`violations` returns one line per broken rule.

The rules (docs/architecture.md explains each):

1. recipes never import a backend;
2. the core imports no backend (it finds them through plugins), and no
   recipe except in its application modules (``cli``, ``demo``);
3. a backend imports the core, its own package and its own client library;
   ``memory`` and ``raft`` also build on ``store``; only a backend's
   ``native`` module (a native implementation of a recipe) imports recipes;
4. ``backends/raft/core`` and ``backends/store`` are pure: no clock, sockets,
   threads, processes, files, randomness or logging (all injected), and no
   call of ``open``; the Raft core imports nothing of coordkit outside itself;
5. nothing imports the tests;
6. no import cycle anywhere.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

#: source folder -> the package name it is installed as.
TREES = {"coordkit": "coordkit", "backends": "coordkit.backends", "recipes": "coordkit.recipes"}

#: modules that do I/O, keep time, draw randomness or run concurrently.
IMPURE = frozenset(
    {
        "_thread",
        "aiofiles",
        "anyio",
        "asyncio",
        "concurrent",
        "fcntl",
        "io",
        "logging",
        "mmap",
        "multiprocessing",
        "os",
        "pathlib",
        "random",
        "secrets",
        "select",
        "selectors",
        "shutil",
        "signal",
        "socket",
        "ssl",
        "subprocess",
        "tempfile",
        "threading",
        "time",
        "trio",
        "uuid",
    }
)

PURE_PACKAGES = ("coordkit.backends.raft.core", "coordkit.backends.store")
#: the backends that build on the store, which is not a backend of its own.
STORE_USERS = ("coordkit.backends.memory", "coordkit.backends.raft")
CORE_APPLICATIONS = ("coordkit.cli", "coordkit.demo")


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    #: (imported module, line) for every import statement.
    imports: list[tuple[str, int]] = field(default_factory=list)
    #: lines where ``open(...)`` is called.
    open_calls: list[int] = field(default_factory=list)


def module_name(root: Path, path: Path) -> tuple[str, bool] | None:
    rel = path.relative_to(root)
    base = TREES.get(rel.parts[0])
    if base is None:
        return None
    parts = list(rel.with_suffix("").parts[1:])
    is_package = parts[-1:] == ["__init__"] if parts else False
    if is_package:
        parts = parts[:-1]
    return ".".join([base, *parts]), is_package


def load(root: Path) -> dict[str, Module]:
    """Every module of the installed trees under ``root``, with its imports."""
    modules: dict[str, Module] = {}
    for tree in TREES:
        for path in sorted((root / tree).rglob("*.py")):
            if "build" in path.relative_to(root).parts:
                continue
            named = module_name(root, path)
            if named is None:
                continue
            name, is_package = named
            modules[name] = Module(name, path, is_package)
    for module in modules.values():
        _read(module, modules)
    return modules


def _read(module: Module, modules: dict[str, Module]) -> None:
    tree = ast.parse(module.path.read_text(), str(module.path))
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                module.imports.append((alias.name, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                # ``from pkg import mod`` imports the module pkg.mod when there is one.
                candidate = f"{base}.{alias.name}"
                module.imports.append((candidate if candidate in modules else base, node.lineno))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "open"
        ):
            module.open_calls.append(node.lineno)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant | ast.JoinedStr)
        ):
            # importlib.import_module("coordkit.x") counts as an import of coordkit.x
            arg = node.args[0]
            text = (
                arg.value
                if isinstance(arg, ast.Constant)
                else "".join(v.value for v in arg.values if isinstance(v, ast.Constant))
            )
            if isinstance(text, str):
                module.imports.append((text.rstrip("."), node.lineno))


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def backend_of(name: str) -> str | None:
    """``coordkit.backends.etcd.txn`` -> ``coordkit.backends.etcd``."""
    if not within(name, "coordkit.backends") or name == "coordkit.backends":
        return None
    return ".".join(name.split(".")[:3])


def _test_names(root: Path) -> set[str]:
    """Names under which test code can be imported: ``tests.*``, the support
    modules (on pytest's pythonpath) and the Raft simulator package."""
    names = {"tests"}
    support = root / "tests" / "support"
    names.update(p.stem for p in support.glob("*.py"))
    names.add("sim")
    return names


def violations(root: Path) -> list[str]:
    modules = load(root)
    test_names = _test_names(root)
    found: list[str] = []

    def report(module: Module, line: int, target: str, rule: str) -> None:
        where = module.path.relative_to(root)
        found.append(f"{where}:{line}: {module.name} imports {target}: {rule}")

    for module in modules.values():
        name = module.name
        own_backend = backend_of(name)
        for target, line in module.imports:
            top = target.split(".")[0]
            if top in test_names or within(target, "tests"):
                report(module, line, target, "nothing imports the tests")
            if within(name, "coordkit.recipes") and within(target, "coordkit.backends"):
                report(module, line, target, "recipes never import a backend")
            if not within(name, "coordkit.backends") and not within(name, "coordkit.recipes"):
                if within(target, "coordkit.backends"):
                    report(module, line, target, "the core finds backends through plugins")
                if within(target, "coordkit.recipes") and name not in CORE_APPLICATIONS:
                    report(module, line, target, "the core imports no recipe (cli/demo may)")
            if own_backend is not None:
                other = backend_of(target)
                store_ok = other == "coordkit.backends.store" and any(
                    within(name, user) for user in STORE_USERS
                )
                if other is not None and other != own_backend and not store_ok:
                    report(module, line, target, "a backend imports no other backend")
                if within(target, "coordkit.recipes") and name.rpartition(".")[2] != "native":
                    report(module, line, target, "only a backend's native module imports recipes")
            for pure in PURE_PACKAGES:
                if not within(name, pure):
                    continue
                if top in IMPURE and not _type_only(module, line):
                    report(module, line, target, f"{pure} is pure (no I/O, clock or randomness)")
                if (
                    pure.endswith("raft.core")
                    and within(target, "coordkit")
                    and not within(target, pure)
                ):
                    report(module, line, target, "the Raft core imports nothing of coordkit")
        for pure in PURE_PACKAGES:
            if within(name, pure):
                for line in module.open_calls:
                    where = module.path.relative_to(root)
                    found.append(f"{where}:{line}: {name} calls open(): {pure} does no file I/O")
    found.extend(f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(modules))
    return sorted(found)


def _type_only(module: Module, line: int) -> bool:
    """Whether the import at ``line`` sits under ``if TYPE_CHECKING:``."""
    tree = ast.parse(module.path.read_text())
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.If)
            and isinstance(node.test, ast.Name)
            and node.test.id == "TYPE_CHECKING"
        ):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import | ast.ImportFrom) and inner.lineno == line:
                    return True
    return False


def cycles(modules: dict[str, Module]) -> Iterator[list[str]]:
    """One representative cycle per strongly connected component of the import graph."""
    graph = {
        name: sorted({t for t, _ in m.imports if t in modules and t != name})
        for name, m in modules.items()
    }
    for component in _components(graph):
        if len(component) > 1:
            yield _cycle_in(component, graph)


def _components(graph: dict[str, list[str]]) -> Iterable[list[str]]:
    """Tarjan's strongly connected components, iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                out.append(sorted(component))
    return out


def _cycle_in(component: list[str], graph: dict[str, list[str]]) -> list[str]:
    members = set(component)
    start = component[0]
    path = [start]
    seen = {start}
    node = start
    while True:
        nxt = next(t for t in graph[node] if t in members)
        if nxt in seen:
            return [*path[path.index(nxt) :], nxt]
        path.append(nxt)
        seen.add(nxt)
        node = nxt
