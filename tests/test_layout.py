"""The package's shape: one-way imports, backend names in their two rooms, a lazy top level."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import gemma_keras

ROOT = Path(gemma_keras.__file__).parent
PACKAGE = "gemma_keras"
BACKEND_NAMES = {"jax", "tensorflow", "torch"}
# Where backend names may appear: the backend layer, the runner factory, the torch runner and its
# packed products.
BACKEND_ROOMS = (
    "backend/",
    "generation/runner.py",
    "generation/torch_runner.py",
    "generation/packed_torch.py",
)


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(rel.parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _imports(path: Path, module: str) -> list[tuple[str, list[str], int]]:
    """Every import in the file, at any depth: (module imported from, names, line)."""
    found = []
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((alias.name, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.append((base, [a.name for a in node.names], node.lineno))
    return found


def _graph() -> dict[str, set[str]]:
    """Module -> modules it imports. An import of a package's facade counts as an import of
    the module that defines each imported name, so facades cannot hide a cycle."""
    modules = _modules()
    facades = {name for name, path in modules.items() if path.name == "__init__.py"}

    def defining(package: str, name: str) -> str | None:
        if f"{package}.{name}" in modules:
            return f"{package}.{name}"
        for target, names, _ in _imports(modules[package], package):
            if name in names and target.startswith(PACKAGE):
                return defining(target, name) if target in facades else target
        return None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        if name in facades:
            continue
        edges = graph.setdefault(name, set())
        for target, names, _ in _imports(path, name):
            if not target.startswith(PACKAGE):
                continue
            if target in facades:
                for n in names:
                    resolved = defining(target, n)
                    if resolved and resolved != name:
                        edges.add(resolved)
            elif target in modules and target != name:
                edges.add(target)
    return graph


def test_no_import_cycles_counting_imports_inside_functions():
    graph = _graph()
    cycles, index, low, stack, on = [], {}, {}, [], set()

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in list(graph):
        if v not in index:
            visit(v)
    assert cycles == []
    assert len(graph) > 30  # the walk really saw the package


def test_backend_names_live_only_in_the_backend_layer_and_the_runner_factory():
    offenders = []
    for path in _modules().values():
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(BACKEND_ROOMS[0]) or rel in BACKEND_ROOMS[1:]:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in BACKEND_NAMES:
                offenders.append(f"{rel}:{node.lineno}: the string {node.value!r}")
            if isinstance(node, ast.Import):
                hits = [a.name for a in node.names if a.name.split(".")[0] in BACKEND_NAMES]
                offenders += [f"{rel}:{node.lineno}: import {h}" for h in hits]
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in BACKEND_NAMES:
                offenders.append(f"{rel}:{node.lineno}: from {node.module} import ...")
            if isinstance(node, ast.Attribute) and node.attr == "backend":
                # keras.backend.backend(): asking Keras for the name is the backend layer's job
                inner = node.value
                if isinstance(inner, ast.Attribute) and inner.attr == "backend":
                    offenders.append(f"{rel}:{node.lineno}: keras.backend.backend()")
    # `testing.py` writes test data only; it names no backend either.
    assert offenders == []


def _is_class_name(node) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "__name__"


def test_only_architecture_records_branch_on_class_names():
    """No `type(x).__name__ == "..."` or `.startswith(...)` on a class name outside the records."""
    offenders = []
    for path in _modules().values():
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("architectures/"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and any(map(_is_class_name, [node.left, *node.comparators])):
                offenders.append(f"{rel}:{node.lineno}")
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("startswith", "endswith")
                and _is_class_name(node.func.value)
            ):
                offenders.append(f"{rel}:{node.lineno}")
    assert offenders == []


def test_importing_the_package_and_its_rooms_does_not_import_keras():
    rooms = ["gemma_keras", "gemma_keras.architectures", "gemma_keras.formats", "gemma_keras.training.config"]
    code = "import sys\n" + "".join(f"import {r}\n" for r in rooms) + "print('keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
