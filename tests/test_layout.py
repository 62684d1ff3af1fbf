"""The shape of the code stays as docs/architecture.md draws it: layering, no import cycles, no
protocol library reached from agent/, plugins that plug in through their registry list only, and
short functions.

Every module of agent/ and drivers/ is parsed with ``ast`` (not imported), so a rule broken by a
lazy import inside a function is found too. Module-level imports are the ones that run when a module
is imported; imports inside functions run later (they are how a protocol library, httpx or the
schema are loaded only when needed) and must respect the layering, but cannot form an import cycle.
Imports under ``if TYPE_CHECKING:`` never run: they count for layering, not for cycles.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from agent.config.schema import Config
from agent.sinks.registry import SINKS
from drivers.registry import PROTOCOLS

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL_LIBRARIES = ("pymodbus", "asyncua")
MAX_FUNCTION_LINES = 60  # without the docstring


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # a module of agent/ or drivers/, or a third-party module's dotted name
    lineno: int
    when: str  # "module" (runs on import), "function" (runs when called) or "typing" (never runs)

    def __str__(self) -> str:
        return f"{self.importer}:{self.lineno} imports {self.target} ({self.when} level)"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, tuple[Path, ast.Module]]:
    out = {}
    for top in ("agent", "drivers"):
        for path in sorted((ROOT / top).rglob("*.py")):
            out[_module_name(path)] = (path, ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return out


SOURCES = _sources()
MODULES = frozenset(SOURCES)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(node: ast.Import | ast.ImportFrom, importer: str) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:  # relative: from the importer's package (a package's __init__ is its own package)
        package = importer.split(".")
        if SOURCES[importer][0].name != "__init__.py":
            package = package[:-1]
        anchor = package[: len(package) - node.level + 1]
        base = ".".join([*anchor, base] if base else anchor)
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        yield sub if sub in MODULES else base


def _imports_of(module: str, tree: ast.Module) -> Iterator[Import]:
    def walk(node: ast.AST, when: str) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                for target in _targets(child, module):
                    yield Import(module, target, child.lineno, when)
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                yield from walk(child, "typing" if when == "typing" else "function")
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), "typing")
                for stmt in child.orelse:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), when)
            else:
                yield from walk(child, when)

    yield from walk(tree, "module")


IMPORTS = [imp for module, (_, tree) in SOURCES.items() for imp in _imports_of(module, tree)]


def _first_party(name: str) -> bool:
    return name.split(".")[0] in ("agent", "drivers")


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _runtime_graph() -> dict[str, set[str]]:
    """Module-level imports between first-party modules, and what importing a module runs first:
    the ``__init__`` of each package above it (unless the importer is inside that package already)."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in IMPORTS:
        if imp.when != "module" or not _first_party(imp.target):
            continue
        graph[imp.importer].add(imp.target)
        for package in _ancestors(imp.target):
            if package in MODULES and package != imp.importer and package not in _ancestors(imp.importer):
                graph[imp.importer].add(package)
    return graph


# --------------------------------------------------------------------------------------------
# Layering


def _in(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


# Layer (a package prefix) -> the first-party modules it may import (besides itself).
MAY_IMPORT: dict[str, tuple[str, ...]] = {
    "agent.rules": ("agent.config", "agent.model"),
    "agent.sinks": ("agent.config", "agent.model", "agent.errors", "agent.ops.logs"),
    "drivers": ("agent.model", "agent.errors", "agent.config.base"),
    "agent.config": ("agent.errors", "agent.model", "agent.sinks", "drivers"),  # the schema reads the plugin lists
    "agent.config.base": (),
    "agent.model": (),
    "agent.errors": (),
}
# Layer -> what it must not import (besides what MAY_IMPORT leaves out).
MUST_NOT_IMPORT: dict[str, tuple[str, ...]] = {
    "agent.ops": ("agent.pipeline", "drivers"),
}


def _layering_problems() -> list[str]:
    problems = []
    for imp in IMPORTS:
        importer, target = imp.importer, imp.target
        if not _first_party(target):
            continue
        for layer, allowed in MAY_IMPORT.items():
            if _in(importer, layer) and not _in(target, layer, *allowed):
                problems.append(f"{imp}: {layer} may import only {', '.join(allowed) or 'nothing of agent/'}")
        for layer, forbidden in MUST_NOT_IMPORT.items():
            if _in(importer, layer) and _in(target, *forbidden):
                problems.append(f"{imp}: {layer} must not import {', '.join(forbidden)}")
        if _in(target, "agent.cli") and not _in(importer, "agent.cli", "agent.__main__"):
            problems.append(f"{imp}: nothing imports the command line (agent.cli) but itself")
        if _in(target, "agent.demo") and not _in(importer, "agent.demo", "agent.cli"):
            problems.append(f"{imp}: only the command line imports the demo (agent.demo)")
    return problems


def test_layering() -> None:
    """ops/ renders what the pipeline hands it; rules/ are pure (config and model); sinks/ know the
    config, the model, the errors and logging; drivers/ know only the model, the errors and the
    config's shared vocabulary; nothing imports cli/, and only cli/ imports demo/."""
    assert _layering_problems() == []


def test_the_layering_check_sees_a_violation() -> None:
    """The checker itself: a made-up import that breaks each kind of rule is reported."""
    made_up = [
        Import("agent.ops.status", "agent.pipeline.supervisor", 1, "function"),
        Import("agent.rules.kinds", "agent.errors", 1, "module"),
        Import("drivers.modbus.driver", "agent.config.schema", 1, "typing"),
        Import("agent.pipeline.runner", "agent.cli.check", 1, "module"),
    ]
    IMPORTS.extend(made_up)
    try:
        problems = _layering_problems()
    finally:
        del IMPORTS[-len(made_up) :]
    assert len(problems) == len(made_up)
    for imp, problem in zip(made_up, problems, strict=True):
        assert problem.startswith(str(imp))


# --------------------------------------------------------------------------------------------
# Import cycles and protocol libraries


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), or a module importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles() -> None:
    assert _cycles(_runtime_graph()) == []


def test_the_cycle_check_sees_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert _cycles(graph) == [["a", "b", "c"], ["e"]]
    # A driver's model importing the config package, whose __init__ imports the schema, is one:
    graph = _runtime_graph()
    graph["agent.config"] = graph["agent.config"] | {"agent.config.schema"}
    assert any("drivers.modbus.config" in c and "agent.config" in c for c in _cycles(graph))


def _reached(start: str, graph: dict[str, set[str]]) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_agent_never_imports_a_protocol_library() -> None:
    """No module of agent/ imports pymodbus or asyncua, and none (the demo aside: its simulated
    machine is a pymodbus server) reaches one through module-level imports: a protocol library is
    loaded only when a driver, probe or simulator of that protocol is made."""
    direct = [str(imp) for imp in IMPORTS if _in(imp.importer, "agent") and _in(imp.target, *PROTOCOL_LIBRARIES)]
    assert direct == []
    graph = _runtime_graph()
    reaching = []
    for module in sorted(MODULES):
        if not _in(module, "agent") or _in(module, "agent.demo"):
            continue
        for reached in sorted(_reached(module, graph)):
            hits = [
                imp.target
                for imp in IMPORTS
                if imp.importer == reached and imp.when == "module" and _in(imp.target, *PROTOCOL_LIBRARIES)
            ]
            if hits:
                reaching.append(f"{module} -> {reached} -> {hits[0]}")
    assert reaching == []
    # The walk does see a library where one is imported at module level:
    assert any(_in(imp.target, "asyncua") for imp in IMPORTS if imp.importer == "drivers.opcua.driver")


# --------------------------------------------------------------------------------------------
# Plugins: one registry list each, nothing else central


def _plugin_models() -> dict[str, str]:
    """Each protocol's machine and signal model and each sink's model -> the package or module that owns it."""
    owners: dict[str, str] = {}
    for p in PROTOCOLS:
        home = p.config.__module__.rsplit(".", 1)[0]  # drivers.<protocol>
        owners[p.config.__name__] = home
        for signal in get_args(p.config.model_fields["signals"].annotation):
            owners[signal.__name__] = home
    for s in SINKS:
        owners[s.config.__name__] = s.config.__module__  # agent.sinks.<kind>
    return owners


def _union_members(list_annotation: Any) -> set[Any]:
    """``list[Annotated[A | B, Field(...)]]`` -> {A, B} (a one-member "union" is the model itself)."""
    (annotated,) = get_args(list_annotation)
    union = get_args(annotated)[0]
    return set(get_args(union)) or {union}


def test_the_schema_is_made_of_the_registered_models() -> None:
    for p in PROTOCOLS:
        assert get_args(p.config.model_fields["protocol"].annotation) == (p.name,), p
    for s in SINKS:
        assert get_args(s.config.model_fields["kind"].annotation) == (s.kind,), s
    assert len({p.name for p in PROTOCOLS}) == len(PROTOCOLS) and len({s.kind for s in SINKS}) == len(SINKS)
    assert _union_members(Config.model_fields["machines"].annotation) == {p.config for p in PROTOCOLS}
    assert _union_members(Config.model_fields["sinks"].annotation) == {s.config for s in SINKS}


def test_no_isinstance_on_a_protocol_or_sink_outside_its_own_module() -> None:
    """Adding a protocol or a sink touches its registry list only: central code never branches on
    a protocol's or a sink's model (it asks the plugin)."""
    owners = _plugin_models()
    found = []
    for module, (_, tree) in SOURCES.items():
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance"):
                continue
            if len(node.args) != 2:
                continue
            names = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
            for name in names:
                ident = name.id if isinstance(name, ast.Name) else name.attr if isinstance(name, ast.Attribute) else ""
                owner = owners.get(ident)
                if owner is not None and not _in(module, owner):
                    found.append(f"{module}:{node.lineno} isinstance(..., {ident})")
    assert owners and found == []


# --------------------------------------------------------------------------------------------
# Short functions


def _code_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    assert fn.end_lineno is not None
    lines = fn.end_lineno - fn.lineno + 1
    first = fn.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        assert first.end_lineno is not None
        lines -= first.end_lineno - first.lineno + 1
    return lines


def _long_functions(limit: int) -> list[str]:
    out = []
    for module, (_, tree) in SOURCES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and (n := _code_lines(node)) > limit:
                out.append(f"{module}:{node.lineno} {node.name}: {n} lines")
    return out


def test_functions_are_short() -> None:
    """No function of agent/ or drivers/ runs past about 60 lines of code (its docstring aside)."""
    assert _long_functions(MAX_FUNCTION_LINES) == []


def test_the_length_check_sees_a_long_function() -> None:
    assert any(" main: " in f or " read: " in f for f in _long_functions(10))
