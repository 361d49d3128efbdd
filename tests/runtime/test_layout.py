"""runtime/'s layout: sub-packages by concern, imports pointing one way, no cycles.

The import graph is read statically with :mod:`ast`: every import statement counts, at module
level, under ``if TYPE_CHECKING:`` and inside functions alike, since each is a dependency a
reader has to follow. One edge is declared to point up, and only as a late import:
``App.worker`` starts :func:`runtime.worker.embedded` (the README's layout section says why).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Collection, Iterator
from pathlib import Path

import pytest

import runtime

ROOT = Path(runtime.__file__).parent

#: The components of runtime/, lowest first: each may import its own layer and those below.
LAYERS: tuple[frozenset[str], ...] = tuple(
    frozenset(layer)
    for layer in (
        # vocabulary: protocol/ and the standard library only
        (
            "errors",
            "exceptions",
            "policy",
            "arguments",
            "ratelimit",
            "redis_client",
            "running_loop",
            "probes",
            "tls",
        ),
        ("transports", "results", "batching"),
        ("events", "monitor"),
        ("request",),
        ("task",),
        ("canvas",),
        ("app",),
        ("control",),
        ("worker",),
        ("serve", "load", "groups", "supervisor"),
        ("cli",),
        ("__init__",),  # the package itself: the user API
    )
)
#: The one import that points up, and why: the app starts a worker for embedding.
UPWARD = {("runtime.app", "runtime.worker")}
#: The transports' own imports outside runtime.transports.
TRANSPORT_MAY_IMPORT = {"runtime.errors", "runtime.redis_client", "runtime.running_loop"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _imports(name: str) -> Iterator[tuple[str, ast.stmt, bool]]:
    """``(imported runtime module, statement, executed on import)`` for each import of ``name``:
    not executed on import are those inside a function or under ``if TYPE_CHECKING:``."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    deferred: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or (
            isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
        ):
            deferred.update(id(inner) for inner in ast.walk(node) if inner is not node)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            # ``from pkg import module`` depends on the module; ``from pkg import name`` on pkg.
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            if target in MODULES and target != name:
                yield target, node, id(node) not in deferred


def _graph(skip: Collection[tuple[str, str]] = ()) -> dict[str, set[str]]:
    return {
        name: {target for target, _, _ in _imports(name) if (name, target) not in skip}
        for name in MODULES
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def _component(name: str) -> str:
    """``runtime.transports.amqp.transport`` -> ``transports``; ``runtime`` -> ``__init__``."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(component: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if component in layer)


def test_every_component_has_a_layer() -> None:
    components = {_component(name) for name in MODULES}
    assert components == set().union(*LAYERS)


def test_no_import_cycle() -> None:
    assert _cycles(_graph(skip=UPWARD)) == []


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    # Without the declared exception, the app and the worker would import each other.
    assert ["runtime.app", "runtime.worker"] in [
        [m for m in cycle if m in ("runtime.app", "runtime.worker")] for cycle in _cycles(_graph())
    ]


def test_the_upward_import_is_late() -> None:
    """``runtime.app`` reaches the worker only from inside ``App.worker`` (and for the type of
    what it returns): importing the app never imports the worker."""
    statements = [
        (on_import, node.lineno)
        for target, node, on_import in _imports("runtime.app")
        if target == "runtime.worker"
    ]
    assert statements
    assert not any(on_import for on_import, _ in statements), statements


def test_imports_point_down() -> None:
    upward = [
        f"{name} -> {target}"
        for name in MODULES
        for target, _, _ in _imports(name)
        if (name, target) not in UPWARD and _layer(_component(target)) > _layer(_component(name))
    ]
    assert upward == []


def test_transports_import_no_other_concern_and_not_the_table() -> None:
    offenders = [
        f"{name} -> {target}"
        for name in MODULES
        if name.startswith("runtime.transports.")
        for target, _, _ in _imports(name)
        if target == "runtime.transports.urls"
        or not (target.startswith("runtime.transports") or target in TRANSPORT_MAY_IMPORT)
    ]
    assert offenders == []


def test_runtime_never_imports_the_controller() -> None:
    offenders = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            offenders += [f"{name}: {n}" for n in names if n.split(".")[0] == "controller"]
    assert offenders == []


@pytest.mark.parametrize(
    "package", sorted(name for name, path in MODULES.items() if path.name == "__init__.py")
)
def test_each_package_says_what_it_owns(package: str) -> None:
    docstring = ast.get_docstring(ast.parse(MODULES[package].read_text()))
    assert docstring
    if package != "runtime":
        assert "import" in docstring.lower(), f"{package}: say what it may import"


def test_modules_stay_under_600_lines() -> None:
    repository = ROOT.parent
    long = {
        str(path.relative_to(repository)): lines
        for top in ("protocol", "runtime", "controller", "benchmarks")
        for path in (repository / top).rglob("*.py")
        if (lines := len(path.read_text().splitlines())) >= 600
    }
    assert long == {}


def test_every_module_imports_on_its_own() -> None:
    """In a fresh interpreter, each module imports first, with no other runtime module loaded:
    no module relies on another having been imported before it."""
    code = (
        "import importlib, json, sys\n"
        f"names = {sorted(MODULES)!r}\n"
        "failed = {}\n"
        "for name in names:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] == 'runtime']:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed[name] = repr(exc)\n"
        "print(json.dumps(failed))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    )
    assert json.loads(result.stdout) == {}


def test_public_api_unchanged() -> None:
    """Every name ``from runtime import ...`` offered before the layout change still works."""
    assert runtime.__all__ == [
        "App",
        "AsyncResult",
        "ExcInfo",
        "GroupResult",
        "MaxRetriesExceededError",
        "NotRegistered",
        "Request",
        "Retry",
        "SoftTimeLimitExceeded",
        "Task",
        "TimeLimitExceeded",
        "chain",
        "chord",
        "current_request",
        "group",
    ]
    for name in runtime.__all__:
        assert getattr(runtime, name) is not None, name
