"""The package's shape, checked from its source: no import cycle, layers point one way.

Every ``import``/``from ... import`` inside ``opchat_magic`` (top-level or inside a
function, ``TYPE_CHECKING`` blocks excluded: they never run) is an edge between
modules. A cycle, the panel reaching the magics, or a lower layer importing a
higher one fails here, naming the modules.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "opchat_magic"
PACKAGE = "opchat_magic"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool):
    """Modules of the package that ``tree`` imports (resolving relative imports)."""
    base = module.split(".") if is_package else module.split(".")[:-1]
    found = set()

    def visit(node):
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                prefix = base[: len(base) - (node.level - 1)]
                target = ".".join(prefix + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == PACKAGE:
                found.add(target)
                for alias in node.names:  # `from . import faults` imports a module
                    found.add(f"{target}.{alias.name}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def graph():
    """module -> set of package modules it imports (only names that are modules)."""
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    edges = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        targets = _imports(tree, name, path.name == "__init__.py")
        edges[name] = {t for t in targets if t in files and t != name}
    return edges


def _cycles(edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                strong(w)
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
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return out


def test_no_import_cycle():
    edges = graph()
    # A package's __init__ re-exporting its submodules is not a cycle of ideas; count only
    # module-to-module edges between different modules, __init__ re-exports excluded.
    reduced = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in edges.items()}
    assert _cycles(reduced) == []


def _reaches(edges, start, prefix):
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        for t in edges.get(m, ()):
            if t not in seen:
                seen.add(t)
                todo.append(t)
    return sorted(t for t in seen if t == prefix or t.startswith(prefix + "."))


# (importer prefix, forbidden prefix): lower layers never import higher ones.
RULES = [
    ("opchat_magic.panel", "opchat_magic.ipython"),
    ("opchat_magic.sse", "opchat_magic.providers"),
    ("opchat_magic.providers", "opchat_magic.ipython"),
    ("opchat_magic.providers", "opchat_magic.panel"),
    ("opchat_magic.providers", "opchat_magic.render"),
    ("opchat_magic.providers", "opchat_magic.history"),
    ("opchat_magic.render", "opchat_magic.providers.http"),  # the footer may ask the registry for a name
    ("opchat_magic.render", "opchat_magic.history"),
    ("opchat_magic.history", "opchat_magic.render"),
    ("opchat_magic.history", "opchat_magic.providers"),
    ("opchat_magic.history", "opchat_magic.turn"),
    ("opchat_magic.turn", "opchat_magic.ipython"),
    ("opchat_magic.turn", "opchat_magic.panel"),
    ("opchat_magic.turn", "opchat_magic.session"),
    ("opchat_magic.session", "opchat_magic.ipython"),
    ("opchat_magic.session", "opchat_magic.panel"),
]


@pytest.mark.parametrize("importer, forbidden", RULES)
def test_layers_point_one_way(importer, forbidden):
    edges = graph()
    for module in sorted(m for m in edges if m == importer or m.startswith(importer + ".")):
        reached = _reaches(edges, module, forbidden)
        assert not reached, f"{module} reaches {reached}"


def test_store_depends_only_on_the_model():
    edges = graph()
    assert edges["opchat_magic.history.store"] <= {"opchat_magic.history.model", "opchat_magic.errors"}


# Classes over the limit that belong to another helper's issue in flight; each must shrink, then go.
KNOWN_LONG = {
    "opchat_magic.render.blocks.BlockSplitter",  # one state machine; 327 lines
}


def test_no_class_over_300_lines():
    long = []
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 300:
                name = f"{_module_name(path)}.{node.name}"
                if name not in KNOWN_LONG:
                    long.append(f"{name}: {node.end_lineno - node.lineno + 1} lines")
    assert long == []


def collapsed(edges):
    """The graph between the package's parts (subpackages, top-level modules): what DESIGN.md draws."""
    def part(module: str) -> str:
        bits = module.split(".")
        return ".".join(bits[:2]) if len(bits) > 1 else bits[0]

    out = {}
    for module, targets in edges.items():
        for target in targets:
            a, b = part(module), part(target)
            if a != b and not (a == PACKAGE or b == PACKAGE):
                out.setdefault(a, set()).add(b)
    return out


if __name__ == "__main__":  # python tests/unit/test_import_graph.py: print the graph for docs/DESIGN.md
    for source, targets in sorted(collapsed(graph()).items()):
        print(f"{source[len(PACKAGE) + 1:]:14} -> {', '.join(sorted(t[len(PACKAGE) + 1:] for t in targets))}")
